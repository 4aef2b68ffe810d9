"""Checking a repository against its ground truth (pack trailers and snapshot objects), and repair.

``verify`` reports every problem with the executions and paths it affects; ``repair`` makes the
index consistent with what the backend really holds, without deleting any stored data: rows of lost
packs and corrupt blobs are dropped (so writers store those chunks again instead of reusing them),
snapshots that lost data are marked damaged, and missing snapshot objects or rows are recreated.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from cas.blobwriter import relocate_blobs
from cas.errors import CasError, IntegrityError
from cas.packs import FOOTER_SIZE, parse_footer, parse_trailer, split_pack, pack_key
from cas.records import SnapshotRecord, index_row, snapshot_key
from cas.repository import Repository
from cas.trees import DIR, FILE
from cas.compression import decode
from cas.hashing import hexdigest
from cas.walk import Root, snapshot_roots
from manifests.index import BlobLocation


@dataclass(frozen=True)
class Problem:
    execution_id: str
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.execution_id}:{self.path}" if self.path else self.execution_id or "repository"
        return f"{where}: {self.message}"


@dataclass
class VerifyReport:
    snapshots: int = 0
    packs: int = 0
    packs_read: int = 0
    blobs_checked: int = 0
    problems: list[Problem] = field(default_factory=list)
    missing_packs: set[str] = field(default_factory=set)
    corrupt_packs: set[str] = field(default_factory=set)
    corrupt_blobs: set[str] = field(default_factory=set)
    damaged: set[str] = field(default_factory=set)
    known_damage: list[Problem] = field(default_factory=list)
    """Problems inside snapshots already marked damaged by ``repair``: reported, not failures."""
    rows_without_objects: list[str] = field(default_factory=list)
    objects_without_rows: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, object]:
        return {
            "ok": self.ok, "snapshots": self.snapshots, "packs": self.packs, "packs_read": self.packs_read,
            "blobs_checked": self.blobs_checked,
            "problems": [{"execution_id": p.execution_id, "path": p.path, "message": p.message} for p in self.problems],
            "damaged_executions": sorted(self.damaged),
            "not_in_index": self.objects_without_rows,
            "known_damage": [{"execution_id": p.execution_id, "path": p.path, "message": p.message}
                             for p in self.known_damage],
        }


def verify(repo: Repository, *, read_data: bool = False, sample: float = 1.0, seed: int | None = None) -> VerifyReport:
    report = VerifyReport()
    index = repo.index
    index.check_intact()  # damage no query touches would otherwise pass unseen
    on_backend = {info.key.rsplit("/", 1)[-1]: info.size for info in repo.backend.list("data/")}
    indexed_packs = {p.id: p for p in index.pack_rows()}
    report.packs = len(on_backend)
    for pack_id, row in indexed_packs.items():
        if pack_id not in on_backend:
            report.missing_packs.add(pack_id)
            report.problems.append(Problem("", "", f"pack {pack_id[:16]} is in the index but not on the backend"))
        elif on_backend[pack_id] != row.size:  # truncated or grown: damaged, found without reading it
            size = on_backend[pack_id]
            report.corrupt_packs.add(pack_id)
            report.corrupt_blobs.update(b.id for b in index.blobs_in_pack(pack_id) if b.offset + b.length > size)
            report.problems.append(Problem("", "", f"pack {pack_id[:16]} is {size} bytes on the backend but "
                                                   f"{row.size} in the index (truncated or damaged)"))

    if read_data:
        chosen = sorted(on_backend)
        if sample < 1.0:
            rng = random.Random(seed)
            chosen = [p for p in chosen if rng.random() < sample]
        for pack_id in chosen:
            _read_pack(repo, pack_id, report)

    roots, unreadable = snapshot_roots(repo)
    for execution_id, message in unreadable:
        report.problems.append(Problem(execution_id, "", f"snapshot record unreadable: {message}"))
        report.damaged.add(execution_id)
    report.snapshots = len(roots)
    for root in roots:
        if not root.on_backend:
            report.rows_without_objects.append(root.execution_id)
            report.problems.append(Problem(root.execution_id, "", "snapshot object is missing from the backend"))
        if not root.in_index:
            # Normal after a writer died between claiming its ID and indexing it, or when another
            # host's index holds it: its contents are checked below like any other snapshot.
            report.objects_without_rows.append(root.execution_id)
        _check_snapshot(repo, root, report)
    return report


def _read_pack(repo: Repository, pack_id: str, report: VerifyReport) -> None:
    try:
        data = repo.backend.get(pack_key(pack_id))
    except CasError as exc:
        report.problems.append(Problem("", "", f"pack {pack_id[:16]} cannot be read: {exc}"))
        report.missing_packs.add(pack_id)
        return
    report.packs_read += 1
    indexed = repo.index.blobs_in_pack(pack_id)
    # A corrupt pack that no index row uses any more (repair moved its good blobs) is garbage
    # waiting for gc, not a problem.
    sink = report.problems if indexed else report.known_damage
    if hexdigest(data) != pack_id:
        report.corrupt_packs.add(pack_id)
        sink.append(Problem("", "", f"pack {pack_id[:16]} does not match its name (corrupt)"))
    try:
        entries = split_pack(data)
    except CasError as exc:
        report.corrupt_packs.add(pack_id)
        sink.append(Problem("", "", f"pack {pack_id[:16]}: {exc}"))
        entries = []
    # Check the blobs the index says are here at the places it says, which is what restore reads.
    for loc in indexed:
        report.blobs_checked += 1
        try:
            raw = decode(loc.codec, data[loc.offset : loc.offset + loc.length], loc.raw_length)
            ok = hexdigest(raw) == loc.id
        except CasError:
            ok = False
        if not ok:
            report.corrupt_blobs.add(loc.id)
            report.corrupt_packs.add(pack_id)
    del entries


def _check_snapshot(repo: Repository, root: Root, report: VerifyReport) -> None:
    """Walk one snapshot's trees; every blob must have a row whose pack exists and is not corrupt."""
    bad = report.missing_packs
    sink = report.known_damage if root.damaged else report.problems

    def blob_problem(blob_id: str, loc: BlobLocation | None) -> str | None:
        if loc is None:
            return f"blob {blob_id[:16]} is not in the index"
        if loc.pack_id in bad:
            return f"blob {blob_id[:16]} is in missing pack {loc.pack_id[:16]}"
        if blob_id in report.corrupt_blobs:
            return f"blob {blob_id[:16]} is corrupt"
        return None

    stack = [(root.tree, "")]
    while stack:
        tree, prefix = stack.pop()
        loc = repo.index.locate([tree]).get(tree)
        issue = blob_problem(tree, loc)
        if issue is None:
            try:
                entries = repo.read_tree(tree, loc)
            except CasError as exc:
                issue = str(exc)
        if issue is not None:
            sink.append(Problem(root.execution_id, prefix or "/", f"directory unreadable: {issue}"))
            report.damaged.add(root.execution_id)
            continue
        chunk_ids = [c for e in entries if e.type == FILE for c in e.chunks]
        locations = repo.index.locate(chunk_ids)
        for entry in entries:
            path = prefix + entry.name
            if entry.type == DIR:
                stack.append((entry.tree, path + "/"))
            elif entry.type == FILE:
                for chunk in entry.chunks:
                    issue = blob_problem(chunk, locations.get(chunk))
                    if issue:
                        sink.append(Problem(root.execution_id, path, issue))
                        report.damaged.add(root.execution_id)
                        break


@dataclass
class RepairReport:
    rows_dropped: int = 0
    salvaged_blobs: int = 0
    snapshots_marked_damaged: list[str] = field(default_factory=list)
    objects_rewritten: list[str] = field(default_factory=list)
    rows_added: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return {
            "rows_dropped": self.rows_dropped, "salvaged_blobs": self.salvaged_blobs,
            "snapshots_marked_damaged": self.snapshots_marked_damaged,
            "objects_rewritten": self.objects_rewritten, "rows_added": self.rows_added,
        }


def repair(repo: Repository, report: VerifyReport) -> RepairReport:
    """Act on what :func:`verify` found. Never deletes a pack or a snapshot object."""
    out = RepairReport()
    index = repo.index
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
            execution_id, row.root_tree, int(row.stats.get("root_mode", 0o755)),
            int(row.stats.get("root_mtime_ns", row.time_ns)), row.time_ns, labels=row.labels,
            stats={k: v for k, v in row.stats.items() if k not in ("root_mode", "root_mtime_ns")},
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
            index.add_snapshot(index_row(record))
            out.rows_added.append(execution_id)
        except CasError:
            continue
    for execution_id in sorted(report.damaged):
        if index.snapshot(execution_id) is not None:
            index.mark_damaged(execution_id)
            out.snapshots_marked_damaged.append(execution_id)
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


@dataclass
class RebuildReport:
    packs: int = 0
    blobs: int = 0
    snapshots: int = 0
    skipped: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return {"packs": self.packs, "blobs": self.blobs, "snapshots": self.snapshots, "skipped": self.skipped}


def rebuild_index(repo: Repository, *, full: bool = False) -> RebuildReport:
    """Fill the index from the backend alone: pack trailers and snapshot objects.

    Without ``full``, only what the index lacks is read (a sync: how a host with its own index
    learns what other hosts stored). With ``full``, the index is emptied first.
    """
    out = RebuildReport()
    index = repo.index
    if full:
        index.reset()
    known_packs = {p.id for p in index.pack_rows()}
    tombstoned = set(index.tombstones())
    for info in repo.backend.list("data/"):
        pack_id = info.key.rsplit("/", 1)[-1]
        if pack_id in known_packs or pack_id in tombstoned:
            continue
        try:
            entries = read_trailer(repo, pack_id, info.size)
        except CasError as exc:
            out.skipped.append(f"pack {pack_id[:16]}: {exc}")
            continue
        rows = [BlobLocation(e.id, e.kind, pack_id, e.offset, e.length, e.raw_length, e.codec) for e in entries]
        index.add_pack(pack_id, info.size, rows)
        out.packs += 1
        out.blobs += len(rows)
    known_snapshots = {r.execution_id for r in index.snapshots()}
    roots, unreadable = snapshot_roots(repo)
    out.skipped.extend(f"snapshot {eid}: {msg}" for eid, msg in unreadable)
    for root in roots:
        if root.execution_id in known_snapshots:
            continue
        try:
            record = SnapshotRecord.from_json(repo.backend.get(snapshot_key(root.execution_id)))
            if record.execution_id != root.execution_id:
                raise IntegrityError(f"the record names execution {record.execution_id}")
            index.add_snapshot(index_row(record))
            out.snapshots += 1
        except CasError as exc:
            out.skipped.append(f"snapshot {root.execution_id}: {exc}")
    return out


def read_trailer(repo: Repository, pack_id: str, size: int) -> list:  # type: ignore[type-arg]
    """A pack's entries from two ranged reads (footer, then trailer), without reading its data."""
    if size < FOOTER_SIZE:
        raise IntegrityError("pack is too short to hold a footer")
    trailer_len = parse_footer(repo.backend.get(pack_key(pack_id), size - FOOTER_SIZE, FOOTER_SIZE))
    data_size = size - FOOTER_SIZE - trailer_len
    if data_size < 0:
        raise IntegrityError("pack trailer is longer than the pack")
    trailer = repo.backend.get(pack_key(pack_id), data_size, trailer_len)
    return parse_trailer(trailer, data_size)
