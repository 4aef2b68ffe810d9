"""What ``cas repair``, ``cas verify`` and ``cas rebuild-index`` change in the index: rows of data that
is gone or corrupt, damaged marks, and emptying it before a rebuild. Never stored data itself."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import delete, update

from manifests.connection import IndexConnection, batches
from manifests.models import Blob, Pack, RepositoryBinding, Snapshot, Tombstone, TreeEntry


class RepairIndex(IndexConnection):
    """The part of :class:`~manifests.index.Index` that repair and rebuild use."""

    def forget_blobs_in_packs(self, pack_ids: Sequence[str]) -> int:
        """Repair: drop rows of packs that are gone from the backend, so nothing dedups against them."""
        removed = 0
        with self._fenced() as conn:
            for batch in batches(pack_ids):
                removed += conn.execute(delete(Blob).where(Blob.pack_id.in_(batch))).rowcount or 0
                conn.execute(delete(Pack).where(Pack.id.in_(batch)))
        return removed

    def forget_blobs(self, blob_ids: Sequence[str]) -> int:
        """Repair: drop rows of corrupt blobs, so writers store those chunks again."""
        removed = 0
        with self._fenced() as conn:
            for batch in batches(blob_ids):
                removed += conn.execute(delete(Blob).where(Blob.id.in_(batch))).rowcount or 0
        return removed

    def mark_damaged(self, execution_id: str, damaged: bool = True) -> None:
        """Mark a snapshot whose blobs are missing (or clear the mark); the row stays."""
        with self._write() as conn:
            conn.execute(update(Snapshot).where(Snapshot.execution_id == execution_id).values(damaged=damaged))

    def reset(self) -> None:
        """Empty every table (before a rebuild from the backend)."""
        with self._fenced() as conn:
            conn.execute(delete(Snapshot))
            conn.execute(delete(TreeEntry))
            conn.execute(delete(RepositoryBinding))
            conn.execute(delete(Blob))
            conn.execute(delete(Pack))
            conn.execute(delete(Tombstone))
