"""Checking a repository against its ground truth (pack trailers and snapshot objects).

``verify`` reports every problem with the executions and paths it affects, and writes nothing;
:mod:`cas.ops.repair` acts on its report.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from cas.errors import CasError, IntegrityError
from cas.format.compression import decode
from cas.format.hashing import hexdigest
from cas.format.keys import pack_key
from cas.format.packs import split_pack
from cas.format.trees import DIR, FILE
from cas.ops.roots import Root, snapshot_roots
from cas.repo.repository import Repository
from cas.types import BlobLocation


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
    """Problems inside snapshots already marked damaged by ``repair``: failures too (they cannot be
    restored whole), listed apart so a report shows what is new."""
    notes: list[Problem] = field(default_factory=list)
    """Not failures: a corrupt pack no index row uses (garbage for ``gc``)."""
    unindexed_blobs: dict[str, str] = field(default_factory=dict)
    """Blobs a snapshot references that have no index row but are in a pack's trailer (blob -> pack):
    the index lost rows; ``repair`` re-indexes them."""
    stale_damage: list[str] = field(default_factory=list)
    """Snapshots marked damaged that check intact now (their data was stored again); ``repair`` clears
    the mark."""
    rows_without_objects: list[str] = field(default_factory=list)
    objects_without_rows: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems and not self.known_damage

    def to_dict(self) -> dict[str, object]:
        return {
            "ok": self.ok, "snapshots": self.snapshots, "packs": self.packs, "packs_read": self.packs_read,
            "blobs_checked": self.blobs_checked,
            "problems": [{"execution_id": p.execution_id, "path": p.path, "message": p.message} for p in self.problems],
            "damaged_executions": sorted(self.damaged),
            "not_in_index": self.objects_without_rows,
            "known_damage": [{"execution_id": p.execution_id, "path": p.path, "message": p.message}
                             for p in self.known_damage],
            "notes": [str(p) for p in self.notes],
            "unindexed_blobs": len(self.unindexed_blobs),
            "stale_damage": self.stale_damage,
        }


def verify(repo: Repository, *, read_data: bool = False, sample: float = 1.0, seed: int | None = None) -> VerifyReport:
    report = VerifyReport()
    index = repo.index
    index.check_intact()  # damage no query touches would otherwise pass unseen
    on_backend = repo.list_packs()
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
    except IntegrityError as exc:
        _read_pack_by_blob(repo, pack_id, report, exc)
        return
    except CasError as exc:
        report.problems.append(Problem("", "", f"pack {pack_id[:16]} cannot be read: {exc}"))
        report.missing_packs.add(pack_id)
        return
    report.packs_read += 1
    indexed = repo.index.blobs_in_pack(pack_id)
    # A corrupt pack that no index row uses any more (repair moved its good blobs) is garbage
    # waiting for gc, not a problem.
    sink = report.problems if indexed else report.notes
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


def _read_pack_by_blob(repo: Repository, pack_id: str, report: VerifyReport, exc: IntegrityError) -> None:
    """An encrypted pack that failed authentication as a whole (docs/SECURITY.md): it is corrupt,
    and its indexed blobs are judged one by one, each by the segments its range lies in."""
    report.packs_read += 1
    indexed = repo.index.blobs_in_pack(pack_id)
    sink = report.problems if indexed else report.notes
    report.corrupt_packs.add(pack_id)
    sink.append(Problem("", "", f"pack {pack_id[:16]}: {exc}"))
    for loc in indexed:
        report.blobs_checked += 1
        try:
            repo.read_blob(loc.id, loc)
        except CasError:
            report.corrupt_blobs.add(loc.id)


def _check_snapshot(repo: Repository, root: Root, report: VerifyReport) -> None:
    """Walk one snapshot's trees; every blob must have a row whose pack exists and is not corrupt.

    A blob without a row is looked up in the packs' trailers before it counts as lost: an index that
    lost rows (a restored backup) is an index problem that ``repair`` fixes, not a damaged snapshot.
    """
    bad = report.missing_packs
    sink = report.known_damage if root.damaged else report.problems
    found_before = len(sink)

    def locate(blob_ids: list[str]) -> dict[str, BlobLocation]:
        located = repo.index.locate(blob_ids)
        lacking = [b for b in blob_ids if b not in located]
        if lacking:
            for blob_id, loc in repo.find_in_trailers(lacking).items():
                located[blob_id] = loc
                if blob_id not in report.unindexed_blobs:
                    report.unindexed_blobs[blob_id] = loc.pack_id
                    report.problems.append(Problem(
                        root.execution_id, "", f"blob {blob_id[:16]} has no index row (it is in pack "
                        f"{loc.pack_id[:16]}; 'cas repair' re-indexes it)"))
        return located

    def blob_problem(blob_id: str, loc: BlobLocation | None) -> str | None:
        if loc is None:
            return f"blob {blob_id[:16]} is in no index row and no pack"
        if loc.pack_id in bad:
            return f"blob {blob_id[:16]} is in missing pack {loc.pack_id[:16]}"
        if blob_id in report.corrupt_blobs:
            return f"blob {blob_id[:16]} is corrupt"
        return None

    damaged = False
    stack = [(root.tree, "")]
    while stack:
        tree, prefix = stack.pop()
        loc = locate([tree]).get(tree)
        issue = blob_problem(tree, loc)
        if issue is None:
            try:
                entries, parts = repo.read_directory(tree, loc)
            except CasError as exc:
                issue = str(exc)
            else:
                part_locations = locate(list(parts))
                issue = next(filter(None, (blob_problem(p, part_locations.get(p)) for p in parts)), None)
        if issue is not None:
            sink.append(Problem(root.execution_id, prefix or "/", f"directory unreadable: {issue}"))
            damaged = True
            continue
        chunk_ids = [c for e in entries if e.type == FILE for c in e.chunks]
        locations = locate(chunk_ids)
        for entry in entries:
            path = prefix + entry.name
            if entry.type == DIR:
                stack.append((entry.tree, path + "/"))
            elif entry.type == FILE:
                for chunk in entry.chunks:
                    issue = blob_problem(chunk, locations.get(chunk))
                    if issue:
                        sink.append(Problem(root.execution_id, path, issue))
                        damaged = True
                        break
    if damaged:
        report.damaged.add(root.execution_id)
    elif root.damaged and len(sink) == found_before:
        report.stale_damage.append(root.execution_id)
