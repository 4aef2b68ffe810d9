"""A snapshot record into and out of a repository: claimed on the backend and its row committed
(:func:`commit`), read back (:func:`load_record`), forgotten (:func:`forget`).

A row enters an index one way: :meth:`Index.commit_snapshot`, fenced against garbage collection,
with every blob the snapshot references (docs/GC.md). A writer's commit, a copy's, a sync, a
rebuild and a repair all come through here.
"""

from __future__ import annotations

import logging

from cas.errors import AlreadyExists, CasError, IntegrityError, NotFound
from cas.format.records import SnapshotRecord, snapshot_key
from cas.ops.roots import collect_blobs
from cas.ops.tree_index import TreeRowSpool, index_snapshot_trees
from cas.repo.repository import Repository
from manifests.errors import SnapshotWithdrawn
from manifests.rows import SnapshotRow

log = logging.getLogger("cas")


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


def commit(
    repo: Repository, record: SnapshotRecord, referenced: set[str], spool: TreeRowSpool | None = None
) -> set[str]:
    """Steps 4-5 of the write order: claim the execution ID on the backend, then insert the row
    under the GC fence (with the tree entries the index lacks, from ``spool``).

    Returns the referenced blobs GC deleted meanwhile (then nothing is committed and the snapshot
    object is withdrawn), or an empty set.
    """
    key = snapshot_key(record.execution_id)
    try:
        repo.backend.put(key, record.to_json(), overwrite=False)
    except AlreadyExists:
        existing = load_record(repo, record.execution_id)
        if existing.root != record.root:
            raise AlreadyExists(
                f"execution ID {record.execution_id} already holds a different tree; choose a new ID"
            ) from None
        # Ours from an earlier attempt, or another writer's with the same tree: commit it (again)
        # through the fenced check, which also rescues any condemned pack it uses.
        return commit_with_blobs(repo, existing, referenced, spool)
    try:
        missing = commit_with_blobs(repo, record, referenced, spool)
    except BaseException:
        # The row did not go in; withdraw the claim so the ID is not left half-taken.
        _withdraw(repo, key)
        raise
    if missing:
        _withdraw(repo, key)
    return missing


def load_record(repo: Repository, execution_id: str) -> SnapshotRecord:
    """The snapshot record on the backend; NotFound if there is none."""
    try:
        data = repo.backend.get(snapshot_key(execution_id))
    except FileNotFoundError:
        raise NotFound(f"unknown execution ID: {execution_id}") from None
    record = SnapshotRecord.from_json(data)
    if record.execution_id != execution_id:
        raise IntegrityError(f"snapshot object for {execution_id} names {record.execution_id}")
    return record


def forget(repo: Repository, execution_ids: list[str]) -> list[str]:
    """Remove snapshots: their objects, then their index rows. Their data goes at the next ``gc``.

    The object goes first: a sync that runs meanwhile re-checks, inside its fenced commit, that the
    object still exists, so it cannot bring the row back (docs/GC.md).
    """
    forgotten = []
    for execution_id in execution_ids:
        try:
            repo.backend.delete(snapshot_key(execution_id))
        except FileNotFoundError:
            pass
        repo.index.remove_snapshot(execution_id)
        forgotten.append(execution_id)
    return forgotten


def _withdraw(repo: Repository, key: str) -> None:
    try:
        repo.backend.delete(key)
    except CasError as exc:
        log.warning("could not withdraw %s after a failed commit: %s", key, exc)
