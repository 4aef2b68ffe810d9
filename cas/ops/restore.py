"""Writing a stored tree to disk, exactly and only inside the destination.

Safety by construction:

* every name comes from :func:`cas.format.trees.decode_tree`, which refuses ``/``, NUL, ``.``, ``..``,
  empty and duplicate names, so an entry always names one component inside its directory;
* directories are opened relative to their parent's descriptor with ``O_NOFOLLOW``: a symlink in
  the way (planted, or restored earlier) is never followed; files and symlinks are created under a
  temporary name with ``O_EXCL | O_NOFOLLOW`` and renamed into place, which replaces a name
  rather than writing through it;
* a file appears under its final name only after all its chunks and its whole-file digest verified.

Directory modes and times are applied after their contents. setuid/setgid bits are dropped unless
asked for. Files are written by a small thread pool.

With ``overwrite`` the restore is incremental: what already matches the tree is left as it is (see
:mod:`cas.ops.restore_local` for when a file matches and which local chunks are reused), only what
differs is written, and with ``delete`` what the tree lacks is removed. Concurrent restores into one
destination each write whole files under names no other restore removes; the last rename wins.
"""

from __future__ import annotations

import itertools
import os
import stat
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from typing import NamedTuple

from cas.errors import PartialRestore, AlreadyExists, CasError, ConfigurationError, IntegrityError, Unavailable
from cas.ops.restore_local import (
    FileChangedError, LocalChunks, OldFile, TaskView, content, examine_file, match_whole, patch_in_place,
)
from cas.ops.restore_temps import TMP_PREFIX, is_abandoned, temporary_tag
from cas.ops.restore_delete import Remover
from cas.ops.restore_delete_process import ProcessRemover
from cas.ops.restore_write import (
    FATAL_ERRNOS, PREALLOCATE_FROM, FileWriter, has_zero_runs, place, set_metadata, unlink_quietly, write_content,
)
from cas.repo.reader import file_chunks, prefetch
from cas.repo.repository import Repository
from cas.format.hashing import hexdigest
from cas.format.trees import DIR, FILE, SYMLINK, Entry
from cas.types import BlobLocation

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
_OPEN_DIRS = 64
#: Directories kept open past their turn to be finished because removals in them still run.
_OPEN_REMOVING = 64
_OPEN_ANCESTORS = 64
#: Subdirectories entered ahead of the walk (their files already on the pool) at any time.
_LOOK_AHEAD = 16
#: Small files already fetched are written by one task per this many files or bytes, not one each.
_BATCH_FILES = 32
_BATCH_BYTES = 1024 * 1024
#: Small files whose content is one chunk fetched already are written by one task per directory
#: (up to this many files each), on :data:`_WHOLE_THREADS` threads of their own: a directory's
#: files by one thread, so that its writers do not queue for the directory's lock in the kernel,
#: and few threads, so that they do not hand the GIL to each other at every call (each call
#: releases it). Two keep two calls in the kernel at once, where most of a small file's time is.
_WHOLE_FILES = 4096
_WHOLE_THREADS = 2
#: A directory with at most this many such files has them written by the walk itself: handing a
#: few files to another thread costs more (GIL hand-offs, wake-ups) than the overlap gains.
_WHOLE_INLINE = 32
_EMPTY_DIGEST = hexdigest(b"")
#: Bytes of small files fetched and not yet written that the walk may have (one directory's more).
_FETCHED_AHEAD = 4 * 1024 * 1024
#: Files up to this size have their chunks fetched together, per directory (see reader.prefetch).
_PREFETCH_FILE_SIZE = 1024 * 1024
#: Files in place up to this size are compared with the tree by the walk itself as it lists their
#: directory, not by a worker: handing small files to other threads costs more than it overlaps
#: (each hand-off and each call that releases the GIL makes the threads wait for each other)...
_COMPARE_AT_ONCE = 256 * 1024
#: ...unless their content is not in memory: those are compared on this many threads of their own,
#: the disk's waits overlapping (see ``match_whole``'s ``nowait``).
_COLD_THREADS = 4

ProgressFn = Callable[[int, int], None]


@dataclass
class _DirJob:
    fd: int | None
    """None while released (an ancestor far up the walk's path, see ``_restore_tree``)."""
    owned: bool
    meta: tuple[int, int] | None
    pending: list[tuple[list[str], Future[list[_Done | BaseException]]]] = field(default_factory=list)
    """Files being written on the pool: a task writes one file, or several small ones (see ``_batch``)."""
    removals: list[tuple[str, Future[int]]] = field(default_factory=list)
    """Entries the tree lacks, being removed on the pool (``delete``): their counts of removed entries."""
    ident: tuple[int, int] = (0, 0)
    """``(st_dev, st_ino)``, to check a descriptor reopened through ``..``."""


@dataclass(eq=False)
class _Level:
    """A directory on the walk's path: its subdirectories still to restore."""

    job: _DirJob
    subdirs: list[tuple[Entry, str]]
    trees: dict[str, BlobLocation]
    next: int = 0
    ahead: int = 0
    """Subdirectories before this index have been entered (``started``, or walked already)."""
    started: dict[int, _Level | None] = field(default_factory=dict)
    """Subdirectories entered ahead of the walk (see ``_look_ahead``), by index; None: it failed."""


@dataclass
class RestoreReport:
    """``files``, ``dirs``, ``symlinks`` and ``bytes`` count what the destination holds of the tree
    afterwards; ``written``, ``unchanged`` and ``deleted`` count entries this restore wrote, found
    already matching (``meta_fixed`` of them had only their mode or mtime set) and removed."""

    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    bytes: int = 0
    written: int = 0
    unchanged: int = 0
    deleted: int = 0
    meta_fixed: int = 0
    written_bytes: int = 0
    reused_bytes: int = 0
    """Bytes of written files taken from files already in the destination instead of fetched."""
    failures: list[tuple[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return {
            "files": self.files, "dirs": self.dirs, "symlinks": self.symlinks, "bytes": self.bytes,
            "written": self.written, "unchanged": self.unchanged, "deleted": self.deleted,
            "meta_fixed": self.meta_fixed, "written_bytes": self.written_bytes, "reused_bytes": self.reused_bytes,
        }


class _Done(NamedTuple):
    """What a file worker did: the file's size, whether it was written, bytes reused, metadata
    fixed, bytes it wrote when it patched the file in place (-1: written whole)."""

    size: int
    written: bool
    reused: int = 0
    meta_fixed: bool = False
    patched: int = -1


class _Budget:
    """Bytes the walk may have fetched ahead of the small-file writers: :meth:`take` waits until
    what is held leaves room (or nothing is held, so that one directory larger than the whole
    budget still goes through); the writers :meth:`give` it back, so the walk never waits on itself."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._held = 0
        self._room = threading.Condition()

    def take(self, nbytes: int) -> int:
        with self._room:
            while self._held and self._held + nbytes > self._limit:
                self._room.wait()
            self._held += nbytes
        return nbytes

    def give(self, nbytes: int) -> None:
        if nbytes:
            with self._room:
                self._held -= nbytes
                self._room.notify_all()


class Restorer:
    def __init__(
        self,
        repo: Repository,
        *,
        overwrite: bool = False,
        same_permissions: bool = False,
        workers: int = 4,
        progress: ProgressFn | None = None,
        select: Callable[[str, Entry], bool] | None = None,
        delete: bool = False,
        trust_mtime: bool = False,
        in_place: bool = False,
    ) -> None:
        """``select(path, entry)``, if given, says whether to restore an entry (``path`` relative to
        the destination); it is asked about a directory's entries when the directory is entered.
        ``delete`` (with ``overwrite``): remove what the tree lacks. ``trust_mtime``: an existing
        file whose size and mtime equal the entry's is taken as matching without reading it.
        ``in_place``: a file of the entry's size holding at least half of its chunks at their
        offsets is patched in place (under an exclusive ``flock``) instead of written anew: less to
        write, but a reader, or a crash, may see it partly updated."""
        if delete and not overwrite:
            raise ConfigurationError("deleting what the execution lacks needs overwrite")
        if delete and select is not None:
            raise ConfigurationError("deleting what the execution lacks cannot be combined with a selection "
                                     "(--include/--exclude): it would delete what the selection left out")
        self.repo = repo
        self.select = select
        self.overwrite = overwrite
        self.delete = delete
        self.trust_mtime = trust_mtime
        self.in_place = in_place
        self.same_permissions = same_permissions
        self.progress = progress
        self.report = RestoreReport()
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="cas-restore")
        self._whole_pool = ThreadPoolExecutor(_WHOLE_THREADS, thread_name_prefix="cas-restore-whole")
        self._budget = _Budget(_FETCHED_AHEAD)
        self._comparers: ThreadPoolExecutor | None = None
        self._jobs: deque[_DirJob] = deque()
        self._removing: deque[_DirJob] = deque()
        self._writer = FileWriter(temporary_tag())
        self._remover = Remover()
        self._removals = ProcessRemover(self._remover)  # whole entries the tree lacks, beside the walk
        self._local = LocalChunks("")
        self._file_seq = itertools.count()
        self._lock = threading.Lock()
        self._dest = ""
        self._delete_root = True
        self._ahead = 0

    def restore(self, entries: list[Entry], dest: str, root_meta: tuple[int, int] | None) -> RestoreReport:
        """Restore ``entries`` into directory ``dest``; ``root_meta`` is (mode, mtime_ns) for ``dest``.

        Failures of single entries are collected in the report and the rest is restored; running out
        of space or descriptors aborts at once. Nothing is ever written outside ``dest``. With
        ``delete``, what ``dest`` holds besides ``entries`` is removed only for a whole tree
        (``root_meta`` given), not for one path restored into it.
        """
        self._dest = os.path.abspath(dest)
        self._local = LocalChunks(self._dest)
        self._delete_root = root_meta is not None
        dest_fd = self._open_destination(dest)
        try:
            with self.repo.lookups_on_one_connection():  # one lookup per directory: no checkout each
                self._restore_tree(dest_fd, entries)
            self._drain(0)
            if root_meta is not None and not self.report.failures:
                self._apply_dir_meta(dest_fd, root_meta[0], root_meta[1])
        finally:
            self._abandon()
            os.close(dest_fd)
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._whole_pool.shutdown(wait=True, cancel_futures=True)
            if self._comparers is not None:
                self._comparers.shutdown(wait=True)
            self._removals.close()
            self._remover.close()
        return self.report

    def _open_destination(self, dest: str) -> int:
        try:
            os.makedirs(dest, mode=0o700, exist_ok=True)
            fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))
        except NotADirectoryError:
            raise ConfigurationError(f"destination is not a directory: {dest}") from None
        except FileExistsError:
            raise ConfigurationError(f"destination is not a directory: {dest}") from None
        except OSError as exc:
            raise ConfigurationError(f"cannot use destination {dest}: {exc.strerror}") from None
        if not self.overwrite and os.listdir(fd):
            os.close(fd)
            raise AlreadyExists(f"destination {dest} is not empty; pass --overwrite to restore into it")
        return fd

    def _restore_tree(self, dest_fd: int, entries: list[Entry]) -> None:
        """Restore ``entries`` into ``dest_fd`` depth first, without recursion (a stored tree may be
        of any depth).

        Each directory's entries are created and its files handed to the pool when the walk enters
        it; the directory is queued to be finished (files awaited, mode and mtime applied, descriptor
        closed) once its subdirectories are done. There is no barrier per directory: files of many
        directories are written at once, and a directory is finished once it is among the oldest
        queued (at most :data:`_OPEN_DIRS` wait). Only a directory's own entries change its mtime,
        so it can be finished before its subtrees. Of the directories on the walk's path, only the
        deepest :data:`_OPEN_ANCESTORS` stay open: a higher one has its files awaited and is closed,
        then reopened through ``..`` (checked to be the same directory) when the walk climbs back.

        The walk also looks ahead: the next subdirectories of the directory it is in are entered
        before their turn (at most :data:`_LOOK_AHEAD` at a time), so that a large file in a small
        directory late in the walk (a model next to thousands of packages) is not left for last.
        """
        stack: list[_Level] = []
        self._ahead = 0
        try:
            stack.append(self._start_dir(_DirJob(dest_fd, False, None), entries, ""))
            while stack:
                level = stack[-1]
                if level.next < len(level.subdirs):
                    self._look_ahead(level)
                    index = level.next
                    level.next += 1
                    if index in level.started:
                        child = level.started.pop(index)
                        self._ahead -= child is not None
                    else:
                        entry, path = level.subdirs[index]
                        assert level.job.fd is not None
                        child = self._enter(level.job.fd, entry, path, level.trees)
                        level.ahead = max(level.ahead, level.next)
                    if child is not None:
                        stack.append(child)
                        if len(stack) > _OPEN_ANCESTORS:
                            self._release(stack[-_OPEN_ANCESTORS - 1].job)
                    continue
                if len(stack) > 1 and stack[-2].job.fd is None:
                    self._reopen(stack[-2].job, level.job)
                stack.pop()
                self._jobs.append(level.job)
                self._drain(_OPEN_DIRS)
        except BaseException:
            for level in reversed(stack):
                for ahead in level.started.values():
                    if ahead is not None:
                        self._finish(ahead.job, quiet=True)
                self._finish(level.job, quiet=True)
            raise

    def _look_ahead(self, level: _Level) -> None:
        """Enter the level's next subdirectories not yet entered, within :data:`_LOOK_AHEAD`."""
        level.ahead = max(level.ahead, level.next)
        while level.ahead < len(level.subdirs) and self._ahead < _LOOK_AHEAD:
            entry, path = level.subdirs[level.ahead]
            assert level.job.fd is not None
            child = self._enter(level.job.fd, entry, path, level.trees)
            level.started[level.ahead] = child
            level.ahead += 1
            self._ahead += child is not None

    def _enter(self, parent_fd: int, entry: Entry, path: str, trees: dict[str, BlobLocation]) -> _Level | None:
        """Open the subdirectory ``entry`` and create its entries; None if that failed (recorded)."""
        try:
            fd = os.open(entry.name, _DIR_FLAGS, dir_fd=parent_fd)
        except OSError as exc:
            self._fail(path, exc)
            return None
        try:
            st = os.fstat(fd)
            if st.st_mode & 0o700 != 0o700:
                os.fchmod(fd, 0o700)
            children = self.repo.read_tree(entry.tree, trees.get(entry.tree))
        except (CasError, OSError) as exc:
            os.close(fd)
            self._fail(path, exc)
            return None
        self.report.dirs += 1
        job = _DirJob(fd, True, (entry.mode, entry.mtime_ns), ident=(st.st_dev, st.st_ino))
        return self._start_dir(job, children, path + "/")

    def _start_dir(self, job: _DirJob, entries: list[Entry], prefix: str) -> _Level:
        """Create a directory's entries (its files on the pool); the job is finished here on error."""
        dir_fd = job.fd
        assert dir_fd is not None
        if self.select is not None:
            entries = [e for e in entries if self.select(prefix + e.name, e)]
        ahead = 0
        try:
            present: dict[str, os.stat_result] = {}
            matched: set[str] = set()
            if self.overwrite:
                present, matched = self._survey(job, entries, prefix)
            if present and self.trust_mtime:
                matched |= self._match_in_place(dir_fd, entries, present)
            # One index query for this directory: the chunks of its files still to write (and of
            # matched ones whose chunks are recorded as local) and its subdirectories' trees.
            locations = self.repo.locate(
                c for e in entries for c in (
                    (e.chunks if len(e.chunks) > 1 or e.name not in matched else ())
                    if e.type == FILE else (e.tree,) if e.type == DIR else ())
            )
            if matched:
                for entry in entries:
                    if entry.name in matched:
                        self._local.add_file(prefix + entry.name, entry, locations)
            # Sequence numbers (and expected chunks of files that may match) before any prefetch.
            tasks = {e.name: self._file_task(e, present.get(e.name))
                     for e in entries if e.type == FILE and e.name not in matched}
            # A file in place (which may match, or hold some of the chunks) is read before anything
            # is fetched for it; so are chunks this restore found in the destination.
            small = [locations[c] for e in entries if e.type == FILE and e.size <= _PREFETCH_FILE_SIZE
                     and not _is_file(present.get(e.name))
                     for c in e.chunks if c in locations and c not in self._local
                     and (self.repo.chunk_cache is None or c not in self.repo.chunk_cache)]
            if len(small) > 1:
                # Fetched data waits in memory for its writers: the walk stays within a budget.
                ahead = self._budget.take(sum(loc.raw_length for loc in small))
            prefetched = prefetch(self.repo, small) if len(small) > 1 else None
            subdirs: list[tuple[Entry, str]] = []
            batch: list[tuple[Entry, str, int]] = []
            batch_bytes = 0
            whole: list[tuple[Entry, str]] = []
            for entry in entries:
                path = prefix + entry.name
                try:
                    if entry.type == DIR:
                        self._make_directory(dir_fd, entry, path, present.get(entry.name))
                        subdirs.append((entry, path))
                    elif entry.type == SYMLINK:
                        self._symlink(dir_fd, entry, path, present.get(entry.name))
                    elif entry.name in matched:
                        pass
                    elif prefetched and not tasks[entry.name][1] and len(entry.chunks) <= 1 and (
                            not entry.chunks or entry.chunks[0] in prefetched):
                        whole.append((entry, path))  # one piece, fetched already, nothing in place
                    elif prefetched and not tasks[entry.name][1] and all(c in prefetched for c in entry.chunks):
                        # Fetched already, nothing in place: written with other small files by one task.
                        batch.append((entry, path, tasks[entry.name][0]))
                        batch_bytes += entry.size
                        if len(batch) >= _BATCH_FILES or batch_bytes >= _BATCH_BYTES:
                            self._submit_batch(job, batch, locations, prefetched)
                            batch, batch_bytes = [], 0
                    else:
                        job.pending.append(([path], self._pool.submit(
                            self._one_file, dir_fd, entry, path, locations, prefetched, *tasks[entry.name])))
                except (CasError, OSError) as exc:
                    self._fail(path, exc)
            if batch:
                self._submit_batch(job, batch, locations, prefetched)
            for i in range(0, len(whole), _WHOLE_FILES):
                part = whole[i:i + _WHOLE_FILES]
                held = min(ahead, sum(e.size for e, _ in part))
                ahead -= held
                if len(part) <= _WHOLE_INLINE:
                    done: Future[list[_Done | BaseException]] = Future()
                    done.set_result(self._write_whole(dir_fd, part, prefetched, held))
                    job.pending.append(([p for _, p in part], done))
                else:
                    job.pending.append(([p for _, p in part], self._whole_pool.submit(
                        self._write_whole, dir_fd, part, prefetched, held)))
            self._budget.give(ahead)  # what no small-file task holds (few bytes, written by the pool)
            ahead = 0
        except BaseException:
            self._budget.give(ahead)
            self._finish(job, quiet=True)
            raise
        trees = {e.tree: locations[e.tree] for e, _ in subdirs if e.tree in locations}
        return _Level(job, subdirs, trees)

    def _submit_batch(
        self, job: _DirJob, batch: list[tuple[Entry, str, int]], locations: dict,  # type: ignore[type-arg]
        prefetched: dict | None,  # type: ignore[type-arg]
    ) -> None:
        assert job.fd is not None
        job.pending.append(([p for _, p, _ in batch], self._pool.submit(
            self._batch, job.fd, batch, locations, prefetched)))

    def _batch(
        self, dir_fd: int, batch: list[tuple[Entry, str, int]], locations: dict,  # type: ignore[type-arg]
        prefetched: dict | None,  # type: ignore[type-arg]
    ) -> list[_Done | BaseException]:
        """Write several small files of one directory, already fetched: one task instead of one per
        file. Each file's failure is its own."""
        out: list[_Done | BaseException] = []
        for entry, path, seq in batch:
            try:
                out.append(self._file(dir_fd, entry, path, locations, prefetched, seq))
            except (CasError, OSError) as exc:
                out.append(exc)
        return out

    def _write_whole(
        self, dir_fd: int, files: list[tuple[Entry, str]], prefetched: dict[str, bytes], held: int,
    ) -> list[_Done | BaseException]:
        """Write small files of one directory whose whole content is one chunk fetched already (or
        none), with nothing in their place: the fewest calls and Python work per file. Each file's
        failure is its own. ``held`` bytes of the walk's budget are given back once done."""
        try:
            return self._write_whole_files(dir_fd, files, prefetched)
        finally:
            self._budget.give(held)

    def _write_whole_files(
        self, dir_fd: int, files: list[tuple[Entry, str]], prefetched: dict[str, bytes],
    ) -> list[_Done | BaseException]:
        out: list[_Done | BaseException] = []
        for entry, path in files:
            try:
                data = prefetched[entry.chunks[0]] if entry.chunks else b""
                if len(data) != entry.size:
                    raise IntegrityError(f"{path}: restored {len(data)} bytes, the tree records {entry.size}")
                # The chunk was verified against its ID; a one-chunk file's digest is that ID.
                if (entry.chunks[0] if entry.chunks else _EMPTY_DIGEST) != entry.digest:
                    raise IntegrityError(f"{path}: content does not match the file's recorded BLAKE3")
                tmp = self._writer.write_whole(dir_fd, entry.name, data, self._mode(entry.mode), entry.mtime_ns)
                if tmp is not None:
                    try:
                        self._place(dir_fd, tmp, entry.name, path)
                    except BaseException:
                        unlink_quietly(dir_fd, tmp)
                        raise
                if self.overwrite:
                    self._local.add_file(path, entry, {})
                out.append(_Done(entry.size, True))
            except (CasError, OSError) as exc:
                out.append(exc)
        return out

    def _one_file(self, *args: object) -> list[_Done | BaseException]:
        return [self._file(*args)]  # type: ignore[arg-type]

    def _release(self, job: _DirJob) -> None:
        """Close an ancestor's descriptor to bound how many are open, after its files are written
        (a worker must never use a closed, possibly reused, descriptor)."""
        if not job.owned or job.fd is None:
            return
        fatal = self._settle(job)
        os.close(job.fd)
        job.fd = None
        if fatal is not None:
            raise fatal

    def _reopen(self, job: _DirJob, child: _DirJob) -> None:
        """Reopen a released directory through its child's ``..``, refusing another directory."""
        assert child.fd is not None
        fd = os.open("..", _DIR_FLAGS, dir_fd=child.fd)
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != job.ident:
            os.close(fd)
            raise Unavailable("restore stopped: a directory of the destination was moved during the restore")
        job.fd = fd

    def _drain(self, keep: int) -> None:
        """Finish queued directories until ``keep`` are left (0: all). A directory whose removals
        still run is set aside instead, and finished once they are done (its mode and mtime then
        set after them), so that the walk goes on while a large subtree is deleted; at most
        :data:`_OPEN_REMOVING` wait so."""
        while len(self._jobs) > keep:
            job = self._jobs.popleft()
            if keep and any(not removal.done() for _, removal in job.removals):
                self._removing.append(job)
            else:
                self._finish(job)
        waiting = len(self._removing)
        for _ in range(waiting):
            job = self._removing.popleft()
            if not keep or waiting > _OPEN_REMOVING or all(removal.done() for _, removal in job.removals):
                self._finish(job)
                waiting -= 1
            else:
                self._removing.append(job)

    def _abandon(self) -> None:
        """After a fatal error: wait for whatever is still being written, close every descriptor."""
        while self._jobs or self._removing:
            self._finish((self._jobs or self._removing).popleft(), quiet=True)

    def _finish(self, job: _DirJob, *, quiet: bool = False) -> None:
        """Wait for *every* file of the directory before closing its descriptor (a worker must never
        use a closed, possibly reused, descriptor); a fatal error is raised after, unless ``quiet``."""
        fatal: BaseException | None = None
        try:
            fatal = self._settle(job)
            if fatal is None and not quiet and job.meta is not None and job.fd is not None:
                try:
                    self._apply_dir_meta(job.fd, *job.meta)
                except OSError as exc:
                    self._fail("(directory)", exc)
        finally:
            if job.owned and job.fd is not None:
                os.close(job.fd)
                job.fd = None
        if fatal is not None and not quiet:
            raise fatal

    def _settle(self, job: _DirJob) -> BaseException | None:
        """Wait for the directory's files and record them; the first fatal error is returned."""
        fatal: BaseException | None = None
        removals, job.removals = job.removals, []
        for path, removal in removals:
            try:
                removed = removal.result()
                with self._lock:  # file workers count the directories they remove in the way too
                    self.report.deleted += removed
            except BaseException as exc:  # noqa: BLE001 - a fatal one is re-raised once all files are done
                fatal = self._absorb(path, exc, fatal)
        pending, job.pending = job.pending, []
        for paths, future in pending:
            try:
                results = future.result()
            except BaseException as exc:  # noqa: BLE001 - recorded for each of its files below
                results = [exc] * len(paths)
            for path, done in zip(paths, results):
                fatal = self._record(path, done, fatal)
        return fatal

    def _record(self, path: str, done: _Done | BaseException, fatal: BaseException | None) -> BaseException | None:
        """Count a file's outcome in the report; returns the first fatal error so far."""
        try:
            if isinstance(done, BaseException):
                raise done
            self.report.bytes += done.size
            self.report.files += 1
            if done.written:
                self.report.written += 1
                self.report.written_bytes += done.size if done.patched < 0 else done.patched
                self.report.reused_bytes += done.reused
            else:
                self.report.unchanged += 1
                self.report.meta_fixed += done.meta_fixed
            if self.progress:
                self.progress(self.report.files, self.report.bytes)
        except BaseException as exc:  # noqa: BLE001 - a fatal one is re-raised once all files are done
            fatal = self._absorb(path, exc, fatal)
        return fatal

    def _absorb(self, path: str, exc: BaseException, fatal: BaseException | None) -> BaseException | None:
        """An entry's failure: a cas or OS error is recorded against ``path`` (an unavailable
        repository stops the restore); anything else is fatal. Returns the first fatal error so far."""
        if isinstance(exc, (CasError, OSError)):
            try:
                self._fail(path, exc)
            except Unavailable as stop:
                return fatal or stop
            return fatal
        return fatal or exc

    def _survey(
        self, job: _DirJob, entries: list[Entry], prefix: str
    ) -> tuple[dict[str, os.stat_result], set[str]]:
        """What the directory holds (lstat, by name), less the small files found matching their
        entries, and the names of those. Without ``trust_mtime`` a regular file in place of a file
        entry of at most :data:`_COMPARE_AT_ONCE` bytes is compared as it is listed (see
        ``match_whole``: its ``fstat`` stands for the lstat if it differs), or, if its content is
        not in memory, after, on the comparer threads. Removes temporaries
        whose owner is gone and, with ``delete``, every entry the tree lacks here (live restores'
        temporaries excepted): on the pool, awaited with the directory's files."""
        dir_fd = job.fd
        assert dir_fd is not None
        wanted = {e.name: e for e in entries}
        present: dict[str, os.stat_result] = {}
        matched: set[str] = set()
        cold: list[Entry] = []
        compare = not self.trust_mtime
        delete_here = self.delete and bool(prefix or self._delete_root)
        with os.scandir(dir_fd) as listing:
            for item in listing:
                name = item.name
                entry = wanted.get(name)
                if entry is None and not name.startswith(TMP_PREFIX):
                    if delete_here:  # no lstat: the remover looks for itself
                        removal = self._removals.submit(dir_fd, name)
                        job.removals.append((prefix + name, removal))
                    continue
                if (compare and entry is not None and entry.type == FILE and entry.size <= _COMPARE_AT_ONCE
                        and item.is_file(follow_symlinks=False)):
                    try:
                        matches, fixed, st = match_whole(dir_fd, entry, self._mode(entry.mode), nowait=True)
                    except OSError:  # unreadable: left to a file worker, which tries again and reports it
                        matches, st = False, None
                    if matches is None:
                        cold.append(entry)
                        continue
                    if matches:
                        matched.add(name)
                        self._count_match(entry, fixed)
                        continue
                    if st is not None:
                        present[name] = st
                        continue
                try:
                    st = item.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if entry is not None:
                    present[name] = st
                elif is_abandoned(name, st):
                    self._remove(dir_fd, name, prefix + name, counted=False)
        if cold:
            self._compare_cold(dir_fd, cold, present, matched)
        return present, matched

    def _compare_cold(
        self, dir_fd: int, entries: list[Entry], present: dict[str, os.stat_result], matched: set[str]
    ) -> None:
        """Compare small files whose content is not in memory on the comparer threads, a share of
        the directory's each, and wait for them; add each to ``matched`` or ``present``."""
        if self._comparers is None:
            self._comparers = ThreadPoolExecutor(_COLD_THREADS, thread_name_prefix="cas-restore-compare")
        parts = min(_COLD_THREADS, len(entries))
        futures = [self._comparers.submit(self._compare_files, dir_fd, entries[i::parts]) for i in range(parts)]
        wait(futures)  # all of them, before anything is raised: they read through ``dir_fd``
        for future in futures:
            for entry, matches, fixed, st in future.result():
                if matches:
                    matched.add(entry.name)
                    self._count_match(entry, fixed)
                    continue
                if st is None:
                    try:
                        st = os.stat(entry.name, dir_fd=dir_fd, follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                present[entry.name] = st

    def _compare_files(
        self, dir_fd: int, entries: list[Entry]
    ) -> list[tuple[Entry, bool | None, bool, os.stat_result | None]]:
        out: list[tuple[Entry, bool | None, bool, os.stat_result | None]] = []
        for entry in entries:
            try:
                out.append((entry, *match_whole(dir_fd, entry, self._mode(entry.mode))))
            except OSError:  # unreadable: left to a file worker, which tries again and reports it
                out.append((entry, False, False, None))
        return out

    def _remove(self, dir_fd: int, name: str, path: str, *, counted: bool = True) -> None:
        try:
            removed = self._remover.remove(dir_fd, name)
        except OSError as exc:
            self._fail(path, exc)
            return
        if counted:
            with self._lock:
                self.report.deleted += removed

    def _make_directory(self, parent_fd: int, entry: Entry, path: str, present: os.stat_result | None = None) -> None:
        if present is not None and stat.S_ISDIR(present.st_mode):
            self.report.unchanged += 1  # opened with O_NOFOLLOW next: if swapped meanwhile, that fails
            return
        for _attempt in range(3):  # another restore may be replacing the same entry meanwhile
            try:
                os.mkdir(entry.name, 0o700, dir_fd=parent_fd)
                self.report.written += 1
                return
            except FileExistsError:
                if not self.overwrite:
                    raise AlreadyExists(f"{path} already exists in the destination") from None
            try:
                st = os.stat(entry.name, dir_fd=parent_fd, follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    self.report.unchanged += 1
                    return
                os.unlink(entry.name, dir_fd=parent_fd)  # removes a link or file, never what it points at
            except FileNotFoundError:
                pass
        raise AlreadyExists(f"{path} keeps being replaced in the destination by another process")

    def _symlink(self, dir_fd: int, entry: Entry, path: str, present: os.stat_result | None = None) -> None:
        if present is not None and stat.S_ISLNK(present.st_mode):
            try:
                same = os.readlink(entry.name, dir_fd=dir_fd) == entry.target
            except OSError:
                same = False
            if same:
                if present.st_mtime_ns != entry.mtime_ns:
                    os.utime(entry.name, ns=(entry.mtime_ns, entry.mtime_ns), dir_fd=dir_fd, follow_symlinks=False)
                    self.report.meta_fixed += 1
                self.report.symlinks += 1
                self.report.unchanged += 1
                return
        tmp = self._writer.temporary_name()
        os.symlink(entry.target, tmp, dir_fd=dir_fd)
        try:
            os.utime(tmp, ns=(entry.mtime_ns, entry.mtime_ns), dir_fd=dir_fd, follow_symlinks=False)
            self._place(dir_fd, tmp, entry.name, path)
        except BaseException:
            unlink_quietly(dir_fd, tmp)
            raise
        self.report.symlinks += 1
        self.report.written += 1

    def _match_in_place(self, dir_fd: int, entries: list[Entry], present: dict[str, os.stat_result]) -> set[str]:
        """With ``trust_mtime``, files found matching without a file worker: those the lstat already
        proves (size, mtime and mode equal) and small ones, hashed. Returns their names. The others
        are compared by the file workers."""
        matched: set[str] = set()
        to_hash: list[Entry] = []
        for entry in entries:
            st = present.get(entry.name)
            if entry.type != FILE or not _is_file(st) or st is None or st.st_size != entry.size:
                continue
            trusted = self.trust_mtime and st.st_mtime_ns == entry.mtime_ns
            if trusted and stat.S_IMODE(st.st_mode) == self._mode(entry.mode):
                matched.add(entry.name)
                self._count_match(entry, False)
            elif trusted or entry.size <= _COMPARE_AT_ONCE:
                to_hash.append(entry)
        return matched | self._compared(self._compare(dir_fd, to_hash))

    def _compare(self, dir_fd: int, entries: list[Entry]) -> list[tuple[Entry, bool]]:
        """Compare files in place with their entries: the matches (their metadata fixed) with whether
        it was. A file that cannot be read is left to a file worker, which tries again and reports it."""
        out: list[tuple[Entry, bool]] = []
        for entry in entries:
            try:
                found = examine_file(dir_fd, entry, self._mode(entry.mode), trust_mtime=self.trust_mtime, config=None)
            except OSError:
                continue
            if found.matches:
                out.append((entry, found.meta_fixed))
        return out

    def _compared(self, results: list[tuple[Entry, bool]]) -> set[str]:
        """Count the matches of ``_compare`` (``(entry, metadata fixed)``); their names."""
        for entry, fixed in results:
            self._count_match(entry, fixed)
        return {entry.name for entry, _ in results}

    def _count_match(self, entry: Entry, fixed: bool) -> None:
        self.report.files += 1
        self.report.bytes += entry.size
        self.report.unchanged += 1
        self.report.meta_fixed += fixed
        if self.progress:
            self.progress(self.report.files, self.report.bytes)

    def _file_task(self, entry: Entry, present: os.stat_result | None) -> tuple[int, bool, threading.Event | None]:
        """A file's task arguments: its sequence number, whether a file is in place, and for one that
        is likely to match (same size), the event its comparison sets (see LocalChunks.expect)."""
        seq = next(self._file_seq)
        exists = _is_file(present)
        compared = None
        if exists and present is not None and present.st_size == entry.size:
            compared = self._local.expect(entry, seq)
        return seq, exists, compared

    def _file(
        self, dir_fd: int, entry: Entry, path: str, locations: dict,  # type: ignore[type-arg]
        prefetched: dict | None, seq: int = 0, exists: bool = False,  # type: ignore[type-arg]
        compared: threading.Event | None = None,
    ) -> _Done:
        old: OldFile | None = None
        if exists:
            try:
                lengths = [locations[c].raw_length for c in entry.chunks if c in locations]
                known = len(lengths) == len(entry.chunks) and sum(lengths) == entry.size
                found = examine_file(dir_fd, entry, self._mode(entry.mode), trust_mtime=self.trust_mtime,
                                     config=self.repo.config, lengths=lengths if known else None,
                                     lock=self.in_place and known)
                if found.matches:
                    self._local.add_file(path, entry, locations)
                    return _Done(entry.size, False, meta_fixed=found.meta_fixed)
                old = found.old
            finally:
                if compared is not None:
                    compared.set()
        try:
            if old is not None and self.in_place and old.aligned_bytes * 2 >= entry.size > 0:
                patched = self._patch(dir_fd, entry, path, locations, prefetched, old, seq)
                if patched is not None:
                    return patched
            return self._write_file(dir_fd, entry, path, locations, prefetched, old, seq)
        finally:
            if old is not None:
                old.close()

    def _patch(
        self, dir_fd: int, entry: Entry, path: str, locations: dict,  # type: ignore[type-arg]
        prefetched: dict | None, old: OldFile, seq: int,  # type: ignore[type-arg]
    ) -> _Done | None:
        """Patch the file in place (see ``in_place``); None if it was replaced meanwhile."""
        lengths = [locations[c].raw_length for c in entry.chunks]
        sources: list[OldFile | TaskView] = [old, self._local.for_task(seq)]
        reused = [0]

        def chunk_data(ids: list[str]) -> Iterator[bytes]:
            sub = replace(entry, chunks=tuple(ids))
            remote: list[str] = []
            for chunk_id in ids:
                data = next((d for d in (src.read(chunk_id) for src in sources) if d is not None), None)
                if data is None:
                    remote.append(chunk_id)
                    continue
                if remote:
                    yield from file_chunks(self.repo, replace(sub, chunks=tuple(remote)), locations, path, prefetched)
                    remote = []
                reused[0] += len(data)
                yield data
            if remote:
                yield from file_chunks(self.repo, replace(sub, chunks=tuple(remote)), locations, path, prefetched)

        try:
            written = patch_in_place(dir_fd, entry, path, old, lengths, self._mode(entry.mode), chunk_data)
        except FileChangedError:
            return None
        self._local.add_file(path, entry, locations)
        return _Done(entry.size, True, old.aligned_bytes + reused[0], patched=written)

    def _write_file(
        self, dir_fd: int, entry: Entry, path: str, locations: dict,  # type: ignore[type-arg]
        prefetched: dict | None, old: OldFile | None, seq: int = 0,  # type: ignore[type-arg]
    ) -> _Done:
        sources: list[OldFile | TaskView] = [old] if old is not None else []
        if self.overwrite:
            sources.append(self._local.for_task(seq))
        reused = [0]
        mode = self._mode(entry.mode)
        fd, tmp, mode_set = self._writer.create(dir_fd, mode)
        try:
            try:
                preallocate = entry.size >= PREALLOCATE_FROM and not has_zero_runs(entry, locations)
                pieces = content(self.repo, entry, locations, path, prefetched, sources, reused)
                try:
                    written = write_content(fd, entry, pieces, path, preallocate=preallocate)
                except IntegrityError:
                    if old is None:
                        raise
                    # The file being replaced changed while its ranges were copied: start again
                    # without it (every chunk then verified as it is read).
                    os.ftruncate(fd, 0)
                    os.lseek(fd, 0, os.SEEK_SET)
                    sources, reused[0] = sources[1:], 0
                    pieces = content(self.repo, entry, locations, path, prefetched, sources, reused)
                    written = write_content(fd, entry, pieces, path, preallocate=preallocate)
                set_metadata(fd, entry, mode, mode_set)
                if tmp is None:
                    tmp = self._writer.link(fd, dir_fd, entry.name)
            finally:
                os.close(fd)
            if tmp is not None:
                self._place(dir_fd, tmp, entry.name, path)
        except BaseException:
            if tmp is not None:
                unlink_quietly(dir_fd, tmp)
            raise
        if self.overwrite:
            self._local.add_file(path, entry, locations)
        return _Done(written, True, reused[0])

    def _place(self, dir_fd: int, tmp: str, name: str, path: str) -> None:
        """Rename a finished temporary into place. Without ``overwrite`` the destination was empty
        when the restore began and tree names are unique, so a name can only exist here if some
        other process made it meanwhile; rename replaces that entry (never writes through it)."""
        place(dir_fd, tmp, name, path, (lambda: self._remove(dir_fd, name, path)) if self.delete else None)

    def _apply_dir_meta(self, fd: int, mode: int, mtime_ns: int) -> None:
        st = os.fstat(fd)  # cheaper than setting what is already so (an unchanged directory)
        if stat.S_IMODE(st.st_mode) != self._mode(mode):
            os.fchmod(fd, self._mode(mode))
        if st.st_mtime_ns != mtime_ns:
            os.utime(fd, ns=(mtime_ns, mtime_ns))

    def _mode(self, mode: int) -> int:
        return mode if self.same_permissions else mode & ~(stat.S_ISUID | stat.S_ISGID)

    def _fail(self, path: str, exc: BaseException) -> None:
        if isinstance(exc, OSError) and not isinstance(exc, CasError):
            if exc.errno in FATAL_ERRNOS:
                raise Unavailable(f"restore stopped at {path}: {exc.strerror}") from None
            message = f"{path}: {exc.strerror or exc}"
        else:
            message = str(exc)
        self.report.failures.append((path, message))


def failure_error(report: RestoreReport) -> PartialRestore:
    shown = "; ".join(msg for _path, msg in report.failures[:5])
    more = f" (and {len(report.failures) - 5} more)" if len(report.failures) > 5 else ""
    return PartialRestore(f"{len(report.failures)} entries could not be restored: {shown}{more}", report.failures)


def _is_file(present: os.stat_result | None) -> bool:
    return present is not None and stat.S_ISREG(present.st_mode)
