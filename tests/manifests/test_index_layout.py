"""The index's package on its own: what it may import, and what its inputs and values are.

``manifests/`` sits between ``backends/`` and ``cas/`` (docs/INDEX.md): it imports nothing of ``cas``
and of ``backends`` only the domain errors, and it takes blob locations as any object with their
fields, so the engine can hand it its own location type.
"""

from __future__ import annotations

import ast
import datetime as dt
import sys
from collections import namedtuple
from pathlib import Path

import pytest

from manifests.index import Index
from manifests.rows import BlobRow, PackState
from tests.servers.postgres import postgres_admin, postgres_url  # noqa: F401


def STORED() -> bool:
    """These tests use an index alone: every pack they record is taken as on a backend."""
    return True

ROOT = Path(__file__).resolve().parents[2]
THIRD_PARTY = {"sqlalchemy", "alembic"}

# Not the engine's type, not a dataclass: only the attributes the index reads.
ForeignLocation = namedtuple("ForeignLocation", "id kind pack_id offset length raw_length codec")


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_manifests_imports_only_itself_the_domain_errors_and_its_libraries() -> None:
    files = sorted((ROOT / "manifests").rglob("*.py"))
    assert len(files) > 10
    for path in files:
        for name in _imports(path):
            top = name.split(".")[0]
            allowed = (
                top in sys.stdlib_module_names or top in THIRD_PARTY or top == "manifests"
                or name == "backends.errors" or top == "typing_extensions"
            )
            assert allowed, f"{path.relative_to(ROOT)} imports {name}"


def test_pack_states_keep_their_stored_values() -> None:
    assert (PackState.LIVE, PackState.CONDEMNED) == (0, 1)


@pytest.fixture
def index(tmp_path: Path):  # type: ignore[no-untyped-def]
    opened = Index.open(f"sqlite:///{tmp_path / 'index.sqlite'}")
    yield opened
    opened.close()


def test_blob_locations_are_taken_by_their_attributes(index: Index) -> None:
    pack, other = "a" * 64, "b" * 64
    blobs = [ForeignLocation(f"{n:064x}", n % 2, "ignored", 100 * n, 90, 200, 1) for n in range(3)]
    index.add_pack(pack, 300, blobs, stored=STORED)
    assert index.locate([b.id for b in blobs]) == {
        b.id: BlobRow(b.id, b.kind, pack, b.offset, b.length, b.raw_length, b.codec) for b in blobs
    }
    index.add_pack(other, 100, [], stored=STORED)
    assert index.add_blob_rows(other, [ForeignLocation("c" * 64, 0, "ignored", 0, 10, 10, 0)]) == 1
    moved = ForeignLocation(blobs[0].id, 0, other, 50, 80, 200, 1)
    assert index.move_blobs([moved], {blobs[0].id: pack}) == 1
    assert index.locate([blobs[0].id])[blobs[0].id] == BlobRow(*moved)
    assert index.move_blobs([moved], {blobs[0].id: pack}) == 0  # no longer in the pack it was read from


def test_pack_rows_report_states_that_compare_with_pack_state(index: Index) -> None:
    index.add_pack("a" * 64, 10, [], stored=STORED)
    assert index.adopt_orphans({"b" * 64: 20}, epoch=index.next_epoch()) == 1
    states = {row.id[0]: row for row in index.pack_rows()}
    assert states["a"].state == PackState.LIVE and states["a"].condemned_epoch is None
    assert states["b"].state == PackState.CONDEMNED and states["b"].condemned_at is not None
    assert states["b"].created_at.tzinfo == dt.timezone.utc
    assert index.known_blobs([]) == set()


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_lookups_on_one_connection_share_it_and_see_rows_added_meanwhile(
    database: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Inside the block this thread's lookups take one connection from the pool, once; rows
    another connection commits meanwhile are seen; another thread's lookups take their own."""
    import threading

    from sqlalchemy import event

    url = f"sqlite:///{tmp_path / 'index.sqlite'}" if database == "sqlite" else request.getfixturevalue("postgres_url")
    index = Index.open(url)
    first = ForeignLocation("a" * 64, 0, "p" * 64, 0, 10, 10, 0)
    second = ForeignLocation("b" * 64, 0, "q" * 64, 0, 10, 10, 0)
    index.add_pack("p" * 64, 10, [first], stored=STORED)
    writer = Index.open(url)
    checkouts: list[str] = []
    event.listen(index.engine, "checkout", lambda *_: checkouts.append(threading.current_thread().name))
    try:
        with index.lookups_on_one_connection():
            assert set(index.locate([first.id, second.id])) == {first.id}
            writer.add_pack("q" * 64, 10, [second], stored=STORED)
            assert set(index.locate([first.id, second.id])) == {first.id, second.id}
            seen: list[set[str]] = []
            other = threading.Thread(target=lambda: seen.append(set(index.known_blobs([second.id]))), name="other")
            other.start()
            other.join()
            assert seen == [{second.id}]
            with index.lookups_on_one_connection():  # nested: the same connection
                assert index.known_blobs([first.id]) == {first.id}
            assert index.engine.pool.checkedout() == 1
        assert checkouts == [threading.current_thread().name, "other"]
        assert index.engine.pool.checkedout() == 0
        assert set(index.locate([second.id])) == {second.id}
        assert len(checkouts) == 3  # outside the block: a connection per lookup again
    finally:
        writer.close()
        index.close()
