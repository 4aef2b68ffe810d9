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
:mod:`cas.ops.restore.local` for when a file matches and which local chunks are reused), only what
differs is written, and with ``delete`` what the tree lacks is removed. Concurrent restores into one
destination each write whole files under names no other restore removes; the last rename wins.

This module holds :class:`Restorer` and its walk: the destination opened, the tree walked directory
by directory, and each directory's entries dispatched. Its parts live beside it, one job each:
:mod:`cas.ops.restore.survey` (what a directory already holds, with ``overwrite``),
:mod:`cas.ops.restore.records` (what a restore records of the directories it finished, and the
matches those records spare),
:mod:`cas.ops.restore.entries` (an entry made or a file written), :mod:`cas.ops.restore.finish`
(directories finished: files awaited, mode and mtime applied), over :mod:`cas.ops.restore.state`
(what they share) and :mod:`cas.ops.restore.report` (what a restore returns).
"""

from __future__ import annotations

import itertools
import os
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from cas.errors import AlreadyExists, CasError, ConfigurationError
from cas.format.trees import DIR, FILE, SYMLINK, Entry
from cas.ops.restore.create import FileWriter
from cas.ops.restore.delete import Remover
from cas.ops.restore.delete_process import ProcessRemover
from cas.ops.restore.entries import EntryWriting
from cas.ops.restore.finish import DirectoryFinishing
from cas.ops.restore.hash_ahead import HashAhead
from cas.ops.restore.local import LocalChunks
from cas.ops.restore.report import Done, ProgressFn, RestoreReport
from cas.ops.restore.state import DIR_FLAGS, Budget, DirJob, is_file
from cas.ops.restore.survey import DestinationSurvey
from cas.ops.restore.temps import temporary_tag
from cas.ops.restore.write_process import ProcessWriter, write_batch
from cas.repo.filescache import FilesRecorder
from cas.repo.reader import prefetch, read_trees
from cas.repo.repository import Repository
from cas.types import BlobLocation

_OPEN_DIRS = 64
_OPEN_ANCESTORS = 64
#: Subdirectories entered ahead of the walk (their files already on the pool) at any time.
_LOOK_AHEAD = 16
#: Directories whose trees are read, and whose files' chunks and subdirectories' trees are located
#: (one index query per level of them), before the walk enters them; at most this many entries in
#: them (a directory of thousands of files makes a large query of its own: nothing to gain).
_LOCATE_AHEAD = 64
_LOCATE_AHEAD_ENTRIES = 2048
#: Trees read ahead are read up to this many at a time (one request per stretch of a tree pack
#: among them), and no more than their stored sizes say the entries' bound leaves room for, at
#: :data:`_ENTRY_BYTES` or more a node's entry: a level of large directories is not all read for
#: the first few to be used.
_READ_TOGETHER = 16
_ENTRY_BYTES = 128
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
#: A fresh restore hands such files to a writer process (restore.write_process) once it has written
#: this many on its threads: a process costs about 14 MiB and pays off only over many files (the ML
#: workload's restore, about 8,000 files, was no faster with it; 100,000 small files 0.84x).
_PROCESS_AFTER = 10_000
#: Bytes of small files fetched and not yet written that the walk may have (one directory's more).
_FETCHED_AHEAD = 4 * 1024 * 1024
#: Files up to this size have their chunks fetched together, per directory (see reader.prefetch).
_PREFETCH_FILE_SIZE = 1024 * 1024


def _read_group(
    pending: list[tuple[str, BlobLocation | None]], first: int, entries_left: int
) -> list[tuple[str, BlobLocation | None]]:
    """The trees of ``pending`` from ``first`` to read together: at least one, at most
    :data:`_READ_TOGETHER`, and while their nodes' sizes leave room for ``entries_left`` entries."""
    room = entries_left * _ENTRY_BYTES
    end = first + 1
    room -= pending[first][1].raw_length if pending[first][1] is not None else room
    while end < len(pending) and end - first < _READ_TOGETHER:
        location = pending[end][1]
        if location is None or location.raw_length > room:
            break
        room -= location.raw_length
        end += 1
    return pending[first:end]


def _blob_ids(entry: Entry) -> tuple[str, ...]:
    """The blobs an entry names: a file's chunks, a directory's tree."""
    return entry.chunks if entry.type == FILE else (entry.tree,) if entry.type == DIR else ()


@dataclass(eq=False)
class _Level:
    """A directory on the walk's path: its subdirectories still to restore."""

    job: DirJob
    subdirs: list[tuple[Entry, str]]
    trees: dict[str, BlobLocation]
    next: int = 0
    ahead: int = 0
    """Subdirectories before this index have been entered (``started``, or walked already)."""
    started: dict[int, _Level | None] = field(default_factory=dict)
    """Subdirectories entered ahead of the walk (see ``_look_ahead``), by index; None: it failed."""



class Restorer(DestinationSurvey, EntryWriting, DirectoryFinishing):
    """One restore into one destination: its options and its walk. The parts it inherits (the
    survey, the writing of entries, the finishing of directories) act on the state set up here
    (declared by :class:`~cas.ops.restore.state.RestoreState`)."""

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
        recorder: FilesRecorder | None = None,
    ) -> None:
        """``select(path, entry)``, if given, says whether to restore an entry (``path`` relative to
        the destination); it is asked about a directory's entries when the directory is entered.
        ``delete`` (with ``overwrite``): remove what the tree lacks. ``trust_mtime``: an existing
        file whose size and mtime equal the entry's is taken as matching without reading it.
        ``in_place``: a file of the entry's size holding at least half of its chunks at their
        offsets is patched in place (under an exclusive ``flock``) instead of written anew: less to
        write, but a reader, or a crash, may see it partly updated. ``recorder``: where the files
        this restore creates are recorded as they are named (see ``_record_written``); the caller
        closes it."""
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
        self._budget = Budget(_FETCHED_AHEAD)
        self._comparers: ThreadPoolExecutor | None = None
        self._hash_ahead: HashAhead | None = None
        self._jobs: deque[DirJob] = deque()
        self._queued_files = 0
        self._removing: deque[DirJob] = deque()
        self._writer = FileWriter(temporary_tag())
        self._remover = Remover()
        self._removals = ProcessRemover(self._remover)  # whole entries the tree lacks, beside the walk
        self._whole_files = 0  # small files handed to the threads that write them whole
        self._write_child = ProcessWriter(  # a fresh restore's many small files
            self._writer.tag + "w", lambda dir_fd, files: self._whole_pool.submit(write_batch, self._writer, dir_fd, files))
        self._local = LocalChunks("")
        self._file_seq = itertools.count()
        self._lock = threading.Lock()
        self._located: dict[str, BlobLocation] = {}  # located ahead (``_locate_ahead``), until used
        self._read_ahead: dict[str, list[Entry]] = {}  # trees read ahead, by ID, until entered
        self._dest = ""
        self._recorder = recorder
        self._dest_dev = 0
        self._dir_records = {}
        self._subtrees = {}
        self._file_ids = None
        self._settled_before = self._racy_from = 0
        self._root: DirJob | None = None  # the destination's job, recorded last (see ``records``)
        self._delete_root = True
        self._ahead = 0

    def restore(
        self, entries: list[Entry] | None, dest: str, root_meta: tuple[int, int] | None, root_tree: str | None = None,
    ) -> RestoreReport:
        """Restore ``entries`` into directory ``dest``; ``root_meta`` is (mode, mtime_ns) for ``dest``,
        ``root_tree`` the tree ID of ``entries`` when they are a whole tree (``dest`` may then be
        recorded, see :mod:`cas.ops.restore.records`). ``entries`` None: the tree ``root_tree``'s,
        read here unless ``dest`` is as a restore of that tree recorded it (then nothing is read).

        Failures of single entries are collected in the report and the rest is restored; running out
        of space or descriptors aborts at once. Nothing is ever written outside ``dest``. With
        ``delete``, what ``dest`` holds besides ``entries`` is removed only for a whole tree
        (``root_meta`` given), not for one path restored into it.
        """
        self._dest = os.path.abspath(dest)
        self._local = LocalChunks(self._dest)
        self._delete_root = root_meta is not None
        dest_fd: int | None = None
        try:
            self._load_records()
            if entries is None:
                assert root_tree is not None and root_meta is not None
                if self._whole_already(root_tree, root_meta):
                    return self.report
                entries = self.repo.read_tree(root_tree)
            dest_fd = self._open_destination(dest)
            self._dest_dev = os.fstat(dest_fd).st_dev
            self._start_hash_ahead(dest_fd)
            with self.repo.lookups_on_one_connection():  # one lookup per directory: no checkout each
                self._restore_tree(dest_fd, entries, root_tree)
            self._drain(0)
            if root_meta is not None and not self.report.failures:
                self._apply_dir_meta(dest_fd, root_meta[0], root_meta[1])
                if self._root is not None:
                    self._record_directory(self._root)
        finally:
            self._abandon()
            if dest_fd is not None:
                os.close(dest_fd)
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._whole_pool.shutdown(wait=True, cancel_futures=True)
            if self._comparers is not None:
                self._comparers.shutdown(wait=True)
            if self._hash_ahead is not None:
                self._hash_ahead.close()
            self._removals.close()
            self._write_child.close()
            self._remover.close()
        return self.report

    def _whole_already(self, tree: str, meta: tuple[int, int]) -> bool:
        """Whether the destination, if it is a directory already, is as a restore of ``tree``
        recorded it (see :meth:`_match_destination`); nothing is created or read from the repository."""
        try:
            fd = os.open(self._dest, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))
        except OSError:
            return False
        try:
            return self._match_destination(fd, tree, meta)
        finally:
            os.close(fd)

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

    def _restore_tree(self, dest_fd: int, entries: list[Entry], root_tree: str | None = None) -> None:
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
            st = os.fstat(dest_fd)
            self._root = DirJob(dest_fd, False, None, ident=(st.st_dev, st.st_ino), tree=root_tree)
            stack.append(self._start_dir(self._root, entries, ""))
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
                self._queue(level.job)
                self._drain(_OPEN_DIRS)
        except BaseException:
            self._drop_queued()
            for level in reversed(stack):
                for ahead in level.started.values():
                    if ahead is not None:
                        self._finish(ahead.job, quiet=True)
                self._finish(level.job, quiet=True)
            raise

    def _look_ahead(self, level: _Level) -> None:
        """Enter the level's next subdirectories not yet entered, within :data:`_LOOK_AHEAD`."""
        level.ahead = max(level.ahead, level.next)
        self._locate_ahead(level)
        while level.ahead < len(level.subdirs) and self._ahead < _LOOK_AHEAD:
            entry, path = level.subdirs[level.ahead]
            assert level.job.fd is not None
            child = self._enter(level.job.fd, entry, path, level.trees)
            level.started[level.ahead] = child
            level.ahead += 1
            self._ahead += child is not None

    def _locate_ahead(self, level: _Level) -> None:
        """Read the trees of the directories the walk enters next below ``level`` (its next
        subdirectories, then theirs, breadth first, up to :data:`_LOCATE_AHEAD` directories and
        :data:`_LOCATE_AHEAD_ENTRIES` entries in them; a level's nodes read together, one request
        per stretch of a tree pack: :func:`~cas.repo.reader.read_trees`) and
        locate their subdirectories' trees, and the chunks of their files unless the destination
        may hold them already (``overwrite``: what to fetch is known only once a directory is
        surveyed), with one index query per level of them, for :meth:`_enter` and
        :meth:`_start_dir` to take: each would otherwise make a query per directory. Done when the
        next subdirectory has not been read ahead. A tree that cannot be read is left to
        :meth:`_enter`, which reports it."""
        start = level.ahead
        if start >= len(level.subdirs) or level.subdirs[start][0].tree in self._read_ahead:
            return
        if len(self._read_ahead) > 4 * _LOCATE_AHEAD:  # read ahead for directories never entered
            self._read_ahead.clear()
            self._located.clear()
        next_subdirs = level.subdirs[start : start + _LOCATE_AHEAD]
        frontier = [(e.tree, level.trees.get(e.tree)) for e, _path in next_subdirs]
        budget, entries_left = _LOCATE_AHEAD, _LOCATE_AHEAD_ENTRIES
        while frontier and budget > 0 and entries_left > 0:
            wanted: list[str] = []
            below: list[str] = []
            pending = [(tree, location) for tree, location in frontier[:budget] if tree not in self._read_ahead]
            first = 0
            while first < len(pending) and entries_left > 0:
                group = _read_group(pending, first, entries_left)
                first += len(group)
                read = read_trees(self.repo, group)
                for tree, _location in group:
                    entries = read.get(tree)
                    if entries is None:
                        continue
                    self._read_ahead[tree] = entries  # kept for _enter even past the bound: read already
                    if entries_left <= 0:
                        continue
                    budget -= 1
                    entries_left -= len(entries)
                    for e in entries:
                        if e.type == DIR:
                            wanted.append(e.tree)
                            below.append(e.tree)
                        elif e.type == FILE and not self.overwrite:
                            wanted.extend(e.chunks)
            if not wanted:
                break
            self._located.update(self.repo.locate(wanted))
            frontier = [(tree, self._located.get(tree)) for tree in below]

    def _enter(self, parent_fd: int, entry: Entry, path: str, trees: dict[str, BlobLocation]) -> _Level | None:
        """Open the subdirectory ``entry`` and create its entries; None if that failed (recorded)."""
        try:
            fd = os.open(entry.name, DIR_FLAGS, dir_fd=parent_fd)
        except OSError as exc:
            self._fail(path, exc)
            return None
        try:
            st = os.fstat(fd)
            if st.st_mode & 0o700 != 0o700:
                os.fchmod(fd, 0o700)
            children = self._read_ahead.pop(entry.tree, None)
            if children is None:
                children = self.repo.read_tree(entry.tree, trees.get(entry.tree))
        except (CasError, OSError) as exc:
            os.close(fd)
            self._fail(path, exc)
            return None
        self.report.dirs += 1
        job = DirJob(fd, True, (entry.mode, entry.mtime_ns), ident=(st.st_dev, st.st_ino), tree=entry.tree)
        return self._start_dir(job, children, path + "/")

    def _start_dir(self, job: DirJob, entries: list[Entry], prefix: str) -> _Level:
        """Create a directory's entries (its files on the pool); the job is finished here on error."""
        dir_fd = job.fd
        assert dir_fd is not None
        located = self._located
        ahead_found = {i: located.pop(i) for e in entries if located for i in _blob_ids(e) if i in located}
        if self.select is not None:
            entries = [e for e in entries if self.select(prefix + e.name, e)]
        job.prefix = prefix
        if job.tree is not None and self._file_ids is not None:  # to be recorded once finished
            job.file_entries = [e for e in entries if e.type == FILE]
            job.subdirs = [e.name for e in entries if e.type == DIR]
            job.only_files_and_dirs = len(job.file_entries) + len(job.subdirs) == len(entries)
            # No files nor subdirectories: nothing a record would spare, but the destination's own
            # record says whether it is as a restore left it (see ``_start_hash_ahead``).
            job.known = {} if job.file_entries or job.subdirs or not job.owned else None
        ahead = 0
        try:
            present: dict[str, os.stat_result] = {}
            matched: set[str] = set()
            if self.overwrite:
                present, matched = self._survey(job, entries, prefix)
            if present and self.trust_mtime:
                matched |= self._match_in_place(dir_fd, entries, present)
            elif present and self._recorder is not None:
                matched |= self._match_recorded(job, entries, present)
            # The chunks of its files still to write (and of matched ones whose chunks are recorded
            # as local) and its subdirectories' trees: located ahead (``_locate_ahead``), else in
            # one index query here.
            needed = [c for e in entries for c in (
                (e.chunks if len(e.chunks) > 1 or e.name not in matched else ())
                if e.type == FILE else (e.tree,) if e.type == DIR else ())]
            locations = {c: ahead_found[c] for c in needed if c in ahead_found}
            missing = [c for c in needed if c not in locations]
            if missing:
                locations.update(self.repo.locate(missing))
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
                     and not is_file(present.get(e.name))
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
                        if self._match_subtree(dir_fd, entry, path, present.get(entry.name)):
                            continue  # whole, as a restore of its tree left it: not entered
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
                    done: Future[list[Done | BaseException]] = Future()
                    done.set_result(self._write_whole(dir_fd, part, prefetched, held))
                    job.pending.append(([p for _, p in part], done))
                elif not self.overwrite and self._whole_files >= _PROCESS_AFTER:  # by the writer process
                    job.pending.append(([p for _, p in part], self._write_whole_in_child(dir_fd, part, prefetched, held)))
                else:
                    self._whole_files += len(part)
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
        self, job: DirJob, batch: list[tuple[Entry, str, int]], locations: dict,  # type: ignore[type-arg]
        prefetched: dict | None,  # type: ignore[type-arg]
    ) -> None:
        assert job.fd is not None
        job.pending.append(([p for _, p, _ in batch], self._pool.submit(
            self._batch, job.fd, batch, locations, prefetched)))
