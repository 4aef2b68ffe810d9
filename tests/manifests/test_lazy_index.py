"""manifests/lazy.py: the index a command opens answers a restore's reads through SQLite's driver
exactly as the full index answers them, hands everything else to the full index, and leaves every
case it does not serve (and every failure) to the full index's own handling."""

from __future__ import annotations

import datetime as dt
import multiprocessing
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
from collections import namedtuple
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backends.errors import CasError, ConfigurationError
from manifests.index import Index
from manifests.lazy import LazyIndex, open_index
from manifests.rows import SnapshotRow, TreeEntryRow
from manifests.statements import LOOKUP_BATCH


def STORED() -> bool:
    """These tests use an index alone: every pack they record is taken as on a backend."""
    return True

ROOT = Path(__file__).resolve().parents[2]
Location = namedtuple("Location", "id kind pack_id offset length raw_length codec")
PACKS = 4
BLOBS = 2 * LOOKUP_BATCH + 3  # lookups of several batches


def _blob(n: int) -> str:
    return f"{n:064x}"


@pytest.fixture
def url(tmp_path: Path) -> str:
    """An index of a repository ``repo-1`` at ``/repo``: blob n in pack n % PACKS, pack 0 condemned,
    snapshots with labels and stats, one marked damaged, one with its trees indexed."""
    url = f"sqlite:///{tmp_path / 'index.sqlite'}"
    index = Index.open(url)
    try:
        assert index.bind("repo-1", "/repo") is True
        for p in range(PACKS):
            index.add_pack(_blob(p), 100, [Location(_blob(n), n % 3, "", n, 10 + n, 20 + n, n % 2)
                                           for n in range(p, BLOBS, PACKS)], stored=STORED)
        for i in range(6):
            row = SnapshotRow(f"exec-{i}", _blob(1000 + i), 10**18 + i, {"team": f"t{i % 2}", "é": "ü"},
                              {"files": i, "bytes": 7 * i}, i, 2 * i, 3 * i, 0o700 + i, 5 + i,
                              trees_indexed=i == 4)
            assert index.commit_snapshot(row, [_blob(i)], damaged_if_missing=True) == set()
        index.mark_damaged("exec-3")
        # Trees 2000.. with rows: names in no particular order (non-ASCII, bytes that are not UTF-8),
        # a symlink's target, a subdirectory's child; 2003 below 2002.
        trees = [(_blob(2000 + t), [
            TreeEntryRow(name, kind, 0o644 + t, 10**18 + t, size, digest, target, child)
            for name, kind, size, digest, target, child in [
                (b"z.txt", "file", 3, _blob(t), None, None), (b"\xc3\xa9t\xc3\xa9", "file", 0, _blob(50 + t), None, None),
                (b"\xff-not-utf8", "symlink", 0, None, b"../\xfe", None), (b"A", "dir", 0, None, None, _blob(2003)),
            ][: t + 1]]) for t in range(4)]
        assert index.add_tree_rows(trees[3:], []) and index.add_tree_rows(trees[:3], [_blob(2003)])
        index.gc_apply(index.next_epoch(), condemn=[_blob(0)], rescue=[], delete=[], grace=dt.timedelta(0))
    finally:
        index.close()
    return url


def test_a_current_sqlite_file_opens_lazily_and_loads_nothing_else(url: str) -> None:
    code = f"""
import sys
from manifests.lazy import LazyIndex, open_index

index = open_index({url!r})
assert isinstance(index, LazyIndex), type(index)
index.bind("repo-1", "/repo")
index.snapshot("exec-1"), index.locate(["{_blob(5)}"]), index.known_blobs(["{_blob(5)}"]), index.unindexed_snapshots(), index.snapshots(labels={{"team": "t1"}}, limit=2)
print(sorted(m for m in sys.modules if m.startswith(("sqlalchemy", "alembic", "manifests.index"))))
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


_TIMES = st.none() | st.integers(10**18 - 2, 10**18 + 7)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(wanted=st.lists(st.integers(0, BLOBS + 50), max_size=BLOBS + 50) | st.just(list(range(BLOBS))),
       execution=st.sampled_from([f"exec-{i}" for i in range(7)] + ["", "exec-1 ", "EXEC-1", "ü"]),
       labels=st.dictionaries(st.sampled_from(["team", "é", "other", "team.x"]),
                              st.sampled_from(["t0", "t1", "t2", "ü", "", "T1"]), max_size=2),
       since=_TIMES, until=_TIMES, limit=st.none() | st.integers(0, 7),
       trees=st.lists(st.integers(1998, 2005), max_size=12),
       digest=st.none() | st.sampled_from([0, 1, 50, 52, 99]).map(_blob),
       suffix=st.sampled_from([b"", b"txt", b".txt", b"t\xc3\xa9", b"\xff-not-utf8", b"A", b"x" * 20]))
def test_the_lazy_reads_equal_the_full_index(url: str, wanted: list[int], execution: str, labels: dict[str, str],
                                             since: int | None, until: int | None, limit: int | None,
                                             trees: list[int], digest: str | None, suffix: bytes) -> None:
    full, lazy = Index.open(url), open_index(url)
    try:
        assert isinstance(lazy, LazyIndex)
        ids = [_blob(n) for n in wanted]
        assert lazy.locate(iter(ids)) == full.locate(ids)
        assert lazy.known_blobs(iter(ids)) == full.known_blobs(ids)
        assert lazy.snapshot(execution) == full.snapshot(execution)
        listing = {"labels": labels, "since_ns": since, "until_ns": until, "limit": limit}
        assert lazy.snapshots(**listing) == full.snapshots(**listing)
        assert lazy.snapshots() == full.snapshots() and len(full.snapshots()) == 6
        tree_ids = [_blob(t) for t in trees]
        assert lazy.indexed_trees(iter(tree_ids)) == full.indexed_trees(tree_ids)
        assert lazy.tree_entries_of(iter(tree_ids)) == full.tree_entries_of(tree_ids)
        for tree_id in tree_ids:
            assert lazy.tree_entries(tree_id) == full.tree_entries(tree_id)
        found = sorted(full.find_entries(tree_ids, digest=digest, name_suffix=suffix))
        assert sorted(lazy.find_entries(iter(tree_ids), digest=digest, name_suffix=suffix)) == found
        assert len(full.tree_entries(_blob(2003))) == 4 and full.indexed_trees(map(_blob, range(1998, 2006))) == {
            _blob(t) for t in range(2000, 2004)}
        for damaged in (False, True):
            assert lazy.unindexed_snapshots(damaged=damaged) == full.unindexed_snapshots(damaged=damaged)
        assert lazy._full is None  # all of it answered without the full index
    finally:
        full.close()
        lazy.close()


def test_every_other_attribute_is_the_full_indexs(url: str) -> None:
    lazy = open_index(url)
    try:
        assert isinstance(lazy, LazyIndex) and lazy._full is None
        stats = lazy.stats()  # not served lazily: the full index opens
        assert isinstance(lazy._full, Index)
        full = Index.open(url)
        try:
            assert stats == full.stats()
            assert [r.execution_id for r in lazy.snapshots(labels={"team": "t1"})] == ["exec-5", "exec-3", "exec-1"]
            assert lazy.full() is lazy._full
        finally:
            full.close()
        with pytest.raises(AttributeError):
            lazy.no_such_method  # noqa: B018
    finally:
        lazy.close()


def test_binding_elsewhere_is_the_full_indexs_answer(url: str) -> None:
    full = Index.open(url)
    try:
        with pytest.raises(ConfigurationError) as full_other:
            full.bind("repo-2", "/repo")
        with pytest.raises(ConfigurationError) as full_moved:
            full.bind("repo-1", "/copy")
    finally:
        full.close()
    lazy = open_index(url)
    try:
        assert lazy.bind("repo-1", "/repo") is False
        assert lazy._full is None
        with pytest.raises(ConfigurationError) as other:
            lazy.bind("repo-2", "/repo")
        with pytest.raises(ConfigurationError) as moved:
            lazy.bind("repo-1", "/copy")
        assert (str(other.value), str(moved.value)) == (str(full_other.value), str(full_moved.value))
        assert lazy.bind("repo-1", "/copy", rebind=True) is False
        assert lazy.bind("repo-1", "/copy") is False
        with pytest.raises(ConfigurationError):
            lazy.bind("repo-1", "/repo")
    finally:
        lazy.close()


def _prepare(case: str, url: str, copy: Path) -> str:
    """A copy of the index at ``url`` (or a URL) made into ``case``."""
    if case == "memory":
        return "sqlite:///:memory:"
    if case == "missing":
        return f"sqlite:///{copy.parent / 'new' / 'index.sqlite'}"
    with sqlite3.connect(url[len("sqlite:///"):]) as source, sqlite3.connect(copy) as target:
        source.backup(target)
    source.close()
    target.close()
    if case in ("newer", "older"):
        with sqlite3.connect(copy) as db:
            db.execute("UPDATE alembic_version SET version_num = ?", ("9999" if case == "newer" else "0004",))
        db.close()
    elif case == "garbage":
        copy.write_bytes(b"not a database, " * 512)
    return f"sqlite:///{copy}" + ("?timeout=5" if case == "options" else "")


@pytest.mark.parametrize("case", ["missing", "newer", "older", "garbage", "options", "memory"])
def test_what_it_does_not_serve_opens_as_before(tmp_path: Path, url: str, case: str) -> None:
    """Each case gets what ``Index.open`` gives it: an index that creates, migrates or refuses."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    url_a, url_b = (_prepare(case, url, tmp_path / side / "index.sqlite") for side in "ab")
    try:
        expected: Index | CasError = Index.open(url_a)
    except CasError as exc:
        expected = exc
    if isinstance(expected, CasError):
        with pytest.raises(type(expected)) as got:
            open_index(url_b)
        assert str(got.value) == str(expected).replace(str(tmp_path / "a"), str(tmp_path / "b"))
        return
    expected.close()
    opened = open_index(url_b)
    try:
        assert type(opened) is Index
        assert (opened.snapshot("exec-1") is None) == (case in ("missing", "memory"))
    finally:
        opened.close()


def test_a_failing_read_is_reported_by_the_full_index(url: str) -> None:
    lazy = open_index(url)
    try:
        assert isinstance(lazy, LazyIndex)
        assert lazy.locate([_blob(1)])  # a connection of this thread is open
        path = url[len("sqlite:///"):]
        with sqlite3.connect(path) as db:
            db.execute("ALTER TABLE blobs RENAME TO blobs_gone")
        db.close()
        with pytest.raises(CasError) as failed:
            lazy.locate([_blob(1)])
        assert not isinstance(failed.value, sqlite3.Error)
        assert "blobs" in str(failed.value)
        assert isinstance(lazy._full, Index)
    finally:
        lazy.close()


def _connection_id(lazy: LazyIndex) -> int:
    with lazy._reading() as conn:
        return id(conn)


def _read_in_child(lazy: LazyIndex, out: multiprocessing.connection.Connection) -> None:
    row = lazy.snapshot("exec-2")
    out.send((row.execution_id if row else None, _connection_id(lazy), lazy._full is None))


def test_a_forked_child_reads_on_a_connection_of_its_own(url: str) -> None:
    lazy = open_index(url)
    try:
        assert isinstance(lazy, LazyIndex)
        assert lazy.snapshot("exec-2") is not None
        parents = _connection_id(lazy)
        ctx = multiprocessing.get_context("fork")
        reader, writer = ctx.Pipe(duplex=False)
        child = ctx.Process(target=_read_in_child, args=(lazy, writer))
        child.start()
        execution_id, childs, lazy_there = reader.recv()
        child.join(30)
        assert child.exitcode == 0
        assert execution_id == "exec-2" and lazy_there
        assert childs != parents
        assert lazy.snapshot("exec-2") is not None and _connection_id(lazy) == parents
        assert os.getpid() == lazy._local.held[0]
    finally:
        lazy.close()


def _dump(path: Path) -> dict[str, list[tuple[object, ...]]]:
    with sqlite3.connect(path) as db:
        return {table: sorted(db.execute(f"SELECT * FROM {table}").fetchall(), key=repr)
                for table in ("snapshots", "packs", "blobs", "tree_entries", "fence", "tombstones")}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(blobs=st.lists(st.integers(0, BLOBS + 2), max_size=2 * LOOKUP_BATCH + 40),
       execution=st.sampled_from(["new", "exec-1", "exec-3"]), same_root=st.booleans(),
       assumed=st.lists(st.integers(1999, 2003), max_size=4), with_trees=st.booleans(),
       rows_to_write=st.booleans(), time_ns=st.integers(0, 2**62), labels=st.sampled_from([{}, {"é": "ü", "k": "v"}]))
def test_the_lazy_commit_leaves_the_file_the_full_index_leaves(
    tmp_path: Path, url: str, blobs: list[int], execution: str, same_root: bool, assumed: list[int],
    with_trees: bool, rows_to_write: bool, time_ns: int, labels: dict[str, str],
) -> None:
    """The same commit through the lazy index and through the full index, each on a copy of one
    file: the same answer (missing blobs, or the error) and the same rows in every table. Blobs
    past BLOBS have no row; pack 0 is condemned (a commit rescues it); exec-1 exists (with
    ``same_root``, the same root) and exec-3 is marked damaged; trees 2000-2003 have rows."""
    source = Path(url[len("sqlite:///"):])
    copies = {}
    for kind in ("lazy", "full"):
        copies[kind] = tmp_path / f"{kind}-{os.urandom(4).hex()}.sqlite"
        shutil.copyfile(source, copies[kind])
    root = _blob(1001) if execution == "exec-1" and same_root else _blob(3000)
    row = SnapshotRow(execution, root, time_ns, labels, {"files": len(blobs)}, 1, 2, 3, 0o755, 7)
    entries = [(_blob(4000), [TreeEntryRow(b"f", "file", 0o644, 1, 1, _blob(1), None, None)])] if rows_to_write else []
    answers = {}
    for kind, path in copies.items():
        index = open_index(f"sqlite:///{path}") if kind == "lazy" else Index.open(f"sqlite:///{path}")
        try:
            answers[kind] = index.commit_snapshot(
                row, iter([_blob(n) for n in blobs]), trees=iter(entries) if with_trees else None,
                assumed_trees=[_blob(t) for t in assumed])
        except CasError as exc:
            answers[kind] = (type(exc), str(exc))
        common = (execution == "new" and all(n < BLOBS for n in blobs) and not (with_trees and rows_to_write))
        if kind == "lazy":
            assert isinstance(index, LazyIndex)
            assert (index._full is None) == common  # the usual case is committed without the full index
        index.close()
    assert answers["lazy"] == answers["full"]
    assert _dump(copies["lazy"]) == _dump(copies["full"])


def test_close_waits_for_a_thread_in_the_middle_of_a_query(url: str) -> None:
    """A connection closed while another thread is inside a query on it can crash the
    interpreter (a read-ahead thread still looking up when its view was closed did, in CI):
    close waits for the query, and the thread's next use of that connection is refused."""
    lazy = open_index(url)
    assert isinstance(lazy, LazyIndex)
    inside, leave, closed = threading.Event(), threading.Event(), threading.Event()
    after: list[BaseException] = []

    def query() -> None:
        with lazy._reading() as conn:
            conn.execute("SELECT count(*) FROM blobs").fetchone()
            inside.set()
            leave.wait(30)
        closed.wait(30)
        try:
            with lazy._reading() as conn:
                conn.execute("SELECT count(*) FROM blobs").fetchone()
        except sqlite3.Error as exc:
            after.append(exc)

    reader = threading.Thread(target=query)
    reader.start()
    assert inside.wait(30)
    closer = threading.Thread(target=lazy.close)
    closer.start()
    closer.join(0.5)
    assert closer.is_alive()  # waiting for the query
    leave.set()
    closer.join(30)
    closed.set()
    reader.join(30)
    assert not closer.is_alive() and not reader.is_alive()
    assert len(after) == 1 and isinstance(after[0], sqlite3.ProgrammingError)
