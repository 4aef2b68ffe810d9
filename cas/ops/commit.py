"""The one way a snapshot row enters an index: :meth:`Index.commit_snapshot`, fenced against garbage
collection, with every blob the snapshot references (docs/GC.md). A writer's commit, a sync, a
rebuild and a repair all come through here.
"""

from __future__ import annotations

from cas.format.records import SnapshotRecord, snapshot_key
from cas.ops.roots import collect_blobs
from cas.ops.tree_index import TreeRowSpool, index_snapshot_trees
from cas.repo.repository import Repository
from manifests.errors import SnapshotWithdrawn
from manifests.rows import SnapshotRow


def snapshot_row(record: SnapshotRecord, damaged: bool = False) -> SnapshotRow:
    """The index row of a snapshot record."""
    return SnapshotRow(
        execution_id=record.execution_id,
        root_tree=record.root,
        time_ns=record.time_ns,
        labels=record.labels,
        stats=dict(record.stats),
        root_mode=record.root_mode,
        root_mtime_ns=record.root_mtime_ns,
        logical_bytes=record.stats.get("logical_bytes", 0),
        new_bytes=record.stats.get("new_bytes", 0),
        stored_bytes=record.stats.get("stored_bytes", 0),
        damaged=damaged,
    )


def commit_with_blobs(
    repo: Repository, record: SnapshotRecord, referenced: set[str], spool: TreeRowSpool | None = None
) -> set[str]:
    """A writer's commit: the row if every referenced blob still has one (rescuing condemned packs);
    else the blobs GC removed meanwhile, and nothing is inserted. A row a sync already inserted for
    this record is success, and the rescue commits either way. With ``spool`` (what the tree builder
    encoded), the tree entries the index lacks go in with the row."""
    if spool is None:
        return repo.index.commit_snapshot(snapshot_row(record), referenced)
    spool.finish()
    return repo.index.commit_snapshot(
        snapshot_row(record), referenced, trees=spool.trees(), assumed_trees=spool.assumed
    )


def referenced_blobs(repo: Repository, root_tree: str) -> tuple[set[str], list[str]]:
    """Every blob one snapshot references, and ``"path: error"`` for each tree that could not be read."""
    blobs: set[str] = set()
    broken = collect_blobs(repo, root_tree, blobs, set())
    return blobs, broken


def commit_record(repo: Repository, record: SnapshotRecord) -> bool:
    """Index a snapshot object found on the backend; True if its row is in the index afterwards.

    The row is committed through the writer's fenced commit with every blob the snapshot references;
    if some are stored nowhere (or a tree is unreadable) the row goes in marked damaged, so ``verify``
    and ``repair`` name it. Returns False if the object was removed meanwhile (forgotten).
    """
    blobs, broken = referenced_blobs(repo, record.root)
    key = snapshot_key(record.execution_id)
    try:
        missing = repo.index.commit_snapshot(
            snapshot_row(record), blobs, damaged_if_missing=True, still_claimed=lambda: repo.backend.exists(key)
        )
    except SnapshotWithdrawn:
        return False
    if broken and not missing:
        repo.index.mark_damaged(record.execution_id)
    if not broken:
        index_snapshot_trees(repo, record.execution_id, record.root)
    return True
