"""Tree entries: each directory's entries keyed by its tree ID, so listing, finding and diffing are
queries that read nothing from the backend (docs/INDEX.md, "tree_entries").

Rows are deduplicated exactly like the trees: a tree ID's rows are written once, by the first
snapshot that needs them, all in one transaction, and a directory that did not change adds nothing.
That gives the invariant the readers rely on: **if a tree has rows, every tree below it has rows**
(rows enter a whole snapshot at a time, and :meth:`TreeIndex.prune_trees` removes only trees no
snapshot reaches, whose subtrees it therefore may remove too). A snapshot whose trees all have rows
is marked ``trees_indexed``; an empty directory has no rows, which for a marked snapshot means empty.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from sqlalchemy import text, update

from manifests.connection import IndexConnection
from manifests.models import Snapshot, TreeEntry
from manifests.rows import TreeEntryRow
from manifests.statements import (
    INDEXED_TREES,
    TREE_ENTRIES_OF,
    UNINDEXED_SNAPSHOTS,
    find_parameters,
    find_rows,
    find_statement,
    tree_entries,
    tree_entry_rows,
    trees_entry_rows,
)

TreeRows = Iterable[tuple[str, Sequence[TreeEntryRow]]]
"""``(tree ID, its entries)`` for each directory, in any order; a tree given twice is written once."""

_INSERT_BATCH = 2000
_ENTRY_COLUMNS = ("tree_id", "name", "type", "mode", "mtime_ns", "size", "digest", "target", "child")
_TREE_BATCH = 500
_BATCH_ROWS = 10_000
"""A batch of trees is also written once it holds this many entries: a batch's rows are copied into
statement parameters at once (a snapshot of 100,000 small files, 1,000 to a directory, copied all
of them in one batch)."""



class TreeIndex(IndexConnection):
    """The part of :class:`~manifests.index.Index` that holds tree entries."""

    def indexed_trees(self, tree_ids: Iterable[str]) -> set[str]:
        """Those of ``tree_ids`` that have rows (and so, by the invariant, their whole subtrees)."""
        return {r[0] for r in self._lookup(INDEXED_TREES, tree_ids)}

    def add_tree_rows(self, trees: Sequence[tuple[str, Sequence[TreeEntryRow]]], below: Iterable[str]) -> bool:
        """Write the rows of ``trees`` that lack them before any snapshot row reaches them (a writer
        writing its trees' rows as it goes, not all in its commit); fenced. ``below`` names the
        trees their subdirectories are, outside ``trees`` (empty trees, which never have rows, left
        out): only if each still has rows is anything written, so the invariant holds (if a tree has
        rows, every tree below it has). False, with nothing written, if one lost its rows (pruned
        meanwhile): the caller writes these with its commit instead. Until a snapshot row reaches
        them, :meth:`prune_trees` may remove them, which the commit then sees (their trees are among
        its assumed ones)."""
        below = set(below)
        with self._fenced() as conn:
            if below and len({r[0] for r in self._lookup_on(
                    conn, INDEXED_TREES, below)}) != len(below):
                return False
            self._insert_trees(conn, trees)
        return True

    def add_trees(self, execution_id: str, trees: TreeRows, assumed: Iterable[str] = ()) -> bool:
        """Write the rows of a snapshot's trees that lack them and mark the snapshot ``trees_indexed``;
        fenced, so it is ordered against :meth:`prune_trees`. ``trees`` must hold every tree of the
        snapshot that had no rows when the caller looked, ``assumed`` those it left out because they
        had. Returns False (and writes nothing) if the snapshot has no row or an assumed tree lost its
        rows meanwhile (pruned: the caller may look again)."""
        assumed = set(assumed)
        with self._fenced() as conn:
            if assumed and len({r[0] for r in self._lookup_on(
                    conn, INDEXED_TREES, assumed)}) != len(assumed):
                return False
            marked = conn.execute(
                update(Snapshot).where(Snapshot.execution_id == execution_id).values(trees_indexed=True)
            ).rowcount
            if not marked:
                return False  # nothing was written
            self._insert_trees(conn, trees)
        return True

    def _insert_trees(self, conn, trees: TreeRows) -> int:  # type: ignore[no-untyped-def]
        """Insert the rows of the trees that have none, inside the caller's transaction."""
        inserted = 0
        batch: list[tuple[str, Sequence[TreeEntryRow]]] = []
        batch_rows = 0

        def flush() -> int:
            ids = [tree_id for tree_id, _ in batch]
            known = {r[0] for r in self._lookup_on(conn, INDEXED_TREES, ids)}
            done: set[str] = set()
            values = []
            for tree_id, entries in batch:
                if tree_id in known or tree_id in done:
                    continue
                done.add(tree_id)
                values.extend((tree_id, *e) for e in entries)  # a TreeEntryRow is a tuple of the other columns
            for start in range(0, len(values), _INSERT_BATCH):
                self._insert_ignore_rows(conn, TreeEntry, ["tree_id", "name"], _ENTRY_COLUMNS,
                                         values[start : start + _INSERT_BATCH])
            batch.clear()
            return len(values)

        for item in trees:
            batch.append(item)
            batch_rows += len(item[1])
            if len(batch) >= _TREE_BATCH or batch_rows >= _BATCH_ROWS:
                inserted += flush()
                batch_rows = 0
        if batch:
            inserted += flush()
        return inserted

    def tree_entries(self, tree_id: str) -> list[TreeEntryRow]:
        """The rows of one tree, in the tree's order (by name bytes); none for an empty or unknown tree."""
        with self._read() as conn:
            rows = conn.exec_driver_sql(tree_entries(self._mark), (tree_id,)).all()
        return tree_entry_rows(rows)

    def tree_entries_of(self, tree_ids: Iterable[str]) -> dict[str, list[TreeEntryRow]]:
        """The rows of each of ``tree_ids`` as :meth:`tree_entries` gives them, in batched queries
        (one per few hundred trees, not one per tree); an empty or unknown tree maps to no rows."""
        tree_ids = list(tree_ids)  # used twice; the lookup drops repeats
        return trees_entry_rows(tree_ids, self._lookup(TREE_ENTRIES_OF, tree_ids))

    def unindexed_snapshots(self, *, damaged: bool = True) -> list[tuple[str, str]]:
        """``(execution ID, root tree)`` of the snapshots whose trees have no rows yet, newest first;
        without those marked damaged unless ``damaged``."""
        with self._read() as conn:
            return [(r[0], r[1]) for r in conn.execute(text(UNINDEXED_SNAPSHOTS[damaged]))]

    def find_entries(
        self, roots: Sequence[str], *, digest: str | None = None, name_suffix: bytes = b""
    ) -> Sequence[tuple[str, bytes, int, str | None, str | None]]:
        """``(tree, name, size, digest, subdirectory's tree)`` of the entries of every tree reachable
        from ``roots`` (each tree once) that a find needs: each subdirectory (its ``child`` set), and
        each file (``child`` None) with ``digest`` if given and a name ending with ``name_suffix``."""
        roots = list(dict.fromkeys(roots))
        if not roots:
            return []
        sql = find_statement(self._mark, len(roots), digest is not None, bool(name_suffix))
        with self._read() as conn:
            rows = conn.exec_driver_sql(sql, tuple(find_parameters(roots, digest, name_suffix))).all()
        return find_rows(rows)

    def prune_trees(self) -> int:
        """Delete the rows of trees no snapshot row reaches (after GC, or forgotten snapshots);
        fenced, so a commit that reuses a tree is ordered before (the tree is reached) or after (its
        rows are written again). Returns how many rows went."""
        # The CTE inside the subquery, not before DELETE: SQLite reports no rowcount for a WITH statement.
        sql = text(
            "DELETE FROM tree_entries WHERE tree_id NOT IN ("
            "WITH RECURSIVE reach(id) AS (SELECT root_tree FROM snapshots"
            " UNION SELECT e.child FROM tree_entries e JOIN reach r ON e.tree_id = r.id WHERE e.child IS NOT NULL) "
            "SELECT id FROM reach)"
        )
        with self._fenced() as conn:
            return conn.execute(sql).rowcount or 0
