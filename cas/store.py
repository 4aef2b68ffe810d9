"""The public API: one object per open repository, a thin front over the operations in :mod:`cas.ops`.

    store = Store.open("file:///data/cas", index="sqlite:////data/cas.sqlite")
    store.snapshot("./proj", "run-42", labels={"workflow": "train"})
    store.restore("run-42", "/tmp/out")

Reading (get, list, ls, find, cat, diff, restore) never writes to the index; writing goes through the
write order of docs/FORMAT.md and the fenced commit of docs/GC.md. Opening fills the index's tree
entries of snapshots that lack them (after migration 0005; docs/INDEX.md), once.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import BinaryIO

from backends.base import Backend
from cas.errors import ConfigurationError, NotFound
from cas.format.records import SnapshotRecord, check_execution_id, check_labels
from cas.format.trees import DIR, Entry
from cas.ops import browse, snapshot as snapshot_op
from cas.ops.browse import Change, TreeSource
from cas.ops.find import FindResult, check_digest, compile_pattern, find as find_files, select_targets
from cas.ops.gc import DEFAULT_GRACE, GcReport, collect_garbage
from cas.ops.repair import RepairReport, repair
from cas.ops.restore import RestoreReport, Restorer, failure_error
from cas.ops.select import Selection, When
from cas.ops.sync import RebuildReport, rebuild_index
from cas.ops.tree_index import IndexedTrees, fill_tree_index
from cas.ops.tree_builder import OnChange, ProgressFn
from cas.ops.verify import VerifyReport, verify
from cas.repo.repository import Repository
from manifests.index import Index
from manifests.rows import IndexStats, SnapshotRow


@dataclass(frozen=True)
class Snapshot:
    execution_id: str
    root: str
    time_ns: int
    labels: dict[str, str]
    stats: dict[str, int]
    root_mode: int = 0o755
    """The snapshotted directory's own permission bits and mtime, applied to a restore's destination."""
    root_mtime_ns: int = 0
    damaged: bool = False

    @property
    def logical_bytes(self) -> int:
        return self.stats.get("logical_bytes", 0)

    @property
    def new_bytes(self) -> int:
        return self.stats.get("new_bytes", 0)

    def to_dict(self) -> dict[str, object]:
        return {
            "execution_id": self.execution_id,
            "root": self.root,
            "time_ns": self.time_ns,
            "labels": self.labels,
            "stats": self.stats,
            "root_mode": self.root_mode,
            "root_mtime_ns": self.root_mtime_ns,
            "damaged": self.damaged,
        }


class Store:
    def __init__(self, repo: Repository) -> None:
        self.repo = repo

    @classmethod
    def open(
        cls,
        repo: str | Backend | None = None,
        *,
        index: str | Index | None = None,
        create: bool = True,
        chunk_cache: str | bool | None = None,
        rebind_index: bool = False,
        **config: int,
    ) -> Store:
        """Open (and by default create) a repository. ``config`` sets chunk/pack parameters on creation.

        ``chunk_cache``: a directory shared by processes on this host for verified chunks read from a
        remote backend (default: ``$CAS_HOME/cache/chunks`` for remote backends, none for local ones).
        """
        repository = Repository.open(
            repo, index=index, create=create, config_overrides=config, chunk_cache=chunk_cache,
            rebind_index=rebind_index,
        )
        try:
            if repository.index_is_new:
                # A new index starts as a copy of what the backend holds (through the fenced commit).
                rebuild_index(repository)
            else:
                # Snapshots indexed before tree entries existed (migration 0005) get them now, once.
                fill_tree_index(repository, damaged=False)
        except BaseException:
            repository.close()
            raise
        return cls(repository)

    def close(self) -> None:
        self.repo.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writing ------------------------------------------------------------------------------

    def snapshot(
        self,
        path: str | os.PathLike[str],
        execution_id: str,
        *,
        labels: dict[str, str] | None = None,
        use_files_cache: bool = True,
        progress: ProgressFn | None = None,
        on_change: OnChange | str = OnChange.WARN,
    ) -> Snapshot:
        """Store the tree at ``path`` under ``execution_id``.

        ``on_change``: what to do with a file that changed while it was read, each of
        :data:`~cas.ops.tree_builder.CHANGE_RETRIES` times it was read again (see :class:`OnChange`).

        Taking an ID that exists returns the existing snapshot when the tree is identical and raises
        :class:`AlreadyExists` otherwise.
        """
        check_execution_id(execution_id)
        snapshot_op.take_snapshot(
            self.repo, os.fspath(path), execution_id, check_labels(labels or {}),
            use_files_cache=use_files_cache, progress=progress, on_change=OnChange(on_change),
        )
        return self.get(execution_id)

    def forget(self, execution_ids: list[str]) -> list[str]:
        """Remove snapshots (their objects, then their index rows). Their data goes at the next ``gc``."""
        for execution_id in execution_ids:
            self.get(execution_id)
        return snapshot_op.forget(self.repo, execution_ids)

    # -- reading ------------------------------------------------------------------------------

    def list(
        self,
        *,
        labels: Mapping[str, str] | None = None,
        since: When | None = None,
        until: When | None = None,
        limit: int | None = None,
    ) -> list[Snapshot]:
        """Snapshots in the index, newest first: those carrying every one of ``labels``, taken at
        ``since`` or later and before ``until`` (datetimes, naive ones in UTC, or timedeltas meaning
        that long ago), at most ``limit`` of them. See :class:`~cas.ops.select.Selection`."""
        selection = Selection(labels=labels or {}, since=since, until=until, limit=limit)
        return [_snapshot_from_row(r) for r in selection.rows(self.repo.index)]

    def get(self, execution_id: str) -> Snapshot:
        """The snapshot of an execution, from the index, or from its object on the backend when this
        host's index lacks it (another host wrote it). Reading never writes to the index: ``sync``
        does, through the fenced commit."""
        check_execution_id(execution_id, NotFound)
        row = self.repo.index.snapshot(execution_id)
        if row is not None:
            return _snapshot_from_row(row)
        return _snapshot_from_record(snapshot_op.load_record(self.repo, execution_id))

    def entry(self, execution_id: str, path: str = "") -> Entry | None:
        """The tree entry at ``path`` ('' is the root, returned as None)."""
        return browse.find_entry(self.repo, self.get(execution_id).root, path, execution_id)

    def ls(self, execution_id: str, path: str = "", *, recursive: bool = False) -> Iterator[tuple[str, Entry]]:
        """``(relative path, entry)`` pairs under ``path``, in name order. Answered from the index's
        tree entries when it has them (then entries carry no chunk lists), else by reading trees."""
        root, trees = self._trees(execution_id)
        entry = browse.find_entry(trees, root, path, execution_id)
        prefix = "/".join(browse.split_path(path))
        if entry is not None and entry.type != DIR:
            yield prefix, entry
            return
        tree = root if entry is None else entry.tree
        yield from browse.walk(trees, tree, prefix + "/" if prefix else "", recursive)

    def _trees(self, execution_id: str) -> tuple[str, TreeSource]:
        """A snapshot's root tree, and where to read its trees: the index's tree entries when it
        holds them all (``trees_indexed``), else the backend."""
        row = self.repo.index.snapshot(execution_id)
        if row is not None and row.trees_indexed:
            return row.root_tree, IndexedTrees(self.repo.index)
        return self.get(execution_id).root, self.repo

    def find(
        self,
        pattern: str | None = None,
        *,
        digest: str | None = None,
        execution_ids: list[str] | None = None,
        labels: Mapping[str, str] | None = None,
        since: When | None = None,
        until: When | None = None,
    ) -> FindResult:
        """Every file whose path matches the glob ``pattern`` and/or whose content has the BLAKE3
        ``digest``; iterating the result gives ``Found(execution_id, path, size, digest)``, newest
        execution first, each execution's files in path order (``by_execution()`` groups them).
        Searches the executions named (all if none), narrowed by the filters of :meth:`list`. See
        :mod:`cas.ops.find` for the pattern's rules. Answered from the index alone for snapshots
        whose tree entries it holds."""
        if pattern is None and digest is None:
            raise ConfigurationError("find needs a pattern, a digest, or both")
        compiled = compile_pattern(pattern) if pattern is not None else None
        wanted = check_digest(digest) if digest is not None else None
        selection = Selection(labels=labels or {}, since=since, until=until)
        targets = select_targets(self.repo.index, selection, execution_ids,
                                 lambda eid: _snapshot_from_record(snapshot_op.load_record(self.repo, eid)))
        return find_files(self.repo.index, self.repo, targets, compiled, wanted)

    def open_file(self, execution_id: str, path: str) -> BinaryIO:
        """A readable stream of one stored file; reading corrupt data raises IntegrityError."""
        entry = self.entry(execution_id, path)
        if entry is None or entry.type == DIR:
            raise ConfigurationError(f"{path or '/'} is a directory in execution {execution_id}")
        return browse.open_file(self.repo, entry, path)

    def diff(self, old_id: str, new_id: str) -> list[Change]:
        """Paths added, removed or changed between two executions (unchanged subtrees skipped).
        Answered from the index's tree entries when it holds both snapshots', else by reading trees."""
        old_root, old_trees = self._trees(old_id)
        new_root, new_trees = self._trees(new_id)
        trees = old_trees if isinstance(old_trees, IndexedTrees) and isinstance(new_trees, IndexedTrees) else self.repo
        return browse.diff_trees(trees, old_root, new_root)

    def restore(
        self,
        execution_id: str,
        dest: str | os.PathLike[str],
        path: str | None = None,
        *,
        overwrite: bool = False,
        same_permissions: bool = False,
        progress: ProgressFn | None = None,
    ) -> RestoreReport:
        """Restore an execution (or one path of it, as ``dest/<its name>``) into ``dest``.

        Raises :class:`PartialRestore` listing what could not be restored, after restoring everything else.
        """
        snap = self.get(execution_id)
        entry = self.entry(execution_id, path or "")
        if entry is None:
            entries = self.repo.read_tree(snap.root)
            meta = (snap.root_mode, snap.root_mtime_ns)
        else:
            entries, meta = [entry], None
        restorer = Restorer(self.repo, overwrite=overwrite, same_permissions=same_permissions, progress=progress)
        report = restorer.restore(entries, os.fspath(dest), meta)
        if report.failures:
            raise failure_error(report)
        return report

    def stats(self) -> IndexStats:
        return self.repo.index.stats()

    # -- maintenance --------------------------------------------------------------------------

    def sync(self) -> RebuildReport:
        """Add to the index what the backend holds and it lacks (packs, snapshots)."""
        return rebuild_index(self.repo)

    def rebuild_index(self) -> RebuildReport:
        """Empty the index and rebuild it from the backend alone (binding it to this backend)."""
        return rebuild_index(self.repo, full=True)

    def verify(self, *, read_data: bool = False, sample: float = 1.0) -> VerifyReport:
        return verify(self.repo, read_data=read_data, sample=sample)

    def repair(self, *, read_data: bool = False) -> tuple[VerifyReport, RepairReport]:
        found = verify(self.repo, read_data=read_data)
        return found, repair(self.repo, found)

    def gc(self, *, grace: dt.timedelta = DEFAULT_GRACE, dry_run: bool = False) -> GcReport:
        return collect_garbage(self.repo, grace=grace, dry_run=dry_run)


def _snapshot_from_record(record: SnapshotRecord) -> Snapshot:
    return Snapshot(record.execution_id, record.root, record.time_ns, dict(record.labels), dict(record.stats),
                    record.root_mode, record.root_mtime_ns)


def _snapshot_from_row(row: SnapshotRow) -> Snapshot:
    return Snapshot(row.execution_id, row.root_tree, row.time_ns, dict(row.labels), dict(row.stats),
                    row.root_mode, row.root_mtime_ns, row.damaged)
