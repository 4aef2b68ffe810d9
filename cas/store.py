"""The public API: one object per open repository, a thin front over the operations in :mod:`cas.ops`.

    store = Store.open("file:///data/cas", index="sqlite:////data/cas.sqlite")
    store.snapshot("./proj", "run-42", labels={"workflow": "train"})
    store.restore("run-42", "/tmp/out")

Reading (get, list, ls, cat, diff, restore) never writes to the index; writing goes through the
write order of docs/FORMAT.md and the fenced commit of docs/GC.md.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import BinaryIO

from backends.base import Backend
from cas.errors import ConfigurationError, NotFound
from cas.format.records import SnapshotRecord, check_execution_id, check_labels
from cas.format.trees import DIR, Entry
from cas.ops import browse, snapshot as snapshot_op
from cas.ops.browse import Change
from cas.ops.copy import CopyReport, ProgressFn as CopyProgressFn, copy_executions
from cas.ops.gc import DEFAULT_GRACE, GcReport, collect_garbage
from cas.ops.repair import RepairReport, repair
from cas.ops.restore import RestoreReport, Restorer, failure_error
from cas.ops.select import Selection, When
from cas.ops.sync import RebuildReport, rebuild_index
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
        if repository.index_is_new:
            # A new index starts as a copy of what the backend holds (through the fenced commit).
            try:
                rebuild_index(repository)
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
        """``(relative path, entry)`` pairs under ``path``, in name order."""
        entry = self.entry(execution_id, path)
        prefix = "/".join(browse.split_path(path))
        if entry is not None and entry.type != DIR:
            yield prefix, entry
            return
        tree = self.get(execution_id).root if entry is None else entry.tree
        yield from browse.walk(self.repo, tree, prefix + "/" if prefix else "", recursive)

    def open_file(self, execution_id: str, path: str) -> BinaryIO:
        """A readable stream of one stored file; reading corrupt data raises IntegrityError."""
        entry = self.entry(execution_id, path)
        if entry is None or entry.type == DIR:
            raise ConfigurationError(f"{path or '/'} is a directory in execution {execution_id}")
        return browse.open_file(self.repo, entry, path)

    def diff(self, old_id: str, new_id: str) -> list[Change]:
        """Paths added, removed or changed between two executions (unchanged subtrees skipped)."""
        return browse.diff_trees(self.repo, self.get(old_id).root, self.get(new_id).root)

    def restore(
        self,
        execution_id: str,
        dest: str | os.PathLike[str],
        path: str | None = None,
        *,
        overwrite: bool = False,
        same_permissions: bool = False,
        progress: ProgressFn | None = None,
        delete: bool = False,
        trust_mtime: bool = False,
        in_place: bool = False,
    ) -> RestoreReport:
        """Restore an execution (or one path of it, as ``dest/<its name>``) into ``dest``.

        With ``overwrite`` into a non-empty ``dest``, entries that already match are left untouched
        and only what differs is written; ``delete`` also removes what the execution lacks;
        ``trust_mtime`` takes a file of the right size and mtime as matching without reading it;
        ``in_place`` patches a mostly unchanged file where it is instead of writing it anew (less to
        write; not atomic: a reader or a crash may see it partly updated).

        Raises :class:`PartialRestore` listing what could not be restored, after restoring everything else.
        """
        snap = self.get(execution_id)
        entry = self.entry(execution_id, path or "")
        if entry is None:
            entries = self.repo.read_tree(snap.root)
            meta = (snap.root_mode, snap.root_mtime_ns)
        else:
            entries, meta = [entry], None
        restorer = Restorer(self.repo, overwrite=overwrite, same_permissions=same_permissions, progress=progress,
                            delete=delete, trust_mtime=trust_mtime, in_place=in_place)
        report = restorer.restore(entries, os.fspath(dest), meta)
        if report.failures:
            raise failure_error(report)
        return report

    def copy(
        self,
        execution_ids: Iterable[str] = (),
        to: Store | str | Backend | None = None,
        *,
        to_index: str | Index | None = None,
        labels: Mapping[str, str] | None = None,
        progress: CopyProgressFn | None = None,
    ) -> CopyReport:
        """Copy executions to another repository (``to``: an open Store, a URL or a backend; a new
        one is created with this repository's chunking parameters), sending only the blobs its
        index lacks and keeping execution IDs, labels, times and every chunk and tree ID.

        The executions are ``execution_ids`` plus, with ``labels``, every snapshot carrying all of
        them (oldest first). Safe to run again and to interrupt (see :mod:`cas.ops.copy`).
        """
        ids = list(dict.fromkeys(execution_ids))
        if labels:
            rows = Selection(labels=labels).rows(self.repo.index)
            ids += [r.execution_id for r in reversed(rows) if r.execution_id not in ids]
        if not ids:
            raise ConfigurationError("nothing to copy: name executions or select them by label")
        for execution_id in ids:
            check_execution_id(execution_id, NotFound)
        if to is None:
            raise ConfigurationError("copy needs a target repository")
        if isinstance(to, Store):
            return copy_executions(self.repo, to.repo, ids, progress=progress)
        c = self.repo.config
        chunking = {"chunk_min": c.chunk_min, "chunk_avg": c.chunk_avg, "chunk_max": c.chunk_max,
                    "compression_level": c.compression_level, "pack_size": c.pack_size}
        with Store.open(to, index=to_index, **chunking) as target:
            return copy_executions(self.repo, target.repo, ids, progress=progress)

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
