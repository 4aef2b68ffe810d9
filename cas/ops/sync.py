"""Filling the index from the backend, its ground truth: sync (what the index lacks) and rebuild.

Every snapshot row enters the index through :meth:`Index.commit_snapshot`, fenced against garbage
collection and checking that every blob the snapshot references has a row (rescuing condemned packs
that hold them), exactly as a writer's own commit does. So a sync that runs while a writer is between
claiming its execution ID and committing its row cannot commit that row in a way GC does not see,
and a sync that races ``forget`` cannot bring a forgotten snapshot back: the object's presence is
re-checked inside the same transaction.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import partial

from cas.errors import CasError, IntegrityError, NotFound
from cas.format.records import SnapshotRecord, snapshot_key
from cas.ops.commit import commit_record
from cas.ops.roots import snapshot_roots
from cas.ops.tree_index import fill_tree_index
from cas.repo.repository import Repository
from cas.types import BlobLocation
from manifests.errors import PackBeingDeleted

log = logging.getLogger("cas")


@dataclass
class RebuildReport:
    packs: int = 0
    blobs: int = 0
    snapshots: int = 0
    trees_indexed: int = 0
    """Snapshots whose tree entries were filled (docs/INDEX.md, "tree_entries")."""
    damaged: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return {"packs": self.packs, "blobs": self.blobs, "snapshots": self.snapshots,
                "trees_indexed": self.trees_indexed, "damaged": self.damaged, "skipped": self.skipped}


def index_packs(repo: Repository, report: RebuildReport) -> None:
    """Add rows for the packs on the backend that the index does not know (from their trailers)."""
    index = repo.index
    known = {p.id for p in index.pack_rows()}
    tombstoned = set(index.tombstones())
    for pack_id, size in repo.list_packs().items():
        if pack_id in known or pack_id in tombstoned:
            continue
        try:
            entries = repo.read_trailer(pack_id, size)
        except CasError as exc:
            report.skipped.append(f"pack {pack_id[:16]}: {exc}")
            continue
        rows = [BlobLocation(e.id, e.kind, pack_id, e.offset, e.length, e.raw_length, e.codec) for e in entries]
        try:
            index.add_pack(pack_id, size, rows, stored=partial(repo.pack_stored, pack_id))
        except PackBeingDeleted:
            continue  # garbage collection deleted it since it was listed
        report.packs += 1
        report.blobs += len(rows)


def reindex_blobs(repo: Repository, wanted: set[str], *, write: bool = True) -> dict[str, str]:
    """Find ``wanted`` blobs that have no row in the packs' trailers (each read back and checked
    against its ID); add their rows (to packs the index knows, or as new packs) unless ``write`` is
    False. Returns blob -> pack for those found intact.

    This is what stands between a damaged or restored-from-backup index and a GC that would judge
    intact packs unreachable because their rows are gone.
    """
    found = repo.find_in_trailers(sorted(wanted))
    if not write:
        return {b: loc.pack_id for b, loc in found.items()}
    index = repo.index
    known = {p.id for p in index.pack_rows()}
    by_pack: dict[str, list[BlobLocation]] = {}
    for loc in found.values():
        by_pack.setdefault(loc.pack_id, []).append(loc)
    sizes = repo.list_packs() if set(by_pack) - known else {}
    gone: set[str] = set()
    for pack_id, rows in by_pack.items():
        if pack_id in known:
            index.add_blob_rows(pack_id, rows)
            continue
        try:
            index.add_pack(pack_id, sizes.get(pack_id, 0), rows,
                           stored=partial(repo.pack_stored, pack_id))
        except PackBeingDeleted:
            gone.add(pack_id)  # garbage collection deleted it since its trailer was read
    return {b: loc.pack_id for b, loc in found.items() if loc.pack_id not in gone}


def rebuild_index(repo: Repository, *, full: bool = False) -> RebuildReport:
    """Fill the index from the backend alone: pack trailers and snapshot objects.

    Without ``full``, only what the index lacks is read (a sync: how a host with its own index
    learns what other hosts stored). With ``full``, the index is emptied and bound to this backend.
    """
    out = RebuildReport()
    index = repo.index
    if full:
        index.reset()
        index.bind(repo.config.repo_id, repo.location())
    index_packs(repo, out)
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
            if commit_record(repo, record):
                out.snapshots += 1
                row = index.snapshot(record.execution_id)
                if row is not None and row.damaged:
                    out.damaged.append(record.execution_id)
                if row is not None and row.trees_indexed:
                    out.trees_indexed += 1
        except NotFound:
            continue  # forgotten between the listing and the read
        except CasError as exc:
            out.skipped.append(f"snapshot {root.execution_id}: {exc}")
    # Rows whose tree entries are missing: written before migration 0005, or left by an earlier failure.
    out.trees_indexed += fill_tree_index(repo)[0]
    return out


__all__ = ["RebuildReport", "rebuild_index", "reindex_blobs"]
