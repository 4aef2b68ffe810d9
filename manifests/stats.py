"""Totals over the whole index, for ``cas stats``."""

from __future__ import annotations

from sqlalchemy import func, select

from manifests.connection import IndexConnection
from manifests.models import Blob, Pack, Snapshot
from manifests.rows import IndexStats

# The stored kinds of docs/FORMAT.md "Blobs and codecs" (the engine defines them; the index only counts).
_CHUNK = 0
_TREE = 1


class StatsIndex(IndexConnection):
    """The part of :class:`~manifests.index.Index` that counts."""

    def stats(self) -> IndexStats:
        with self._read() as conn:
            snapshots, logical = conn.execute(
                select(func.count(), func.coalesce(func.sum(Snapshot.logical_bytes), 0)).select_from(Snapshot)
            ).one()
            packs, pack_bytes = conn.execute(
                select(func.count(), func.coalesce(func.sum(Pack.size), 0)).select_from(Pack)
            ).one()
            per_kind = {
                kind: (count, raw, stored)
                for kind, count, raw, stored in conn.execute(
                    select(Blob.kind, func.count(), func.sum(Blob.raw_length), func.sum(Blob.length)).group_by(
                        Blob.kind
                    )
                )
            }
        chunks = per_kind.get(_CHUNK, (0, 0, 0))
        trees = per_kind.get(_TREE, (0, 0, 0))
        return IndexStats(
            snapshots=int(snapshots),
            packs=int(packs),
            pack_bytes=int(pack_bytes),
            blobs=int(chunks[0] + trees[0]),
            chunks=int(chunks[0]),
            trees=int(trees[0]),
            chunk_raw_bytes=int(chunks[1] or 0),
            chunk_stored_bytes=int(chunks[2] or 0),
            logical_bytes=int(logical),
        )
