"""The index's table of tree entries, from the engine's side: what a writer hands its commit, how the
entries of snapshots that lack them are filled from the backend, and a tree source that reads them.

The table (``manifests/trees.py``, docs/INDEX.md "tree_entries") holds each directory's logical
entries under its tree ID, without chunk lists. It is filled

* by a writer's commit, from what the tree builder encoded (:class:`TreeRowSpool`), in the commit's
  own transaction: rows only for the directories the table lacks;
* by sync, rebuild and the first open after migration 0005 (:func:`fill_tree_index`), reading from
  the backend only the trees the table lacks.
"""

from __future__ import annotations

import logging
import os
import pickle
import sys
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from typing import Protocol

from cas.errors import CasError
from cas.format.trees import DIR, FILE, SYMLINK, Entry, new_entry
from cas.repo.repository import Repository
from cas.types import EntryType
from manifests.rows import TreeEntryRow

log = logging.getLogger("cas")

_CHECK_EVERY = 256
"""Finished directories the spool holds before asking the index which of them it already has."""
_CHECK_ENTRIES = 10_000
"""... or entries in them (held as the encoder's entries until checked, as rows only if kept)."""
_SPILL_ROWS = 200_000
"""Rows of new directories held in memory before the spool writes them to a temporary file."""
_KINDS = {kind.value: kind for kind in EntryType}
_FS_ENCODING, _FS_ERRORS = sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()


class TreeRowIndex(Protocol):
    """What the spool and the filler need of the index."""

    def indexed_trees(self, tree_ids: Sequence[str]) -> set[str]: ...


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


class TreeRowSpool:
    """The rows of the directories a snapshot encodes, for its commit.

    Directories the index already has are dropped (asked in batches as they finish) and remembered
    in :attr:`assumed`, which the commit re-checks under the fence. What stays is held in memory up
    to :data:`_SPILL_ROWS` rows, then in a temporary file, so a first snapshot of a huge tree does
    not hold every entry at once.
    """

    def __init__(self, index: TreeRowIndex) -> None:
        self._index = index
        self._pending: list[tuple[str, list[Entry]]] = []
        self._pending_entries = 0
        self._kept: list[tuple[str, list[TreeEntryRow]]] = []
        self._kept_rows = 0
        self._seen: set[str] = set()
        self._spill: tempfile.SpooledTemporaryFile[bytes] | None = None
        self.assumed: set[str] = set()

    def add(self, tree_id: str, entries: list[Entry]) -> None:
        """One finished directory: its tree ID and its entries."""
        if tree_id in self._seen:
            return
        self._seen.add(tree_id)
        self._pending.append((tree_id, entries))  # made rows only if the index lacks the tree
        self._pending_entries += len(entries)
        if len(self._pending) >= _CHECK_EVERY or self._pending_entries >= _CHECK_ENTRIES:
            self._check()

    def _check(self) -> None:
        known = self._index.indexed_trees([t for t, _ in self._pending])
        for tree_id, entries in self._pending:
            if tree_id in known:
                self.assumed.add(tree_id)
            else:
                rows = [entry_row(e) for e in entries]
                self._kept.append((tree_id, rows))
                self._kept_rows += len(rows)
        self._pending, self._pending_entries = [], 0
        if self._kept_rows >= _SPILL_ROWS:
            if self._spill is None:
                self._spill = tempfile.TemporaryFile(prefix="cas-tree-rows-")  # type: ignore[assignment]  # noqa: SIM115 - closed by close()
            pickle.dump(self._kept, self._spill, protocol=pickle.HIGHEST_PROTOCOL)  # type: ignore[arg-type]
            self._kept, self._kept_rows = [], 0

    def merge(self, trees: Iterable[tuple[str, list[TreeEntryRow]]], assumed: Iterable[str]) -> None:
        """Take in another spool's kept directories and assumed ones (a parallel snapshot's
        workers'); a directory already here is not kept twice."""
        for tree_id, rows in trees:
            if tree_id in self._seen:
                continue
            self._seen.add(tree_id)
            self._kept.append((tree_id, rows))
            self._kept_rows += len(rows)
        self.assumed.update(assumed)

    def finish(self) -> None:
        """Check the directories not yet checked; :attr:`assumed` is complete afterwards."""
        if self._pending:
            self._check()

    def trees(self) -> Iterator[tuple[str, list[TreeEntryRow]]]:
        """Every kept directory (what the index lacked when it was checked), after :meth:`finish`."""
        if self._spill is not None:
            self._spill.seek(0)
            while True:
                try:
                    yield from pickle.load(self._spill)  # our own file, written above
                except EOFError:
                    break
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
