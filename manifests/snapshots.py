"""Snapshot rows: the fenced, blob-checking commit (the only way a row enters), reads, removal."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable, Collection, Iterable, Mapping

from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError as SQLIntegrityError

from backends.errors import AlreadyExists
from manifests.collection import rescue_condemned
from manifests.connection import IndexConnection, batches
from manifests.errors import SnapshotWithdrawn
from manifests.models import Snapshot
from manifests.rows import SnapshotRow
from manifests.statements import INDEXED_TREES, SNAPSHOT_COLUMNS, snapshot_by_id, snapshot_row
from manifests.trees import TreeIndex, TreeRows

_SNAPSHOT_SELECT = [Snapshot.__table__.c[name] for name in SNAPSHOT_COLUMNS]


class SnapshotIndex(TreeIndex, IndexConnection):
    """The part of :class:`~manifests.index.Index` that holds snapshot rows."""

    def commit_snapshot(
        self,
        row: SnapshotRow,
        blob_ids: Iterable[str],
        *,
        damaged_if_missing: bool = False,
        still_claimed: Callable[[], bool] | None = None,
        trees: TreeRows | None = None,
        assumed_trees: Collection[str] = (),
    ) -> set[str]:
        """Insert a snapshot row if every blob it references is still stored; return those that are not.

        This is the only way a snapshot row enters the index (a writer's commit, a sync, a rebuild,
        a repair). It runs under the fence, so it is ordered against garbage collection: blobs in
        packs GC has condemned are rescued (their packs made live again, they still exist), blobs whose
        packs GC already tombstoned are returned and nothing is inserted (the caller writes them again)
        -- or, with ``damaged_if_missing``, the row is inserted marked damaged.

        A row that already exists with the same root tree is success: the rescue still commits, and a
        damaged mark is cleared when every blob is now stored. A different root is AlreadyExists.
        ``still_claimed`` is called last, inside the transaction: if it returns False (the snapshot
        object was forgotten meanwhile) nothing is committed and :class:`SnapshotWithdrawn` is raised.

        ``trees``: the entries of the snapshot's trees that had no rows when the writer looked;
        ``assumed_trees``: the ones it left out because they had rows. In the same transaction the
        missing rows are written and the snapshot marked ``trees_indexed`` -- unless some assumed
        tree lost its rows meanwhile (pruned), when the snapshot is left for the engine to fill.
        """
        wanted = sorted(set(blob_ids))  # in key order, batch after batch (see sqlite_lookup)
        with self._fenced() as conn:
            packs, missing = self._packs_holding(conn, wanted)
            if missing and not damaged_if_missing:
                return missing
            for batch in batches(list(packs)):
                conn.execute(rescue_condemned(batch))
            if trees is not None:
                have = {r[0] for r in self._lookup_on(
                    conn, INDEXED_TREES, assumed_trees)}
                if len(have) == len(set(assumed_trees)):
                    self._insert_trees(conn, trees)
                    row = dataclasses.replace(row, trees_indexed=True)
            try:
                self._insert_snapshot(conn, row if not missing else dataclasses.replace(row, damaged=True))
            except AlreadyExists:
                existing = conn.execute(
                    select(Snapshot.root_tree, Snapshot.damaged).where(Snapshot.execution_id == row.execution_id)
                ).first()
                if existing is None or existing.root_tree != row.root_tree:
                    raise
                if existing.damaged and not missing:
                    conn.execute(
                        update(Snapshot).where(Snapshot.execution_id == row.execution_id).values(damaged=False)
                    )
                if row.trees_indexed:
                    conn.execute(
                        update(Snapshot).where(Snapshot.execution_id == row.execution_id).values(trees_indexed=True)
                    )
            if still_claimed is not None and not still_claimed():
                raise SnapshotWithdrawn(f"snapshot {row.execution_id} was removed from the backend meanwhile")
        return missing

    def _packs_holding(self, conn, wanted: list[str]) -> tuple[set[str], set[str]]:  # type: ignore[no-untyped-def]
        """The packs holding the blobs ``wanted`` (distinct IDs), and the IDs no row names.

        Counted per pack in the query, so a snapshot's hundred thousand blobs come back as the few
        rows of their packs; only a batch whose count falls short is looked up blob by blob.
        """
        packs: set[str] = set()
        missing: set[str] = set()
        for batch in batches(wanted):
            rows = self._lookup_on(conn, "SELECT pack_id, COUNT(*) FROM blobs WHERE id IN ", batch, " GROUP BY pack_id")
            found = 0
            for pack_id, count in rows:
                packs.add(pack_id)
                found += count
            if found != len(batch):
                stored = {r[0] for r in self._lookup_on(conn, "SELECT id FROM blobs WHERE id IN ", batch)}
                missing.update(b for b in batch if b not in stored)
        return packs, missing

    def _insert_snapshot(self, conn, row: SnapshotRow) -> None:  # type: ignore[no-untyped-def]
        values = {
            "execution_id": row.execution_id,
            "root_tree": row.root_tree,
            "created_at": dt.datetime.fromtimestamp(row.time_ns / 1e9, dt.timezone.utc),
            "time_ns": row.time_ns,
            "labels": row.labels,
            "stats": row.stats,
            "logical_bytes": row.logical_bytes,
            "new_bytes": row.new_bytes,
            "stored_bytes": row.stored_bytes,
            "root_mode": row.root_mode,
            "root_mtime_ns": row.root_mtime_ns,
            "damaged": row.damaged,
            "trees_indexed": row.trees_indexed,
        }
        # A savepoint, so a duplicate ID fails this insert only and not the caller's transaction.
        try:
            with conn.begin_nested():
                conn.execute(insert(Snapshot), [values])
        except SQLIntegrityError as exc:
            raise AlreadyExists(f"execution ID already exists in the index: {row.execution_id}") from exc

    def snapshot(self, execution_id: str) -> SnapshotRow | None:
        with self._read() as conn:
            row = conn.exec_driver_sql(snapshot_by_id(self._mark), (execution_id,)).first()
        return None if row is None else snapshot_row(row)

    def snapshots(
        self,
        *,
        labels: Mapping[str, str] | None = None,
        since_ns: int | None = None,
        until_ns: int | None = None,
        limit: int | None = None,
    ) -> list[SnapshotRow]:
        """Snapshots, newest first: those carrying every one of ``labels`` (key and value), taken at
        ``since_ns`` or later and before ``until_ns``, at most ``limit`` of them; ``None`` for no bound.

        Everything is filtered in the query: labels through the JSON column's path lookup (SQLite's
        ``json_extract``, PostgreSQL's ``->>``), so ``limit`` counts matching rows only. Label keys
        are the engine's checked names (letters, digits, ``._/-``), safe inside a JSON path.
        """
        query = select(*_SNAPSHOT_SELECT)
        for key, value in (labels or {}).items():
            query = query.where(Snapshot.labels[key].as_string() == value)
        if since_ns is not None:
            query = query.where(Snapshot.time_ns >= since_ns)
        if until_ns is not None:
            query = query.where(Snapshot.time_ns < until_ns)
        query = query.order_by(Snapshot.time_ns.desc(), Snapshot.execution_id)
        if limit is not None:
            query = query.limit(limit)
        with self._read() as conn:
            return [snapshot_row(r) for r in conn.execute(query)]

    def remove_snapshot(self, execution_id: str) -> bool:
        """Fenced, so a sync's commit of the same ID is ordered before or after it (never inside)."""
        with self._fenced() as conn:
            result = conn.execute(delete(Snapshot).where(Snapshot.execution_id == execution_id))
        return bool(result.rowcount)
