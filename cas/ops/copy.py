"""Replication: copying executions from one repository to another, any backend to any backend.

For each execution, in the target's write order (docs/FORMAT.md):

1. every blob its snapshot references is listed by walking its trees in the source;
2. the target's *index* says which it already has (one query per batch; the target backend is
   never listed), and only the others are read from the source, verified against their IDs and
   written to the target in new packs (uploaded whole, then indexed), so chunk and tree IDs stay
   the same;
3. only once all of them are durable, the snapshot record (same execution ID, root, labels, time and
   stats) is claimed on the target and its row committed through the fenced commit of docs/GC.md.

An interrupted copy leaves at most packs no snapshot references yet (a later copy finds their blobs
in the index and does not send them again; ``gc`` frees them if nothing does). Running the copy
again is always safe: an execution already on the target with the same tree is left as it is.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from cas.errors import AlreadyExists, IntegrityError, NotFound, Unavailable
from cas.format.keys import pack_key
from cas.format.records import SnapshotRecord
from cas.ops.commit import commit, load_record, referenced_blobs
from cas.repo.blobwriter import BlobWriter
from cas.repo.reader import pack_runs
from cas.repo.repository import Repository, verify_blob
from cas.types import BlobLocation

log = logging.getLogger("cas")

#: Blobs asked about in one index query, and the most bytes read from the source in one range.
_QUERY_BATCH = 2000
COMMIT_ATTEMPTS = 3

ProgressFn = Callable[[str, int, int], None]
"""Called with (execution ID, blobs sent so far, raw bytes sent so far)."""


@dataclass
class CopyReport:
    copied: list[str] = field(default_factory=list)
    """Executions committed on the target by this copy."""
    present: list[str] = field(default_factory=list)
    """Executions the target already held with the same tree."""
    blobs_sent: int = 0
    bytes_sent: int = 0
    """Raw (uncompressed) bytes of the blobs sent."""
    blobs_skipped: int = 0
    """Referenced blobs the target already had."""

    def to_dict(self) -> dict[str, object]:
        return {"copied": self.copied, "present": self.present, "blobs_sent": self.blobs_sent,
                "bytes_sent": self.bytes_sent, "blobs_skipped": self.blobs_skipped}


def copy_executions(
    source: Repository, target: Repository, execution_ids: list[str], *, progress: ProgressFn | None = None
) -> CopyReport:
    """Copy each execution (in the order given) from ``source`` to ``target``.

    Raises :class:`AlreadyExists` if the target holds one of the IDs with a different tree (nothing
    of that execution is committed), :class:`IntegrityError` if the source cannot supply a blob
    intact, :class:`NotFound` for an unknown execution. Executions copied before the error stay.
    """
    report = CopyReport()
    for execution_id in execution_ids:
        record = load_record(source, execution_id)
        if _already_there(target, record):
            report.present.append(execution_id)
            continue
        blobs, broken = referenced_blobs(source, record.root)
        if broken:
            raise IntegrityError(f"execution {execution_id} cannot be copied, its trees are damaged: {broken[0]}")
        for attempt in range(COMMIT_ATTEMPTS):
            _send_missing(source, target, execution_id, blobs, report, progress)
            missing = commit(target, record, blobs)
            if not missing:
                break
            log.warning("garbage collection on the target removed %d blobs this copy needs; sending them "
                        "again (attempt %d)", len(missing), attempt + 2)
        else:
            raise Unavailable(f"copy of {execution_id} lost a race with garbage collection on the target; try again")
        report.copied.append(execution_id)
    return report


def _already_there(target: Repository, record: SnapshotRecord) -> bool:
    """Whether the target holds the execution (committed in its index) with the same tree."""
    row = target.index.snapshot(record.execution_id)
    root = row.root_tree if row is not None else None
    if root is None:
        try:
            root = load_record(target, record.execution_id).root
        except NotFound:
            return False
        # Claimed on the target's backend, not in its index: let commit() index it (it checks the root).
        if root == record.root:
            return False
    if root != record.root:
        raise AlreadyExists(
            f"execution {record.execution_id} exists in the target with a different tree; not copied"
        )
    return True


def _send_missing(
    source: Repository, target: Repository, execution_id: str, blobs: set[str], report: CopyReport,
    progress: ProgressFn | None,
) -> None:
    """Write to the target every blob of ``blobs`` its index lacks; durable when this returns."""
    ordered = sorted(blobs)
    with BlobWriter(target) as writer:
        for start in range(0, len(ordered), _QUERY_BATCH):
            batch = ordered[start : start + _QUERY_BATCH]
            known = target.index.known_blobs(batch)
            lacking = [b for b in batch if b not in known]
            report.blobs_skipped += len(batch) - len(lacking)
            if not lacking:
                continue
            locations = source.locate(lacking)
            absent = [b for b in lacking if b not in locations]
            if absent:
                raise IntegrityError(f"execution {execution_id}: blob {absent[0][:16]} is not stored in the source")
            for loc, data in _read_runs(source, [locations[b] for b in lacking]):
                writer.add(loc.id, loc.kind, data)
                report.blobs_sent += 1
                report.bytes_sent += len(data)
                if progress:
                    progress(execution_id, report.blobs_sent, report.bytes_sent)
        writer.flush()


def _read_runs(source: Repository, locations: list[BlobLocation]) -> Iterator[tuple[BlobLocation, bytes]]:
    """Each blob's verified raw bytes, read a stretch of a pack at a time (small gaps included)."""
    for run in pack_runs(locations):
        begin = run[0].offset
        try:
            data = source.backend.get(pack_key(run[0].pack_id), begin, run[-1].offset + run[-1].length - begin)
        except FileNotFoundError:
            raise IntegrityError(f"pack {run[0].pack_id[:16]} is missing from the source") from None
        for loc in run:
            yield loc, verify_blob(loc.id, loc, data[loc.offset - begin : loc.offset - begin + loc.length])
