"""Blob and pack rows: the lookups of snapshot and restore, and the inserts of writers and sync."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Iterator, Sequence

from sqlalchemy import select

from manifests.connection import LOOKUP_BATCH, IndexConnection
from manifests.database import utc
from manifests.errors import PackBeingDeleted
from manifests.models import Blob, Pack, Tombstone
from manifests.rows import BlobLocationLike, BlobRow, PackRow, PackState
from manifests.statements import KNOWN_BLOBS, LOCATE_BLOBS


class BlobIndex(IndexConnection):
    """The part of :class:`~manifests.index.Index` that finds and records blobs and packs."""

    def known_blobs(self, ids: Iterable[str]) -> set[str]:
        """The subset of ``ids`` a writer may deduplicate against: stored in a *live* pack.

        Blobs in packs that garbage collection condemned are still readable but not offered, so no
        new reference to them is made after the condemnation (docs/GC.md).
        """
        return {row[0] for row in self._lookup(KNOWN_BLOBS, ids)}

    def locate(self, ids: Iterable[str]) -> dict[str, BlobRow]:
        """Where each of ``ids`` is stored, in live and condemned packs alike; unknown IDs are absent."""
        make = BlobRow._make
        return {row[0]: make(row) for row in self._lookup(LOCATE_BLOBS, ids)}

    def add_pack(
        self, pack_id: str, size: int, blobs: Sequence[BlobLocationLike], *, stored: Callable[[], bool]
    ) -> None:
        """Record a pack that is already on the backend, and the blobs it holds, in one transaction.

        Fenced; refused with :class:`~manifests.errors.PackBeingDeleted` while garbage collection holds
        a tombstone of this name, or when ``stored()`` (asked inside the transaction, after the
        tombstone check) says the pack's object is not on the backend. GC clears a tombstone only
        after the object's delete returned, and deletes nothing that has rows without a new
        tombstone, so rows never name a pack that a GC which ran since its upload deleted. Rows that
        exist (the same pack, or a blob already in another pack) are kept. Each blob's own
        ``pack_id`` is not read.
        """
        now = dt.datetime.now(dt.timezone.utc)
        with self._fenced() as conn:
            if conn.scalar(select(Tombstone.pack_id).where(Tombstone.pack_id == pack_id)):
                raise PackBeingDeleted(f"pack {pack_id[:16]} is being deleted by garbage collection")
            if not stored():
                raise PackBeingDeleted(f"pack {pack_id[:16]} is not on the backend (garbage collection deleted it)")
            conn.execute(
                self._insert_ignore(Pack, ["id"]),
                [{"id": pack_id, "size": size, "blob_count": len(blobs), "created_at": now,
                  "state": PackState.LIVE.value}],
            )
            self._insert_ignore_rows(conn, Blob, ["id"], _BLOB_COLUMNS, _blob_tuples(pack_id, blobs))

    def add_blob_rows(self, pack_id: str, blobs: Sequence[BlobLocationLike]) -> int:
        """Re-index blobs of a pack the index already knows (rows lost from a damaged or restored
        database), from the pack's trailer; rows that exist are kept. Returns how many were added."""
        added = 0
        with self._fenced() as conn:
            if not conn.scalar(select(Pack.id).where(Pack.id == pack_id)):
                return 0
            for start in range(0, len(blobs), LOOKUP_BATCH):
                result = conn.execute(
                    self._insert_ignore(Blob, ["id"]), _blob_values(pack_id, blobs[start : start + LOOKUP_BATCH])
                )
                added += int(result.rowcount or 0)
        return added

    def blobs_in_pack(self, pack_id: str) -> list[BlobRow]:
        """The rows naming ``pack_id``, in the order of their offsets."""
        with self._read() as conn:
            rows = conn.execute(select(Blob).where(Blob.pack_id == pack_id).order_by(Blob.offset))
            return [BlobRow(r.id, r.kind, r.pack_id, r.offset, r.length, r.raw_length, r.codec) for r in rows]

    def iter_blob_rows(self) -> Iterator[BlobRow]:
        """Every blob row, streamed (the table can be larger than memory)."""
        with self._read() as conn:
            result = conn.execution_options(stream_results=True, yield_per=10_000).execute(select(Blob))
            for r in result:
                yield BlobRow(r.id, r.kind, r.pack_id, r.offset, r.length, r.raw_length, r.codec)

    def pack_rows(self) -> list[PackRow]:
        """Every pack row, live and condemned."""
        with self._read() as conn:
            rows = conn.execute(select(Pack))
            return [
                PackRow(r.id, r.size, r.state, r.condemned_epoch, utc(r.created_at), utc(r.condemned_at))
                for r in rows
            ]


_BLOB_COLUMNS = ("id", "kind", "pack_id", "offset", "length", "raw_length", "codec")


def _blob_tuples(pack_id: str, blobs: Iterable[BlobLocationLike]) -> list[tuple[object, ...]]:
    """The rows of ``blobs`` in the order of :data:`_BLOB_COLUMNS`."""
    return [(b.id, int(b.kind), pack_id, b.offset, b.length, b.raw_length, int(b.codec)) for b in blobs]


def _blob_values(pack_id: str, blobs: Iterable[BlobLocationLike]) -> list[dict[str, object]]:
    return [
        {"id": b.id, "kind": b.kind, "pack_id": pack_id, "offset": b.offset, "length": b.length,
         "raw_length": b.raw_length, "codec": b.codec}
        for b in blobs
    ]
