"""The index's table of tree entries, from the engine's side: what a writer hands its commit, how the
entries of snapshots that lack them are filled from the backend, and a tree source that reads them.

The table (``manifests/trees.py``, docs/INDEX.md "tree_entries") holds each directory's logical
entries under its tree ID, without chunk lists. It is filled

* by a writer, from what the tree builder encoded (:class:`TreeRowSpool`): rows only for the
  directories the table lacks, a batch at a time as the walk goes (or, for a batch the index
  refuses, in the commit's own transaction);
* by sync, rebuild and the first open after migration 0005 (:func:`fill_tree_index`), reading from
  the backend only the trees the table lacks.
"""

from __future__ import annotations

import logging
import os
import pickle
import sys
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Protocol

from cas.errors import CasError
from cas.format.trees import DIR, FILE, SYMLINK, Entry, encode_directory, new_entry
from cas.repo.repository import Repository
from cas.types import EntryType
from manifests.rows import TreeEntryRow

log = logging.getLogger("cas")

_CHECK_EVERY = 256
"""Finished directories the spool holds before asking the index which of them it already has."""
_CHECK_ENTRIES = 10_000
"""... or entries in them (held as the encoder's entries until checked, as rows only if kept)."""
_SPILL_ROWS = 20_000
"""Rows of new directories held in memory before the spool writes them to a temporary file (some
3 MiB; a snapshot of 100,000 small files held 15 MiB of rows until its commit at 200,000)."""
_KINDS = {kind.value: kind for kind in EntryType}
_FS_ENCODING, _FS_ERRORS = sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()


class TreeRowIndex(Protocol):
    """What the spool and the filler need of the index."""

    def indexed_trees(self, tree_ids: Sequence[str]) -> set[str]: ...

    def add_tree_rows(self, trees: Sequence[tuple[str, Sequence[TreeEntryRow]]], below: Iterable[str]) -> bool: ...


EMPTY_TREE = encode_directory([], lambda node_id, data: None)
"""The tree ID of every empty directory: it has no rows, ever."""


def entry_row(entry: Entry) -> TreeEntryRow:
    """The index row of a tree entry (chunk lists are not kept)."""
    name = os.fsencode(entry.name)
    if entry.type == FILE:
        return TreeEntryRow(name, FILE.value, entry.mode, entry.mtime_ns, entry.size, digest=entry.digest)
    if entry.type == SYMLINK:
        return TreeEntryRow(name, SYMLINK.value, entry.mode, entry.mtime_ns, target=os.fsencode(entry.target))
    return TreeEntryRow(name, DIR.value, entry.mode, entry.mtime_ns, child=entry.tree)


def entry_from_row(row: TreeEntryRow) -> Entry:
    """The tree entry of an index row; its ``chunks`` are empty (the index does not keep them).
    (A listing makes one per entry it shows: built without the dataclass's ``__init__``, names
    decoded as :func:`os.fsdecode` does, without its checks.)"""
    kind = _KINDS.get(row.type)
    name = row.name.decode(_FS_ENCODING, _FS_ERRORS)
    if kind is FILE:
        return new_entry(name, FILE, row.mode, row.mtime_ns, row.size, row.digest or "")
    if kind is SYMLINK:
        target = (row.target or b"").decode(_FS_ENCODING, _FS_ERRORS)
        return new_entry(name, SYMLINK, row.mode, row.mtime_ns, target=target)
    if kind is DIR:
        return new_entry(name, DIR, row.mode, row.mtime_ns, tree=row.child or "")
    raise CasError(f"the index's entry {name!r} has an unknown type {row.type!r}")


TreeSink = Callable[[bytes, list[str], list[str]], None]
"""Where a spool with a sink sends each checked batch: the kept directories' rows as one pickled
frame of the spool's file (``[(tree ID, rows), ...]``), their tree IDs, and the directories the
index already had."""


def _frame(trees: list[tuple[str, list[TreeEntryRow]]]) -> bytes:
    """Directories' rows pickled for the spool's file, as plain tuples: a named tuple is pickled as
    its class and arguments, six times slower (0.56 s against 0.10 s for 100,000 rows here)."""
    return pickle.dumps([(tree_id, [tuple(row) for row in rows]) for tree_id, rows in trees],
                        protocol=pickle.HIGHEST_PROTOCOL)


class TreeRowSpool:
    """The rows of the directories a snapshot encodes, for its commit.

    Directories the index already has are dropped (asked in batches as they finish) and remembered
    in :attr:`assumed`, which the commit re-checks under the fence. The rows of the others are
    written as each batch is checked (:meth:`~manifests.trees.TreeIndex.add_tree_rows`), not in
    the commit, and they join :attr:`assumed` too: a snapshot of 100,000 small files spent 1.5 s of
    its commit's 2.2 s writing them, one core idle, where the walk now writes them as it goes.
    Only if the index refuses a batch (a tree below it lost its rows: pruned meanwhile) are its
    rows kept for the commit, held in memory up to :data:`_SPILL_ROWS` rows, then in a temporary
    file, so a first snapshot of a huge tree does not hold every entry at once. With a ``sink`` (a
    parallel snapshot's worker), each checked batch goes there instead, pickled, and the spool
    keeps nothing.

    :meth:`merge` may be called from another thread than :meth:`add` (a parallel snapshot's
    results thread takes in its workers' batches while the walk goes on): their frames go to the
    temporary file as they came, not unpickled. A directory two processes both kept is in the
    file twice; :meth:`trees` gives both, and the commit writes its rows once.
    """

    def __init__(self, index: TreeRowIndex, sink: TreeSink | None = None) -> None:
        self._index = index
        self._sink = sink
        self._lock = threading.Lock()
        self._pending: list[tuple[str, list[Entry]]] = []
        self._pending_entries = 0
        self._kept: list[tuple[str, list[TreeEntryRow]]] = []
        self._kept_rows = 0
        self._seen: set[str] = set()
        self._spill: tempfile.SpooledTemporaryFile[bytes] | None = None
        self.assumed: set[str] = set()

    def add(self, tree_id: str, entries: list[Entry]) -> None:
        """One finished directory: its tree ID and its entries."""
        with self._lock:
            if tree_id in self._seen:
                return
            self._seen.add(tree_id)
            self._pending.append((tree_id, entries))  # made rows only if the index lacks the tree
            self._pending_entries += len(entries)
            if len(self._pending) >= _CHECK_EVERY or self._pending_entries >= _CHECK_ENTRIES:
                self._check()

    def _check(self) -> None:
        known = self._index.indexed_trees([t for t, _ in self._pending])
        kept: list[tuple[str, list[TreeEntryRow]]] = []
        assumed: list[str] = []
        for tree_id, entries in self._pending:
            if tree_id in known:
                assumed.append(tree_id)
            else:
                kept.append((tree_id, [entry_row(e) for e in entries]))
        self._pending, self._pending_entries = [], 0
        if kept and self._write_ahead(kept):
            assumed.extend(tree_id for tree_id, rows in kept if rows)
            kept = []
        if self._sink is not None:
            self._sink(_frame(kept) if kept else b"", [t for t, _ in kept], assumed)
            return
        self.assumed.update(assumed)
        self._keep(kept)

    def _write_ahead(self, kept: list[tuple[str, list[TreeEntryRow]]]) -> bool:
        """Write the rows of ``kept`` now, if every tree below them outside the batch still has
        rows (the index checks, under the fence); False if not, nothing written."""
        batch = {tree_id for tree_id, _ in kept}
        below = {row.child for _, rows in kept for row in rows if row.child is not None}
        return self._index.add_tree_rows(kept, below - batch - {EMPTY_TREE})

    def _keep(self, trees: Iterable[tuple[str, list[TreeEntryRow]]]) -> None:
        for tree_id, rows in trees:
            self._kept.append((tree_id, rows))
            self._kept_rows += len(rows)
        if self._kept_rows >= _SPILL_ROWS:
            self._spill_file().write(_frame(self._kept))
            self._kept, self._kept_rows = [], 0

    def _spill_file(self) -> tempfile.SpooledTemporaryFile[bytes]:
        if self._spill is None:
            self._spill = tempfile.TemporaryFile(prefix="cas-tree-rows-")  # type: ignore[assignment]  # noqa: SIM115 - closed by close()
        return self._spill  # type: ignore[return-value]

    def merge(self, frame: bytes, tree_ids: Iterable[str], assumed: Iterable[str]) -> None:
        """Take in a batch another spool sent its sink (a parallel snapshot's worker's)."""
        with self._lock:
            self._spill_file().write(frame)
            self._seen.update(tree_ids)  # not kept again by this process's own walk
            self.assumed.update(assumed)

    def finish(self) -> None:
        """Check the directories not yet checked; :attr:`assumed` is complete afterwards."""
        with self._lock:
            if self._pending:
                self._check()

    def trees(self) -> Iterator[tuple[str, list[TreeEntryRow]]]:
        """Every kept directory (what the index lacked when it was checked), after :meth:`finish`."""
        if self._spill is not None:
            self._spill.seek(0)
            while True:
                try:
                    frame = pickle.load(self._spill)  # our own file: frames pickled here or by our workers
                except EOFError:
                    break
                for tree_id, rows in frame:
                    yield tree_id, [TreeEntryRow._make(row) for row in rows]
        yield from self._kept

    def close(self) -> None:
        if self._spill is not None:
            self._spill.close()
            self._spill = None


class IndexedTrees:
    """A tree source (``browse.TreeSource``) answering from the index's rows instead of the backend.

    Only for trees of snapshots marked ``trees_indexed``: there a tree without rows is empty.
    Entries have no chunk lists, which listing and diffing do not use.
    """

    def __init__(self, index) -> None:  # type: ignore[no-untyped-def]
        self._index = index

    def read_tree(self, tree_id: str) -> list[Entry]:
        return [entry_from_row(r) for r in self._index.tree_entries(tree_id)]

    def read_trees(self, tree_ids: Iterable[str]) -> dict[str, list[Entry]]:
        """Several trees' entries at once (batched queries on one connection), by tree ID."""
        with self._index.lookups_on_one_connection():
            found = self._index.tree_entries_of(tree_ids)
        return {t: [entry_from_row(r) for r in rows] for t, rows in found.items()}


def index_snapshot_trees(repo: Repository, execution_id: str, root: str) -> bool:
    """Write the rows of one snapshot's trees the index lacks (reading those from the backend) and
    mark it ``trees_indexed``. A tree with rows is not read, nor anything below it. False if a tree
    could not be read (nothing is written; the snapshot stays unmarked) or the snapshot has no row."""
    trees: list[tuple[str, list[TreeEntryRow]]] = []
    assumed: set[str] = set()
    seen: set[str] = set()
    todo = [root]
    while todo:
        level = [t for t in dict.fromkeys(todo) if t not in seen]
        seen.update(level)
        todo = []
        have = repo.index.indexed_trees(level)
        for tree_id in level:
            if tree_id in have:
                assumed.add(tree_id)
                continue
            try:
                entries = repo.read_tree(tree_id)
            except CasError as exc:
                log.warning("execution %s: tree %s cannot be read (%s); its entries are not indexed",
                            execution_id, tree_id[:16], exc)
                return False
            trees.append((tree_id, [entry_row(e) for e in entries]))
            todo.extend(e.tree for e in entries if e.type == DIR)
    return bool(repo.index.add_trees(execution_id, trees, assumed))


def fill_tree_index(repo: Repository, *, damaged: bool = True) -> tuple[int, int]:
    """Index the trees of every snapshot row not marked ``trees_indexed`` (rows written before
    migration 0005, or whose trees could not be read), those marked damaged only if ``damaged``.
    Returns (filled, left unmarked)."""
    filled = failed = 0
    for execution_id, root in repo.index.unindexed_snapshots(damaged=damaged):
        if index_snapshot_trees(repo, execution_id, root):
            filled += 1
        else:
            failed += 1
    return filled, failed
