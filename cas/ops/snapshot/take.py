"""Taking a snapshot: store a tree (steps 1-3 of the write order), then commit it (steps 4-5).

Write order (docs/FORMAT.md): packs, their index rows, tree packs and rows, then the snapshot
object (put-if-absent: the execution ID is claimed once, on the backend), then the snapshot row
through the fenced commit (docs/GC.md). A crash anywhere leaves every committed snapshot restorable.
The commit is :func:`cas.ops.commit.commit` (a copy commits the same way).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import time

from cas.errors import Unavailable
from cas.format.chunking import Chunker
from cas.format.config import ChunkerName
from cas.format.records import SnapshotRecord
from cas.ops.commit import commit
from cas.ops.snapshot import workers as snapshot_workers
from cas.ops.snapshot.filter import SnapshotFilter
from cas.ops.snapshot.walk import OnChange, ProgressFn, TreeBuilder
from cas.ops.tree_index import TreeRowSpool
from cas.repo.blobwriter import BlobWriter
from cas.repo.filescache import FilesCache, files_cache_path
from cas.repo.repository import Repository, default_home

log = logging.getLogger("cas")
COMMIT_ATTEMPTS = 3


def take_snapshot(
    repo: Repository,
    path: str,
    execution_id: str,
    labels: dict[str, str],
    *,
    use_files_cache: bool = True,
    progress: ProgressFn | None = None,
    on_change: OnChange = OnChange.WARN,
    chunker: ChunkerName | None = None,
    filter: SnapshotFilter | None = None,
    files_cache_max_age: dt.timedelta | None = None,
    jobs: int | None = None,
) -> None:
    """Store the tree at ``path`` and commit it under ``execution_id`` (validated by the caller),
    leaving out what ``filter`` says (nothing without one).

    ``chunker``: how files are cut (None: the repository config's chunker).
    ``files_cache_max_age``: see :class:`~cas.repo.filescache.FilesCache`.
    ``jobs``: worker processes (:mod:`cas.ops.snapshot.workers`; None: one per CPU, at most a few,
    for a large tree; N: N whatever the tree's size; 1: everything in this process).

    If garbage collection removes blobs the snapshot reused before its commit, nothing is committed
    and the tree is stored again (without the files cache), up to :data:`COMMIT_ATTEMPTS` times.
    """
    for attempt in range(COMMIT_ATTEMPTS):
        spool = TreeRowSpool(repo.index)
        try:
            record, referenced = store_tree(repo, path, execution_id, labels, use_files_cache, progress, on_change,
                                            chunker=chunker, spool=spool, filter=filter,
                                            files_cache_max_age=files_cache_max_age, jobs=jobs)
            missing = commit(repo, record, referenced, spool)
        finally:
            spool.close()
        if not missing:
            return
        use_files_cache = False  # cached chunk lists may name what was collected: read files again
        log.warning(
            "garbage collection removed %d blobs this snapshot reused; storing them again (attempt %d)",
            len(missing), attempt + 2,
        )
    raise Unavailable(
        f"snapshot {execution_id} lost a race with garbage collection {COMMIT_ATTEMPTS} times; try again"
    )


def store_tree(
    repo: Repository, path: str, execution_id: str, labels: dict[str, str], use_files_cache: bool,
    progress: ProgressFn | None, on_change: OnChange, *, chunker: ChunkerName | None = None,
    spool: TreeRowSpool | None = None, filter: SnapshotFilter | None = None,
    files_cache_max_age: dt.timedelta | None = None, jobs: int | None = None,
) -> tuple[SnapshotRecord, set[str]]:
    """Steps 1-3 of the write order: every chunk and tree node durable and indexed. Returns the
    record to commit and every blob it references; ``spool`` receives every directory's entries.
    A large tree is split across ``jobs`` worker processes (:mod:`cas.ops.snapshot.workers`)."""
    cache_path = None
    if use_files_cache:
        cache_path = files_cache_path(os.path.join(default_home(), "cache"), repo.config.repo_id)
    cutter = Chunker(repo.config, chunker)
    # The files cache first: its database is made (or migrated) here, once, not by several
    # processes at once; the workers open it again. Then the workers, before this process starts
    # any thread of its own.
    files_cache = FilesCache(cache_path, files_cache_max_age) if cache_path is not None else None
    pool = None
    workers = None
    try:
        pool = snapshot_workers.start_pool(
            repo, path, snapshot_workers.default_jobs() if jobs is None else jobs, chunker=cutter, files_cache=cache_path,
            files_cache_max_age=files_cache_max_age, on_change=on_change, filter=filter, progress=progress,
            any_size=jobs is not None, on_trees=spool.merge if spool is not None else None,
        )
        with BlobWriter(repo, workers=snapshot_workers.ENCODERS if pool is not None else None) as writer:
            builder = TreeBuilder(writer, cutter, files_cache=files_cache,
                                  progress=pool.own_progress if pool is not None else progress,
                                  on_change=on_change, on_directory=spool.add if spool is not None else None,
                                  filter=filter, delegation=pool)
            if pool is not None:  # a share of the workers' directories, once the walk is done
                pool.work_here(TreeBuilder(writer, cutter, files_cache=files_cache, on_change=on_change,
                                           on_directory=spool.add if spool is not None else None, filter=filter))
            result = builder.build(path)
            writer.flush()
            if pool is not None:
                workers = pool.finish()
        if files_cache is not None:
            files_cache.commit()
    finally:
        if pool is not None:
            pool.close()
        if files_cache is not None:
            files_cache.close()
    referenced = builder.referenced
    writes = writer.stats
    if workers is not None:
        snapshot_workers.add_walk_stats(result.stats, workers.stats)
        referenced |= workers.referenced
        workers.writes.new_blobs += writes.new_blobs
        workers.writes.new_raw_bytes += writes.new_raw_bytes
        workers.writes.new_stored_bytes += writes.new_stored_bytes
        workers.writes.new_tree_bytes += writes.new_tree_bytes
        writes = workers.writes
    walk = result.stats
    stats = {
        "files": walk.files,
        "dirs": walk.dirs,
        "symlinks": walk.symlinks,
        "skipped": walk.skipped,
        "changed": walk.changed,
        "logical_bytes": walk.logical_bytes,
        "new_bytes": writes.new_raw_bytes,
        "stored_bytes": writes.new_stored_bytes,
        "new_blobs": writes.new_blobs,
        "new_tree_bytes": writes.new_tree_bytes,
        "files_from_cache": walk.files_from_cache,
        **walk.excluded.to_stats(),
    }
    record = SnapshotRecord(
        execution_id, result.root, result.root_mode, result.root_mtime_ns, time.time_ns(), labels=labels, stats=stats,
    )
    return record, referenced
