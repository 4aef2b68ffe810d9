"""The public API: one object per open repository.

    store = Store.open("file:///data/cas", index="sqlite:////data/cas.sqlite")
    store.snapshot("./proj", "run-42", labels={"workflow": "train"})
    store.restore("run-42", "/tmp/out")

Write order of a snapshot (docs/FORMAT.md): packs, their index rows, tree packs and rows, then the
snapshot object (put-if-absent: the execution ID is claimed once, on the backend), then the
snapshot row. A crash anywhere leaves every committed snapshot restorable.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from backends.base import Backend
from cas.repo.blobwriter import BlobWriter
from cas.format.chunking import Chunker
from cas.errors import AlreadyExists, CasError, ConfigurationError, IntegrityError, NotFound, Unavailable
from cas.repo.filescache import FilesCache
from cas.ops.gc import DEFAULT_GRACE, GcReport, collect_garbage
from cas.ops.sync import RebuildReport, rebuild_index
from cas.ops.verify import RepairReport, VerifyReport, repair, verify
from cas.repo.reader import FileStream
from cas.format.records import SnapshotRecord, check_execution_id, check_labels, index_row, snapshot_key
from cas.repo.repository import Repository, default_home
from cas.ops.restore import RestoreReport, Restorer, failure_error
from cas.ops.tree_builder import OnChange, ProgressFn, TreeBuilder
from cas.format.trees import DIR, Entry
from manifests.index import Index, IndexStats, SnapshotRow

log = logging.getLogger("cas")
_COMMIT_ATTEMPTS = 3


@dataclass(frozen=True)
class Snapshot:
    execution_id: str
    root: str
    time_ns: int
    labels: dict[str, str]
    stats: dict[str, int]
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
            "damaged": self.damaged,
        }


@dataclass(frozen=True)
class Change:
    path: str
    kind: str  # "added", "removed" or "changed"


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
        return cls(
            Repository.open(
                repo, index=index, create=create, config_overrides=config, chunk_cache=chunk_cache,
                rebind_index=rebind_index,
            )
        )

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
        labels = check_labels(labels or {})
        path = os.fspath(path)
        for attempt in range(_COMMIT_ATTEMPTS):
            record, referenced = self._store_tree(path, execution_id, labels, use_files_cache, progress,
                                                  OnChange(on_change))
            missing = self._commit(record, referenced)
            if not missing:
                return self.get(execution_id)
            use_files_cache = False  # cached chunk lists may name what was collected: read files again
            log.warning(
                "garbage collection removed %d blobs this snapshot reused; storing them again (attempt %d)",
                len(missing), attempt + 2,
            )
        raise Unavailable(
            f"snapshot {execution_id} lost a race with garbage collection {_COMMIT_ATTEMPTS} times; try again"
        )

    def _store_tree(
        self, path: str, execution_id: str, labels: dict[str, str], use_files_cache: bool,
        progress: ProgressFn | None, on_change: OnChange,
    ) -> tuple[SnapshotRecord, set[str]]:
        """Steps 1-3 of the write order: every chunk and tree node durable and indexed."""
        files_cache = None
        if use_files_cache:
            files_cache = FilesCache(
                os.path.join(default_home(), "cache", f"files-v2-{self.repo.config.repo_id}.sqlite")
            )
        try:
            with BlobWriter(self.repo) as writer:
                builder = TreeBuilder(writer, Chunker(self.repo.config), files_cache=files_cache, progress=progress,
                                      on_change=on_change)
                result = builder.build(path)
                writer.flush()
            if files_cache is not None:
                files_cache.commit()
        finally:
            if files_cache is not None:
                files_cache.close()
        walk = result.stats
        stats = {
            "files": walk.files,
            "dirs": walk.dirs,
            "symlinks": walk.symlinks,
            "skipped": walk.skipped,
            "changed": walk.changed,
            "logical_bytes": walk.logical_bytes,
            "new_bytes": writer.stats.new_raw_bytes,
            "stored_bytes": writer.stats.new_stored_bytes,
            "new_blobs": writer.stats.new_blobs,
            "new_tree_bytes": writer.stats.new_tree_bytes,
            "files_from_cache": walk.files_from_cache,
        }
        record = SnapshotRecord(
            execution_id,
            result.root,
            result.root_mode,
            result.root_mtime_ns,
            time.time_ns(),
            labels=labels,
            stats=stats,
        )
        return record, builder.referenced

    def _commit(self, record: SnapshotRecord, referenced: set[str]) -> set[str]:
        """Steps 4-5: claim the execution ID on the backend, then insert the row under the GC fence.

        Returns the referenced blobs GC deleted meanwhile (then nothing is committed and the
        snapshot object is withdrawn), or an empty set.
        """
        key = snapshot_key(record.execution_id)
        try:
            self.repo.backend.put(key, record.to_json(), overwrite=False)
        except AlreadyExists:
            existing = self._load_record(record.execution_id)
            if existing.root != record.root:
                raise AlreadyExists(
                    f"execution ID {record.execution_id} already holds a different tree; choose a new ID"
                ) from None
            # Ours from an earlier attempt, or another writer's with the same tree: commit it (again)
            # through the fenced check, which also rescues any condemned pack it uses.
            return self._index_record(existing, referenced)
        try:
            missing = self._index_record(record, referenced)
        except BaseException:
            # The row did not go in; withdraw the claim so the ID is not left half-taken.
            self._withdraw(key)
            raise
        if missing:
            self._withdraw(key)
        return missing

    def _withdraw(self, key: str) -> None:
        try:
            self.repo.backend.delete(key)
        except CasError as exc:
            log.warning("could not withdraw %s after a failed commit: %s", key, exc)

    def _index_record(self, record: SnapshotRecord, referenced: set[str]) -> set[str]:
        """The fenced commit: a row that a sync already inserted for this record is success, and the
        rescue of condemned packs commits either way."""
        return self.repo.index.commit_snapshot(index_row(record), referenced)

    def forget(self, execution_ids: list[str]) -> list[str]:
        """Remove snapshots (their objects, then their index rows). Their data goes at the next ``gc``.

        The object goes first: a sync that runs meanwhile re-checks, inside its fenced commit, that
        the object still exists, so it cannot bring the row back (docs/GC.md).
        """
        for execution_id in execution_ids:
            self.get(execution_id)
        forgotten = []
        for execution_id in execution_ids:
            try:
                self.repo.backend.delete(snapshot_key(execution_id))
            except FileNotFoundError:
                pass
            self.repo.index.remove_snapshot(execution_id)
            forgotten.append(execution_id)
        return forgotten

    def _load_record(self, execution_id: str) -> SnapshotRecord:
        try:
            data = self.repo.backend.get(snapshot_key(execution_id))
        except FileNotFoundError:
            raise NotFound(f"unknown execution ID: {execution_id}") from None
        record = SnapshotRecord.from_json(data)
        if record.execution_id != execution_id:
            raise IntegrityError(f"snapshot object for {execution_id} names {record.execution_id}")
        return record

    # -- reading ------------------------------------------------------------------------------

    def list(self) -> list[Snapshot]:
        """Snapshots in the index, newest first."""
        return [_snapshot_of_row(r) for r in self.repo.index.snapshots()]

    def get(self, execution_id: str) -> Snapshot:
        """The snapshot of an execution, from the index, or from its object on the backend when this
        host's index lacks it (another host wrote it). Reading never writes to the index: ``sync``
        does, through the fenced commit."""
        check_execution_id(execution_id, NotFound)
        row = self.repo.index.snapshot(execution_id)
        if row is not None:
            return _snapshot_of_row(row)
        return _snapshot_of(self._load_record(execution_id))

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

    def entry(self, execution_id: str, path: str = "") -> Entry | None:
        """The tree entry at ``path`` ('' is the root, returned as None)."""
        snap = self.get(execution_id)
        parts = _split_path(path)
        if not parts:
            return None
        entries = self.repo.read_tree(snap.root)
        found: Entry | None = None
        for depth, name in enumerate(parts):
            found = next((e for e in entries if e.name == name), None)
            if found is None or (depth < len(parts) - 1 and found.type != DIR):
                raise NotFound(f"{path} is not in execution {execution_id}")
            if depth < len(parts) - 1:
                entries = self.repo.read_tree(found.tree)
        return found

    def ls(self, execution_id: str, path: str = "", *, recursive: bool = False) -> Iterator[tuple[str, Entry]]:
        """``(relative path, entry)`` pairs under ``path``, in name order."""
        entry = self.entry(execution_id, path)
        prefix = "/".join(_split_path(path))
        if entry is not None and entry.type != DIR:
            yield prefix, entry
            return
        tree = self.get(execution_id).root if entry is None else entry.tree
        yield from self._walk(tree, prefix + "/" if prefix else "", recursive)

    def _walk(self, tree: str, prefix: str, recursive: bool) -> Iterator[tuple[str, Entry]]:
        """Depth first, in name order, without recursion (a stored tree may be of any depth)."""
        stack = [(iter(self.repo.read_tree(tree)), prefix)]
        while stack:
            entries, where = stack[-1]
            e = next(entries, None)
            if e is None:
                stack.pop()
                continue
            yield where + e.name, e
            if recursive and e.type == DIR:
                stack.append((iter(self.repo.read_tree(e.tree)), where + e.name + "/"))

    def open_file(self, execution_id: str, path: str) -> BinaryIO:
        """A readable stream of one stored file; reading corrupt data raises IntegrityError."""
        entry = self.entry(execution_id, path)
        if entry is None or entry.type == DIR:
            raise ConfigurationError(f"{path or '/'} is a directory in execution {execution_id}")
        import io

        return io.BufferedReader(FileStream(self.repo, entry, path), buffer_size=1 << 20)  # type: ignore[return-value]

    def diff(self, old_id: str, new_id: str) -> list[Change]:
        """Paths added, removed or changed between two executions (unchanged subtrees skipped)."""
        old, new = self.get(old_id), self.get(new_id)
        return self._diff_trees(old.root, new.root)

    def _diff_trees(self, old_root: str, new_root: str) -> list[Change]:
        """Changes in path order: a directory's own change after those inside it, an added or
        removed directory before its contents. Iterative: a stored tree may be of any depth."""
        out: list[Change] = []
        # Work items, last first: a pair of trees to compare under a prefix, or a change to emit.
        stack: list[tuple[str | None, str | None, str] | Change] = [(old_root, new_root, "")]
        while stack:
            item = stack.pop()
            if isinstance(item, Change):
                out.append(item)
                continue
            old, new, prefix = item
            if old == new:
                continue
            a = {e.name: e for e in self.repo.read_tree(old)} if old else {}
            b = {e.name: e for e in self.repo.read_tree(new)} if new else {}
            todo: list[tuple[str | None, str | None, str] | Change] = []
            for name in sorted(set(a) | set(b), key=os.fsencode):
                path = prefix + name
                ea, eb = a.get(name), b.get(name)
                if ea is not None and eb is not None and ea.type == DIR and eb.type == DIR:
                    todo.append((ea.tree, eb.tree, path + "/"))
                    if (ea.mode, ea.mtime_ns) != (eb.mode, eb.mtime_ns) and ea.tree == eb.tree:
                        todo.append(Change(path + "/", "changed"))
                    continue
                if ea is None:
                    todo.append(Change(path, "added"))
                    if eb is not None and eb.type == DIR:
                        todo.append((None, eb.tree, path + "/"))
                elif eb is None:
                    todo.append(Change(path, "removed"))
                    if ea.type == DIR:
                        todo.append((ea.tree, None, path + "/"))
                elif ea != eb:
                    todo.append(Change(path, "changed"))
            stack.extend(reversed(todo))
        return out

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

        Raises IntegrityError listing what could not be restored after restoring everything else.
        """
        snap = self.get(execution_id)
        entry = self.entry(execution_id, path or "")
        if entry is None:
            entries = self.repo.read_tree(snap.root)
            meta = (snap.stats.get("root_mode", 0o755), snap.stats.get("root_mtime_ns", snap.time_ns))
        else:
            entries, meta = [entry], None
        restorer = Restorer(self.repo, overwrite=overwrite, same_permissions=same_permissions, progress=progress)
        report = restorer.restore(entries, os.fspath(dest), meta)
        if report.failures:
            raise failure_error(report)
        return report

    def stats(self) -> IndexStats:
        return self.repo.index.stats()


def _split_path(path: str) -> list[str]:
    parts = [p for p in path.strip("/").split("/") if p and p != "."]
    if ".." in parts:
        raise ConfigurationError(f"path {path!r} may not contain '..'")
    return parts


def _snapshot_of(record: SnapshotRecord) -> Snapshot:
    stats = {**record.stats, "root_mode": record.root_mode, "root_mtime_ns": record.root_mtime_ns}
    return Snapshot(record.execution_id, record.root, record.time_ns, dict(record.labels), stats)


def _snapshot_of_row(row: SnapshotRow) -> Snapshot:
    return Snapshot(row.execution_id, row.root_tree, row.time_ns, dict(row.labels), dict(row.stats), row.damaged)
