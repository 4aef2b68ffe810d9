"""manifests/connection.py: the bulk inserts of a snapshot (blob rows, which SQLite takes as one
JSON array; tree entries) keep every value exactly, whatever the bytes of a name or target, and
keep the rows that were there, on SQLite and PostgreSQL."""

from __future__ import annotations

import uuid
from collections import namedtuple
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from manifests.index import Index
from manifests.rows import TreeEntryRow
from tests.servers.postgres import postgres_admin, postgres_url  # noqa: F401


def STORED() -> bool:
    """These tests use an index alone: every pack they record is taken as on a backend."""
    return True

Location = namedtuple("Location", "id kind pack_id offset length raw_length codec")

_BYTES = (st.binary(min_size=1, max_size=10) | st.text(min_size=1, max_size=6).map(lambda t: t.encode("utf-8", "surrogatepass"))
          | st.sampled_from([b"\x00", b"a\x00b", b"\xff\xfe", "\U0001f600".encode(), b"\xed\xa0\x80"]))
_HEX = st.binary(min_size=32, max_size=32).map(bytes.hex)
_ROW = st.builds(
    TreeEntryRow, _BYTES, st.sampled_from(["file", "dir", "symlink"]), st.integers(0, 0o7777),
    st.integers(-(2**62), 2**62), st.integers(0, 2**62), digest=st.none() | _HEX, target=st.none() | _BYTES,
    child=st.none() | _HEX)


def _fresh(hex_id: str, nonce: uuid.UUID) -> str:
    """``hex_id`` made unique to one example (Hypothesis replays its values while it shrinks)."""
    return nonce.hex + hex_id[32:]


@pytest.fixture(params=["sqlite", "postgresql"])
def index(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Index]:
    url = f"sqlite:///{tmp_path / 'index.sqlite'}" if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    opened = Index.open(url)
    yield opened
    opened.close()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(trees=st.dictionaries(_HEX, st.lists(_ROW, max_size=8, unique_by=lambda r: r.name), min_size=1, max_size=5))
def test_tree_entries_are_stored_exactly_and_rows_there_are_kept(index: Index, trees: dict[str, list[TreeEntryRow]]) -> None:
    nonce = uuid.uuid4()
    trees = {_fresh(t, nonce): rows for t, rows in trees.items()}  # the index outlives an example
    items = list(trees.items())
    assert index.add_tree_rows(items, [])
    # Again, with other values under the same keys: insert-or-ignore keeps the first.
    changed = [(t, [r._replace(mode=(r.mode + 1) % 0o7777) for r in rows]) for t, rows in items]
    assert index.add_tree_rows(changed, [])
    found = index.tree_entries_of(list(trees))
    assert found == {t: sorted(rows, key=lambda r: r.name) for t, rows in items}


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(blobs=st.dictionaries(_HEX, st.tuples(st.integers(0, 1), st.integers(0, 2**40), st.integers(0, 2**31 - 1),
                                             st.integers(0, 2**31 - 1), st.integers(0, 1)), max_size=30),
       pack=_HEX)
def test_blob_rows_are_stored_exactly_and_rows_there_are_kept(
    index: Index, blobs: dict[str, tuple[int, int, int, int, int]], pack: str,
) -> None:
    nonce = uuid.uuid4()
    blobs = {_fresh(b, nonce): v for b, v in blobs.items()}  # the index outlives an example
    pack = _fresh(pack, nonce)
    index.add_pack(pack, 10, [Location(b, k, pack, o, n, r, c) for b, (k, o, n, r, c) in blobs.items()], stored=STORED)
    index.add_pack(pack[::-1], 10, [Location(b, 0, pack[::-1], 1, 1, 1, 0) for b in blobs], stored=STORED)  # ignored: known
    found = index.locate(list(blobs))
    assert {b: (row.kind, row.pack_id, row.offset, row.length, row.raw_length, row.codec) for b, row in found.items()} == {
        b: (k, pack, o, n, r, c) for b, (k, o, n, r, c) in blobs.items()}
