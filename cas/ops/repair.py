"""Repair: make the index consistent with what the backend really holds, after :func:`verify`.

Never deletes stored data. Rows a damaged index lost are re-read from pack trailers; rows of lost
packs and corrupt blobs are dropped (so writers store those chunks again instead of reusing them);
the intact blobs of a corrupt pack are copied to new packs; snapshots that lost data are marked
damaged, and the mark is cleared once their data is stored again; missing snapshot objects are
rewritten from their rows and objects without rows are indexed (through the fenced commit).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cas.errors import CasError
from cas.format.records import SnapshotRecord, snapshot_key
from cas.ops.commit import commit_record
from cas.ops.sync import reindex_blobs
from cas.ops.verify import VerifyReport
from cas.repo.blobwriter import relocate_blobs
from cas.repo.repository import Repository


@dataclass
class RepairReport:
    rows_reindexed: int = 0
    rows_dropped: int = 0
    salvaged_blobs: int = 0
    snapshots_marked_damaged: list[str] = field(default_factory=list)
    objects_rewritten: list[str] = field(default_factory=list)
    rows_added: list[str] = field(default_factory=list)
    damage_cleared: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return {
            "rows_reindexed": self.rows_reindexed, "damage_cleared": self.damage_cleared,
            "rows_dropped": self.rows_dropped, "salvaged_blobs": self.salvaged_blobs,
            "snapshots_marked_damaged": self.snapshots_marked_damaged,
            "objects_rewritten": self.objects_rewritten, "rows_added": self.rows_added,
        }


def repair(repo: Repository, report: VerifyReport) -> RepairReport:
    """Act on what :func:`verify` found. Never deletes a pack or a snapshot object."""
    out = RepairReport()
    index = repo.index
    if report.unindexed_blobs:
        out.rows_reindexed = len(reindex_blobs(repo, set(report.unindexed_blobs)))
    for pack_id in sorted(report.corrupt_packs - report.missing_packs):
        out.salvaged_blobs += _salvage(repo, pack_id, report.corrupt_blobs)
    if report.missing_packs:
        out.rows_dropped += index.forget_blobs_in_packs(sorted(report.missing_packs))
    if report.corrupt_blobs:
        out.rows_dropped += index.forget_blobs(sorted(report.corrupt_blobs))
    for execution_id in report.rows_without_objects:
        row = index.snapshot(execution_id)
        if row is None:
            continue
        record = SnapshotRecord(
            execution_id, row.root_tree, row.root_mode, row.root_mtime_ns, row.time_ns, labels=row.labels,
            stats=dict(row.stats),
        )
        try:
            repo.backend.put(snapshot_key(execution_id), record.to_json(), overwrite=False)
            out.objects_rewritten.append(execution_id)
        except CasError:
            pass
    for execution_id in report.objects_without_rows:
        try:
            record = SnapshotRecord.from_json(repo.backend.get(snapshot_key(execution_id)))
            if record.execution_id != execution_id:
                continue
            if commit_record(repo, record):
                out.rows_added.append(execution_id)
        except CasError:
            continue
    for execution_id in sorted(report.damaged):
        if index.snapshot(execution_id) is not None:
            index.mark_damaged(execution_id)
            out.snapshots_marked_damaged.append(execution_id)
    for execution_id in report.stale_damage:
        index.mark_damaged(execution_id, False)
        out.damage_cleared.append(execution_id)
    return out


def _salvage(repo: Repository, pack_id: str, corrupt: set[str]) -> int:
    """Move the intact blobs of a damaged pack to new packs and drop the rest of its rows.

    The damaged pack then has no rows and garbage collection removes it; the intact blobs it held
    are not lost with it.
    """
    rows = [loc for loc in repo.index.blobs_in_pack(pack_id) if loc.id not in corrupt]
    try:
        copied, unreadable = relocate_blobs(repo, pack_id, rows)
    except CasError:
        return 0
    corrupt.update(unreadable)
    repo.index.forget_blobs_in_packs([pack_id])
    return len(copied)
