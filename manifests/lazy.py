"""The index as a command opens it: the reads of a restore straight through SQLite's driver,
SQLAlchemy loaded only when anything else is asked.

Importing SQLAlchemy costs a command about 0.2 s and 23 MiB of memory (``python -c "import
sqlalchemy"`` on this project's 2-core machine), more than all the index's reads of restoring a
26,000-file execution. For a SQLite file at the schema this code knows, :func:`open_index` gives a
:class:`LazyIndex`: it answers ``bind`` (when the index is bound to that repository already, as
after the first command), ``snapshot``, ``locate``, ``known_blobs``, ``unindexed_snapshots``,
``indexed_trees``, ``tree_entries``, ``tree_entries_of`` and ``find_entries`` (what ``ls``,
``diff`` and ``find`` read) with the statements of :mod:`manifests.statements`, the same ones the full index runs, and ``snapshots``
(the listing by labels and time: ``cas log``, every selection) with the SQLite form of the full
index's query (the tests check both give the same rows), on a connection of its own per thread;
it also commits a writer's snapshot in the usual case (:meth:`LazyIndex.commit_snapshot`);
every other attribute is the full :class:`~manifests.index.Index`'s, opened on first use. A driver error on those reads
is left to the full index, which runs the same read and reports what went wrong as it always does.

Anything else (a server database, an in-memory one, a URL with options, a file that does not exist,
a schema to migrate or one this code does not know) opens the full index at once.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import os
import sqlite3
import threading
import urllib.parse
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, cast

from manifests.rows import BlobRow, SnapshotRow, TreeEntryRow
from manifests.statements import (
    BINDING,
    FENCE,
    INDEXED_TREES,
    INSERT_SNAPSHOT,
    KNOWN_BLOBS,
    LOCATE_BLOBS,
    LOOKUP_BATCH,
    PACKS_HOLDING,
    PER_PACK,
    RESCUE_PACKS,
    SCHEMA_HEAD,
    SCHEMA_VERSION,
    TREE_ENTRIES_OF,
    UNINDEXED_SNAPSHOTS,
    find_parameters,
    find_rows,
    find_statement,
    snapshot_by_id,
    snapshot_row,
    sqlite_lookup,
    sqlite_snapshot_values,
    sqlite_snapshots,
    tree_entries,
    tree_entry_rows,
    trees_entry_rows,
)

if TYPE_CHECKING:
    from manifests.index import Index

_BUSY_TIMEOUT_S = 30.0
"""As the full index's connections wait for a lock (``PRAGMA busy_timeout``)."""


def open_index(url: str) -> Index:
    """The index at ``url``: a :class:`LazyIndex` where one can serve, else the full index (which
    creates and migrates what it must, and says what is wrong with a URL or a database)."""
    path = _sqlite_file(url)
    lazy = LazyIndex.open(url, path) if path is not None else None
    if lazy is not None:
        return cast("Index", lazy)  # it stands in for one: every other attribute is the full index's
    from manifests.index import Index

    return Index.open(url)


def _sqlite_file(url: str) -> str | None:
    """The file of a plain ``sqlite:///PATH`` URL (no driver named, no options, no escapes)."""
    if not url.startswith("sqlite:///"):
        return None
    path = url[len("sqlite:///") :]
    if not path or path == ":memory:" or any(c in path for c in "?#%"):
        return None
    return path


class LazyIndex:
    """See the module's notes. Safe to share between threads, as the full index is."""

    def __init__(self, url: str, path: str) -> None:
        self.url = url
        self.sqlite_path = path
        # mode=rw: a file that is not there is never created here (the full index creates it).
        self._uri = "file:" + urllib.parse.quote(os.path.abspath(path)) + "?mode=rw"
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[tuple[int, sqlite3.Connection, threading.Lock]] = []
        self._full: Index | None = None

    @classmethod
    def open(cls, url: str, path: str) -> LazyIndex | None:
        """None when the file cannot be read this way or its schema is not :data:`SCHEMA_HEAD`."""
        index = cls(url, path)
        try:
            with index._reading() as conn:
                version = conn.execute(SCHEMA_VERSION).fetchone()
        except sqlite3.Error:
            version = None
        if version is None or version[0] != SCHEMA_HEAD:
            index.close()
            return None
        return index

    # -- the reads served here ------------------------------------------------------------------

    def bind(self, repo_id: str, location: str, *, rebind: bool = False) -> bool:
        """:meth:`Index.bind`: answered here when the index is bound to ``repo_id`` at ``location``."""
        try:
            with self._reading() as conn:
                found = conn.execute(BINDING).fetchone()
        except sqlite3.Error:
            found = None
        if found is not None and tuple(found) == (repo_id, location):
            return False
        return self.full().bind(repo_id, location, rebind=rebind)

    def snapshot(self, execution_id: str) -> SnapshotRow | None:
        try:
            with self._reading() as conn:
                row = conn.execute(snapshot_by_id("?"), (execution_id,)).fetchone()
        except sqlite3.Error:
            return self.full().snapshot(execution_id)
        return None if row is None else snapshot_row(row)

    def snapshots(
        self, *, labels: Mapping[str, str] | None = None, since_ns: int | None = None,
        until_ns: int | None = None, limit: int | None = None,
    ) -> list[SnapshotRow]:
        """:meth:`Index.snapshots` (what ``cas log`` and every selection by label or time lists)."""
        sql, params = sqlite_snapshots(dict(labels or {}), since_ns, until_ns, limit)
        try:
            with self._reading() as conn:
                rows = conn.execute(sql, params).fetchall()
        except sqlite3.Error:
            return self.full().snapshots(labels=labels, since_ns=since_ns, until_ns=until_ns, limit=limit)
        return [snapshot_row(row) for row in rows]

    def locate(self, ids: Iterable[str]) -> dict[str, BlobRow]:
        ids = list(ids)
        try:
            with self._reading() as conn:
                rows = sqlite_lookup(conn, LOCATE_BLOBS, ids)
        except sqlite3.Error:
            return self.full().locate(ids)
        make = BlobRow._make
        return {row[0]: make(row) for row in rows}

    def known_blobs(self, ids: Iterable[str]) -> set[str]:
        ids = list(ids)
        try:
            with self._reading() as conn:
                rows = sqlite_lookup(conn, KNOWN_BLOBS, ids)
        except sqlite3.Error:
            return self.full().known_blobs(ids)
        return {row[0] for row in rows}

    def indexed_trees(self, tree_ids: Iterable[str]) -> set[str]:
        tree_ids = list(tree_ids)
        try:
            with self._reading() as conn:
                rows = sqlite_lookup(conn, INDEXED_TREES, tree_ids)
        except sqlite3.Error:
            return self.full().indexed_trees(tree_ids)
        return {row[0] for row in rows}

    def tree_entries(self, tree_id: str) -> list[TreeEntryRow]:
        try:
            with self._reading() as conn:
                rows = conn.execute(tree_entries("?"), (tree_id,)).fetchall()
        except sqlite3.Error:
            return self.full().tree_entries(tree_id)
        return tree_entry_rows(rows)

    def tree_entries_of(self, tree_ids: Iterable[str]) -> dict[str, list[TreeEntryRow]]:
        tree_ids = list(tree_ids)  # used twice; the lookup drops repeats
        try:
            with self._reading() as conn:
                rows = sqlite_lookup(conn, TREE_ENTRIES_OF, tree_ids)
        except sqlite3.Error:
            return self.full().tree_entries_of(tree_ids)
        return trees_entry_rows(tree_ids, rows)

    def find_entries(
        self, roots: Sequence[str], *, digest: str | None = None, name_suffix: bytes = b""
    ) -> Sequence[tuple[str, bytes, int, str | None, str | None]]:
        roots = list(dict.fromkeys(roots))
        if not roots:
            return []
        sql = find_statement("?", len(roots), digest is not None, bool(name_suffix))
        try:
            with self._reading() as conn:
                rows = conn.execute(sql, find_parameters(roots, digest, name_suffix)).fetchall()
        except sqlite3.Error:
            return self.full().find_entries(roots, digest=digest, name_suffix=name_suffix)
        return find_rows(rows)

    def unindexed_snapshots(self, *, damaged: bool = True) -> list[tuple[str, str]]:
        try:
            with self._reading() as conn:
                rows = conn.execute(UNINDEXED_SNAPSHOTS[damaged]).fetchall()
        except sqlite3.Error:
            return self.full().unindexed_snapshots(damaged=damaged)
        return [(r[0], r[1]) for r in rows]

    # -- the writer's commit -----------------------------------------------------------------

    def commit_snapshot(
        self,
        row: SnapshotRow,
        blob_ids: Iterable[str],
        *,
        damaged_if_missing: bool = False,
        still_claimed: Callable[[], bool] | None = None,
        trees: Iterable[tuple[str, list[TreeEntryRow]]] | None = None,
        assumed_trees: Collection[str] = (),
    ) -> set[str]:
        """:meth:`Index.commit_snapshot` in a writer's usual case, committed here: every blob has
        a row and every tree of the snapshot has its entries already (a snapshot of what is mostly
        stored, which would otherwise import SQLAlchemy for this transaction alone). The same
        statements in the same order, fenced the same way. Anything else (a blob without a row,
        tree entries to write, a row already there, a sync's or a repair's commit, any driver
        error) is rolled back and left to the full index, which does it all as always."""
        if damaged_if_missing or still_claimed is not None or self._full is not None:
            return self.full().commit_snapshot(row, blob_ids, damaged_if_missing=damaged_if_missing,
                                               still_claimed=still_claimed, trees=trees, assumed_trees=assumed_trees)
        wanted = sorted(set(blob_ids))
        rows_to_write = iter(trees) if trees is not None else None
        first = next(rows_to_write, None) if rows_to_write is not None else None
        if first is None and self._commit_here(row, wanted, trees is not None, assumed_trees):
            return set()
        if first is not None:
            assert rows_to_write is not None
            trees = itertools.chain([first], rows_to_write)
        return self.full().commit_snapshot(row, wanted, trees=trees, assumed_trees=assumed_trees)

    def _commit_here(self, row: SnapshotRow, wanted: list[str], with_trees: bool, assumed: Collection[str]) -> bool:
        """The commit, if it can be done here; False (nothing committed) if not."""
        try:
            with self._reading() as conn:
                return self._commit_on(conn, row, wanted, with_trees, assumed)
        except sqlite3.Error:
            return False

    def _commit_on(
        self, conn: sqlite3.Connection, row: SnapshotRow, wanted: list[str], with_trees: bool, assumed: Collection[str],
    ) -> bool:
        """:meth:`_commit_here` on this thread's connection (a failure to begin is raised)."""
        conn.execute("BEGIN")
        done = False
        try:
            conn.execute(FENCE)
            packs: set[str] = set()
            for start in range(0, len(wanted), LOOKUP_BATCH):
                batch = wanted[start : start + LOOKUP_BATCH]
                statement = PACKS_HOLDING + "(" + ",".join("?" * len(batch)) + ")" + PER_PACK  # placeholders only
                found = 0
                for pack_id, count in conn.execute(statement, batch):
                    packs.add(pack_id)
                    found += count
                if found != len(batch):
                    return False  # blobs GC removed: the full index names them
            held = sorted(packs)
            for start in range(0, len(held), LOOKUP_BATCH):
                batch = held[start : start + LOOKUP_BATCH]
                statement = RESCUE_PACKS + "(" + ",".join("?" * len(batch)) + ")"  # placeholders only
                conn.execute(statement, batch)
            if with_trees:
                have = {r[0] for r in sqlite_lookup(conn, INDEXED_TREES, assumed)}
                if len(have) == len(set(assumed)):
                    row = dataclasses.replace(row, trees_indexed=True)
            created = dt.datetime.fromtimestamp(row.time_ns / 1e9, dt.timezone.utc)
            conn.execute(INSERT_SNAPSHOT, sqlite_snapshot_values(row, created.strftime("%Y-%m-%d %H:%M:%S.%f")))
            conn.execute("COMMIT")
            done = True
        except sqlite3.Error:
            return False  # a row already there (IntegrityError), or a failure the full index reports
        finally:
            if not done and conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
        return True

    @contextmanager
    def lookups_on_one_connection(self) -> Iterator[None]:
        """Each thread's lookups here share one connection already."""
        yield

    # -- the rest -------------------------------------------------------------------------------

    def full(self) -> Index:
        """The full index, opened now if it was not (importing SQLAlchemy)."""
        with self._lock:
            if self._full is None:
                from manifests.index import Index

                self._full = Index.open(self.url)
            return self._full

    def forget_inherited_connections(self) -> None:
        """In a forked child: the full index's pooled connections, if the parent had opened it, are
        dropped unclosed; this index's own are per process already (see :meth:`_reading`)."""
        if self._full is not None:
            self._full.forget_inherited_connections()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("_lock", "_full", "_local", "_connections"):
            raise AttributeError(name)
        return getattr(self.full(), name)

    def close(self) -> None:
        """Close every connection of this process, each once no thread is using it (a thread in
        the middle of a query on a connection closed under it can crash the interpreter: a
        read-ahead thread still looking up when its view was closed did); a thread that uses its
        connection afterwards meets ``sqlite3.ProgrammingError``."""
        with self._lock:
            mine = [(conn, lock) for pid, conn, lock in self._connections if pid == os.getpid()]
            self._connections.clear()
            full, self._full = self._full, None
        for conn, lock in mine:
            with lock:
                conn.close()
        if full is not None:
            full.close()

    @contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        """This thread's connection (a new one in a forked child: a connection is never used
        across a fork), held for the block: :meth:`close` waits for it."""
        pid = os.getpid()
        held = getattr(self._local, "held", None)
        if held is None or held[0] != pid:
            # Autocommit: each SELECT reads on its own, holding no transaction open between calls.
            conn = sqlite3.connect(self._uri, uri=True, timeout=_BUSY_TIMEOUT_S, isolation_level=None,
                                   check_same_thread=False)
            held = (pid, conn, threading.Lock())
            self._local.held = held
            with self._lock:
                self._connections.append(held)
        with held[2]:
            yield held[1]
