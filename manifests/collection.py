"""The index's side of garbage collection (docs/GC.md): epochs, pack states, tombstones, repacking.

Every write here is fenced, so it is ordered against writers' pack inserts and snapshot commits;
so is the deletion of a tombstoned pack's object (:meth:`GcIndex.delete_tombstoned`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence

from sqlalchemy import delete as delete_stmt  # gc_apply has a parameter named ``delete``
from sqlalchemy import select, update
from sqlalchemy.sql.dml import Update

from manifests.connection import IndexConnection, batches
from manifests.models import Blob, Fence, Pack, Tombstone
from manifests.rows import BlobLocationLike, GcDecision, PackState

_LIVE = PackState.LIVE.value
_CONDEMNED = PackState.CONDEMNED.value


def rescue_condemned(pack_ids: Sequence[str]) -> Update:
    """The statement making the condemned packs among ``pack_ids`` live again (a GC verdict, and
    every snapshot commit for the packs its blobs are in)."""
    return (
        update(Pack)
        .where(Pack.id.in_(pack_ids), Pack.state == _CONDEMNED)
        .values(state=_LIVE, condemned_epoch=None, condemned_at=None)
    )


class GcIndex(IndexConnection):
    """The part of :class:`~manifests.index.Index` that garbage collection and repacking use."""

    def next_epoch(self) -> int:
        """Start a GC run: a new epoch, committed before the run reads anything."""
        with self._fenced() as conn:
            conn.execute(update(Fence).where(Fence.id == 1).values(epoch=Fence.epoch + 1))
            return int(conn.scalar(select(Fence.epoch).where(Fence.id == 1)))

    def adopt_orphans(self, pack_sizes: dict[str, int], epoch: int) -> int:
        """Record packs found on the backend but not in the index as condemned, for a later run.

        They are stamped with the fence's epoch at commit (``epoch`` is not used), so only a run
        that starts after this one can tombstone them. Returns how many were new to the index.
        """
        if not pack_sizes:
            return 0
        now = dt.datetime.now(dt.timezone.utc)
        with self._fenced() as conn:
            stamp = int(conn.scalar(select(Fence.epoch).where(Fence.id == 1)))
            # RETURNING, not rowcount: psycopg reports -1 for an executemany.
            inserted = conn.execute(
                self._insert_ignore(Pack, ["id"]).returning(Pack.id),
                [
                    {"id": pid, "size": size, "blob_count": 0, "created_at": now, "state": _CONDEMNED,
                     "condemned_epoch": stamp, "condemned_at": now}
                    for pid, size in pack_sizes.items()
                ],
            ).all()
        return len(inserted)

    def gc_apply(
        self,
        epoch: int,
        *,
        condemn: Sequence[str],
        rescue: Sequence[str],
        delete: Sequence[str],
        grace: dt.timedelta,
    ) -> GcDecision:
        """Apply one GC run's verdicts in one fenced transaction, re-checking each against the rows.

        * ``rescue``: condemned packs that hold reachable blobs become live again.
        * ``delete``: packs to tombstone; only those still condemned, stamped with an epoch below
          ``epoch`` (so this run's mark began after the condemnation committed) and condemned
          longer ago than ``grace``. Their blob and pack rows are removed and a tombstone is written.
        * ``condemn``: live packs with nothing reachable, older than ``grace``.
        """
        now = dt.datetime.now(dt.timezone.utc)
        cutoff = now - grace
        tombstoned: list[str] = []
        condemned: list[str] = []
        rescued: list[str] = []
        with self._fenced() as conn:
            for batch in batches(rescue):
                rescued.extend(conn.execute(rescue_condemned(batch).returning(Pack.id)).scalars())
            for batch in batches(delete):
                chosen = list(conn.scalars(select(Pack.id).where(
                    Pack.id.in_(batch), Pack.state == _CONDEMNED, Pack.condemned_epoch < epoch,
                    Pack.condemned_at <= cutoff,
                )))
                if not chosen:
                    continue
                conn.execute(self._insert_ignore(Tombstone, ["pack_id"]),
                             [{"pack_id": pid, "created_at": now} for pid in chosen])
                conn.execute(delete_stmt(Blob).where(Blob.pack_id.in_(chosen)))
                conn.execute(delete_stmt(Pack).where(Pack.id.in_(chosen)))
                tombstoned.extend(chosen)
            # Stamp condemnations with the fence's epoch *now*, not this run's: a run that started
            # before this commit has a smaller epoch and so can never tombstone these packs.
            stamp = int(conn.scalar(select(Fence.epoch).where(Fence.id == 1)))
            for batch in batches(condemn):
                rows = conn.execute(
                    update(Pack).where(Pack.id.in_(batch), Pack.state == _LIVE, Pack.created_at <= cutoff)
                    .values(state=_CONDEMNED, condemned_epoch=stamp, condemned_at=now).returning(Pack.id)
                )
                condemned.extend(rows.scalars())
        return GcDecision(tombstoned, condemned, rescued)

    def tombstones(self) -> list[str]:
        """Packs GC decided to delete whose objects may still be on the backend."""
        with self._read() as conn:
            return list(conn.scalars(select(Tombstone.pack_id)))

    def is_tombstoned(self, pack_id: str) -> bool:
        with self._read() as conn:
            return conn.scalar(select(Tombstone.pack_id).where(Tombstone.pack_id == pack_id)) is not None

    def delete_tombstoned(self, pack_id: str, remove: Callable[[], None]) -> bool:
        """Delete a tombstoned pack's object and clear its tombstone, in one fenced transaction.

        ``remove()`` deletes the object from the backend. It runs only while the tombstone is there
        and under the fence, and a writer's :meth:`add_pack` checks under the same fence that no
        tombstone is left and that the object is stored: so no writer's upload of that name falls
        between the delete and the clear, and a run that read the tombstone before another run
        deleted the object and cleared it deletes nothing (returns False). An error from
        ``remove()`` leaves the tombstone for the next run.
        """
        with self._fenced() as conn:
            if conn.scalar(select(Tombstone.pack_id).where(Tombstone.pack_id == pack_id)) is None:
                return False
            remove()
            conn.execute(delete_stmt(Tombstone).where(Tombstone.pack_id == pack_id))
            return True

    def move_blobs(self, moves: Sequence[BlobLocationLike], from_packs: dict[str, str]) -> int:
        """Point blobs at their repacked copies, where they still point at the pack they were read from
        (``from_packs[id]``). Returns how many rows moved."""
        moved = 0
        with self._fenced() as conn:
            for loc in moves:
                result = conn.execute(
                    update(Blob).where(Blob.id == loc.id, Blob.pack_id == from_packs[loc.id]).values(
                        pack_id=loc.pack_id, offset=loc.offset, length=loc.length,
                        raw_length=loc.raw_length, codec=loc.codec,
                    )
                )
                moved += result.rowcount or 0
        return moved

