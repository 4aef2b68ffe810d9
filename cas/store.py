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
import logging
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO

from backends.base import Backend
from cas.errors import ConfigurationError, IntegrityError, NotFound, PermissionDenied
from cas.format.config import ChunkerName
from cas.format.records import SnapshotRecord, check_execution_id, check_labels
from cas.format.trees import DIR, Entry
from cas.ops import browse
from cas.ops.browse import Change, TreeSource
from cas.ops.select import Selection, When
from cas.ops.tree_index import IndexedTrees, fill_tree_index
from cas.repo import keystore
from cas.repo.keystore import KeyInfo, Passphrase
from cas.repo.repository import Repository
from cas.types import OnChange
from manifests.rows import IndexStats, SnapshotRow

# The other operations are imported by the methods that run them, so that a command that lists or
# finds loads none of the modules of snapshot, restore, copy or repair.
if TYPE_CHECKING:
    from typing_extensions import Self

    from cas.ops.copy import CopyReport
    from cas.ops.copy import ProgressFn as CopyProgressFn
    from cas.ops.find import FindResult
    from cas.ops.gc import GcReport
    from cas.ops.prefetch import PrefetchReport
    from cas.ops.repair import RepairReport
    from cas.ops.restore.report import RestoreReport
    from cas.ops.snapshot.filter import SnapshotFilter
    from cas.ops.snapshot.walk import ProgressFn
    from cas.ops.sync import RebuildReport
    from cas.ops.tree_filter import TreeFilter
    from cas.ops.verify import VerifyReport
    from cas.ops.view import SnapshotView
    from manifests.index import Index

log = logging.getLogger(__name__)


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
        index: str | Index | bool | None = None,
        create: bool = True,
        chunk_cache: str | bool | None = None,
        rebind_index: bool = False,
        chunk_cache_max: int | None = None,
        password: Passphrase | None = None,
        encrypt: bool = False,
        kdf_cost: int | None = None,
        exclusive: bool = False,
        **config: int | str,
    ) -> Store:
        """Open (and by default create) a repository. ``config`` sets chunk/pack parameters and the
        ``chunker`` (a :class:`~cas.format.config.ChunkerName` value) on creation.

        ``chunk_cache``: a directory shared by processes on this host for verified chunks read from a
        remote backend (default: ``$CAS_HOME/cache/chunks`` for remote backends, none for local ones).
        ``chunk_cache_max``: its cap in bytes, least recently used chunks evicted beyond it (default
        ``$CAS_CACHE_MAX``, else 10 GiB or a tenth of the free disk space, whichever is smaller).

        ``index``: the index's SQLAlchemy URL or an open index; by default ``$CAS_INDEX``, else a
        per-host SQLite file for this repository (``False``: that file even when ``$CAS_INDEX`` is set).

        ``password`` opens an encrypted repository (a string, or a function called only if the
        repository is encrypted); ``encrypt`` creates one, its first key derived from ``password``
        with scrypt at ``kdf_cost`` (N = 2**kdf_cost, 10..18, default 17); ``exclusive`` refuses
        a repository that exists (as ``cas init`` does). See docs/SECURITY.md.
        """
        repository = Repository.open(
            repo, index=index, create=create, config_overrides=config, chunk_cache=chunk_cache,
            rebind_index=rebind_index, chunk_cache_max=chunk_cache_max, password=password, encrypt=encrypt,
            kdf_cost=kdf_cost, exclusive=exclusive,
        )
        try:
            if repository.index_is_new:
                from cas.ops.sync import rebuild_index

                # A new index starts as a copy of what the backend holds (through the fenced commit).
                rebuild_index(repository)
            else:
                # Snapshots indexed before tree entries existed (migration 0005) get them now, once,
                # by a role that may write to the index; for a reader (SELECT only) ls, find and
                # diff read those snapshots' trees instead.
                try:
                    fill_tree_index(repository, damaged=False)
                except PermissionDenied:
                    log.info("this role may not write to the index: tree entries of older snapshots "
                             "are left for a writer to fill")
        except BaseException:
            repository.close()
            raise
        return cls(repository)

    def close(self) -> None:
        self.repo.close()

    def __enter__(self) -> Self:
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
        chunker: ChunkerName | str | None = None,
        filter: SnapshotFilter | None = None,
        files_cache_ttl: dt.timedelta | None = None,
        jobs: int | None = 1,
    ) -> Snapshot:
        """Store the tree at ``path`` under ``execution_id``.

        ``chunker``: how files are cut into chunks; by default the repository's own
        (``Store.open(..., chunker=...)`` sets it when creating one). See docs/FORMAT.md, Chunks.

        ``filter``: what to leave out (:class:`~cas.ops.snapshot.filter.SnapshotFilter`: ignore
        files, exclude and include patterns, a size limit, other file systems). The default honours
        ``.casignore`` files and nothing else; what was left out is counted in the snapshot's stats.

        ``on_change``: what to do with a file that changed while it was read, each of
        :data:`~cas.ops.snapshot.entries.CHANGE_RETRIES` times it was read again (see :class:`OnChange`).
        ``files_cache_ttl``: the files cache forgets paths no snapshot has seen for this long
        (default 30 days).
        ``jobs``: processes that walk the tree's subdirectories, this one and ``jobs - 1`` forked
        from it. The default, 1, takes the snapshot in this process alone: a library's host
        (AIFlow's server, a notebook) runs threads of its own, and a child forked while one of them
        holds a lock may hang on it. None: one per CPU (at most 4) for a tree of 20,000 names or
        more, as ``cas snapshot`` does; N: N processes whatever the tree's size. Remote
        repositories are always taken in this process.

        Taking an ID that exists returns the existing snapshot when the tree is identical and raises
        :class:`AlreadyExists` otherwise.
        """
        from cas.ops.snapshot.filter import SnapshotFilter
        from cas.ops.snapshot.take import take_snapshot

        check_execution_id(execution_id)
        take_snapshot(
            self.repo, os.fspath(path), execution_id, check_labels(labels or {}),
            use_files_cache=use_files_cache, progress=progress, on_change=OnChange(on_change),
            chunker=_chunker_name(chunker), filter=SnapshotFilter() if filter is None else filter,
            files_cache_max_age=files_cache_ttl, jobs=jobs,
        )
        return self.get(execution_id)

    def forget(self, execution_ids: list[str]) -> list[str]:
        """Remove snapshots (their objects, then their index rows). Their data goes at the next ``gc``."""
        from cas.ops.commit import forget

        for execution_id in execution_ids:
            self.get(execution_id)
        return forget(self.repo, execution_ids)

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
        return _snapshot_from_record(_load_record(self.repo, execution_id))

    def entry(self, execution_id: str, path: str = "") -> Entry | None:
        """The tree entry at ``path`` ('' is the root, returned as None)."""
        return browse.find_entry(self.repo, self.get(execution_id).root, path, execution_id)

    def ls(
        self, execution_id: str, path: str = "", *, recursive: bool = False, filter: TreeFilter | None = None
    ) -> Iterator[tuple[str, Entry]]:
        """``(relative path, entry)`` pairs under ``path``, in name order; with ``filter``, what a
        restore with that filter would write (see :mod:`cas.ops.tree_filter`). Answered from the
        index's tree entries when it has them (then entries carry no chunk lists), else by reading
        trees."""
        root, trees = self._trees(execution_id)
        entry = browse.find_entry(trees, root, path, execution_id)
        parts = browse.split_path(path)
        prefix = "/".join(parts)
        tree = root if entry is None else entry.tree
        if filter:
            rules = filter.rules()
            included = rules.inside(parts if entry is None or entry.type == DIR else parts[:-1])
            if included is None:
                return
            if entry is not None and entry.type != DIR:
                yield from rules.walk(trees, [entry], prefix[: -len(entry.name)], included)
            else:
                yield from rules.walk(trees, trees.read_tree(tree), prefix + "/" if prefix else "", included,
                                      recursive=recursive)
            return
        if entry is not None and entry.type != DIR:
            yield prefix, entry
            return
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
        from cas.ops.find import check_digest, compile_pattern, select_targets
        from cas.ops.find import find as find_files

        if pattern is None and digest is None:
            raise ConfigurationError("find needs a pattern, a digest, or both")
        compiled = compile_pattern(pattern) if pattern is not None else None
        wanted = check_digest(digest) if digest is not None else None
        selection = Selection(labels=labels or {}, since=since, until=until)
        targets = select_targets(self.repo.index, selection, execution_ids,
                                 lambda eid: _snapshot_from_record(_load_record(self.repo, eid)))
        return find_files(self.repo.index, self.repo, targets, compiled, wanted)

    def open_file(self, execution_id: str, path: str) -> BinaryIO:
        """A readable stream of one stored file; reading corrupt data raises IntegrityError."""
        entry = self.entry(execution_id, path)
        if entry is None or entry.type == DIR:
            raise ConfigurationError(f"{path or '/'} is a directory in execution {execution_id}")
        return browse.open_file(self.repo, entry, path)

    def view(self, executions: list[str] | None = None) -> SnapshotView:
        """Executions as one read-only tree of paths ``EXECUTION_ID/path`` (what fsspec and the
        mount serve); ``executions`` limits it to those IDs. Directories are listed from the index's
        tree entries for snapshots that have them (no backend read), else from the stored trees."""
        from cas.ops.view import SnapshotView

        return SnapshotView(self.repo, self, executions=executions, listings=self._listings)

    def _listings(self, execution_id: str) -> TreeSource | None:
        row = self.repo.index.snapshot(execution_id)
        return IndexedTrees(self.repo.index) if row is not None and row.trees_indexed else None

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
        filter: TreeFilter | None = None,
        delete: bool = False,
        trust_mtime: bool = False,
        in_place: bool = False,
        use_files_cache: bool = True,
    ) -> RestoreReport:
        """Restore an execution (or one path of it, as ``dest/<its name>``) into ``dest``; with
        ``filter``, only what it keeps (patterns relative to the snapshot's root, see
        :mod:`cas.ops.tree_filter`).

        With ``overwrite`` into a non-empty ``dest``, entries that already match are left untouched
        and only what differs is written; ``delete`` also removes what the execution lacks;
        ``trust_mtime`` takes a file of the right size and mtime as matching without reading it;
        ``in_place`` patches a mostly unchanged file where it is instead of writing it anew (less to
        write; not atomic: a reader or a crash may see it partly updated). With ``use_files_cache``
        the files the restore creates are recorded in this host's files cache, as a snapshot records
        what it reads: a snapshot of ``dest`` afterwards reads only what changed since.

        Raises :class:`PartialRestore` listing what could not be restored, after restoring everything else.
        """
        from cas.ops.restore.report import failure_error
        from cas.ops.restore.walk import Restorer
        from cas.repo.filescache import open_recorder

        snap = self.get(execution_id)
        entry = self.entry(execution_id, path or "")
        entries: list[Entry] | None
        if entry is None:  # the whole tree: read by the restore, unless it finds it restored already
            entries = self.repo.read_tree(snap.root) if filter else None
            meta = (snap.root_mode, snap.root_mtime_ns)
        else:
            entries, meta = [entry], None
        select = None
        if filter:
            assert entries is not None
            rules = filter.rules()
            parents = browse.split_path(path or "")[:-1]
            included = rules.inside(parents)
            base = "/".join(parents) + "/" if parents else ""
            select = (lambda rel, e: False) if included is None else rules.predicate(self.repo, entries, base, included)
        recorder = open_recorder(self.repo.config.repo_id) if use_files_cache else None
        restorer = Restorer(self.repo, overwrite=overwrite, same_permissions=same_permissions, progress=progress,
                            select=select, delete=delete, trust_mtime=trust_mtime, in_place=in_place,
                            recorder=recorder)
        try:
            report = restorer.restore(entries, os.fspath(dest), meta, snap.root if entry is None else None)
        finally:
            if recorder is not None:
                recorder.close()
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
        to_password: Passphrase | None = None,
    ) -> CopyReport:
        """Copy executions to another repository (``to``: an open Store, a URL or a backend; a new
        one is created with this repository's chunking parameters), sending only the blobs its
        index lacks and keeping execution IDs, labels, times and every chunk and tree ID.

        The executions are ``execution_ids`` plus, with ``labels``, every snapshot carrying all of
        them (oldest first). Safe to run again and to interrupt (see :mod:`cas.ops.copy`).
        ``to_password`` opens an encrypted target; a new target is encrypted when this repository
        is, its first key made from ``to_password``.
        """
        from cas.ops.copy import copy_executions

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
        # Without to_index the target gets its per-host index, never $CAS_INDEX (this one's).
        target_index = False if to_index is None else to_index
        with Store.open(to, index=target_index, password=to_password, encrypt=c.encrypted, **chunking) as target:
            return copy_executions(self.repo, target.repo, ids, progress=progress)

    def stats(self) -> IndexStats:
        return self.repo.index.stats()

    # -- passphrase keys of an encrypted repository (cas/repo/keystore.py) -----------------------

    @property
    def encrypted(self) -> bool:
        return self.repo.config.encrypted

    def list_keys(self) -> list[KeyInfo]:
        """The repository's passphrase keys (:class:`ConfigurationError` if it is not encrypted)."""
        unlocked = self._unlocked()
        return keystore.list_keys(self._keys_backend(), unlocked)

    def add_key(self, password: Passphrase, *, kdf_cost: int | None = None) -> str:
        """Let another passphrase open this repository; the new key's ID."""
        unlocked = self._unlocked()
        backend = self._keys_backend()
        return keystore.write_key(
            backend, self.repo.config, unlocked.master, keystore.resolve(password, backend, adding=True), kdf_cost
        )

    def remove_key(self, key_id: str) -> None:
        """Remove a passphrase key: never the last one, nor the one this store was opened with."""
        unlocked = self._unlocked()
        keystore.remove_key(self._keys_backend(), unlocked, key_id)

    def _unlocked(self) -> keystore.Unlocked:
        if self.repo.unlocked is None:
            raise ConfigurationError("this repository is not encrypted: it has no keys")
        return self.repo.unlocked

    def _keys_backend(self) -> Backend:
        return self.repo.backend.inner  # type: ignore[attr-defined,no-any-return]

    def prefetch(self, execution_ids: list[str]) -> PrefetchReport:
        """Fill this host's chunk cache with every chunk the executions' files need, so restoring
        them later reads nothing from the backend (while the cache's cap holds them). A chunk
        another process is fetching is not fetched again (see :mod:`cas.ops.prefetch`).

        Raises :class:`IntegrityError` naming what could not be fetched, after fetching the rest.
        """
        from cas.ops.prefetch import prefetch

        roots = [self.get(execution_id).root for execution_id in execution_ids]
        report = prefetch(self.repo, roots)
        if report.failures:
            more = f" (and {len(report.failures) - 1} more)" if len(report.failures) > 1 else ""
            raise IntegrityError(f"prefetch: {report.failures[0]}{more}")
        return report

    # -- maintenance --------------------------------------------------------------------------

    def sync(self) -> RebuildReport:
        """Add to the index what the backend holds and it lacks (packs, snapshots)."""
        from cas.ops.sync import rebuild_index

        self.repo.index.require_insert()
        return rebuild_index(self.repo)

    def rebuild_index(self) -> RebuildReport:
        """Empty the index and rebuild it from the backend alone (binding it to this backend)."""
        from cas.ops.sync import rebuild_index

        self.repo.index.require_delete()
        return rebuild_index(self.repo, full=True)

    def verify(self, *, read_data: bool = False, sample: float = 1.0) -> VerifyReport:
        from cas.ops.verify import verify

        return verify(self.repo, read_data=read_data, sample=sample)

    def repair(self, *, read_data: bool = False) -> tuple[VerifyReport, RepairReport]:
        from cas.ops.repair import repair
        from cas.ops.verify import verify

        self.repo.index.require_delete()
        found = verify(self.repo, read_data=read_data)
        return found, repair(self.repo, found)

    def gc(self, *, grace: dt.timedelta | None = None, dry_run: bool = False) -> GcReport:
        """Collect garbage (:func:`cas.ops.gc.collect_garbage`); ``grace`` None: its ``DEFAULT_GRACE``."""
        from cas.ops.gc import DEFAULT_GRACE, collect_garbage

        if grace is None:
            grace = DEFAULT_GRACE
        if not dry_run:
            self.repo.index.require_delete()
        return collect_garbage(self.repo, grace=grace, dry_run=dry_run)


def _snapshot_from_record(record: SnapshotRecord) -> Snapshot:
    return Snapshot(record.execution_id, record.root, record.time_ns, dict(record.labels), dict(record.stats),
                    record.root_mode, record.root_mtime_ns)


def _snapshot_from_row(row: SnapshotRow) -> Snapshot:
    return Snapshot(row.execution_id, row.root_tree, row.time_ns, dict(row.labels), dict(row.stats),
                    row.root_mode, row.root_mtime_ns, row.damaged)


def _load_record(repo: Repository, execution_id: str) -> SnapshotRecord:
    from cas.ops.commit import load_record

    return load_record(repo, execution_id)


def _chunker_name(name: ChunkerName | str | None) -> ChunkerName | None:
    if name is None:
        return None
    try:
        return ChunkerName(name)
    except ValueError:
        known = ", ".join(c.value for c in ChunkerName)
        raise ConfigurationError(f"unknown chunker {name!r} (known: {known})") from None
