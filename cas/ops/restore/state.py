"""The state one restore's parts share: the walk (:mod:`cas.ops.restore.walk`), the survey of what the
destination holds (:mod:`cas.ops.restore.survey`), the writing of entries
(:mod:`cas.ops.restore.entries`) and the finishing of directories (:mod:`cas.ops.restore.finish`).

:class:`RestoreState` declares the options, counters, pools and queues that
:class:`~cas.ops.restore.walk.Restorer` sets up, and the few steps every part takes: a mode as it is
applied, a failure recorded (or the restore stopped), an entry removed. :class:`DirJob` is a
directory being restored; :class:`Budget` bounds the bytes fetched ahead of the small-file writers.
"""

from __future__ import annotations

import itertools
import os
import stat
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from cas.errors import CasError, Unavailable
from cas.format.trees import Entry
from cas.ops.restore.create import FileWriter
from cas.ops.restore.delete import Remover
from cas.ops.restore.delete_process import ProcessRemover
from cas.ops.restore.hash_ahead import HashAhead
from cas.ops.restore.local import LocalChunks
from cas.ops.restore.report import Done, ProgressFn, RestoreReport
from cas.ops.restore.write import FATAL_ERRNOS
from cas.ops.restore.write_process import ProcessWriter
from cas.repo.filescache import DirRecord, FilesRecorder
from cas.repo.repository import Repository

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


@dataclass
class DirJob:
    fd: int | None
    """None while released (an ancestor far up the walk's path, see ``_restore_tree``)."""
    owned: bool
    meta: tuple[int, int] | None
    pending: list[tuple[list[str], Future[list[Done | BaseException]]]] = field(default_factory=list)
    """Files being written on the pool: a task writes one file, or several small ones (see ``_batch``)."""
    removals: list[tuple[str, Future[int]]] = field(default_factory=list)
    """Entries the tree lacks, being removed on the pool (``delete``): their counts of removed entries."""
    ident: tuple[int, int] = (0, 0)
    """``(st_dev, st_ino)``, to check a descriptor reopened through ``..`` (and to find what the
    child hashing ahead sent for it)."""
    files: int = 0
    """Files in :attr:`pending` when queued to be finished (counted against the queue's bound)."""
    tree: str | None = None
    """The directory's tree ID, when it may be recorded once finished (see :mod:`cas.ops.restore.records`)."""
    prefix: str = ""
    """Its path relative to the destination, with a trailing ``/`` (empty for the destination)."""
    file_entries: list[Entry] = field(default_factory=list)
    """Its file entries, in the tree's order (when it may be recorded)."""
    known: dict[str, tuple[int, int, int, int, int]] | None = None
    """Files found matching whose identity is known to hold their entry (when it may be recorded)."""
    subdirs: list[str] = field(default_factory=list)
    """Its subdirectories' names (when it may be recorded)."""
    only_files_and_dirs: bool = False
    """Whether its entries are all files and directories: its subtree may then be recorded too
    (see ``records``, "Subtree records")."""
    recorded: DirRecord | None = None
    """The record its files all matched by, if they did (recorded again as it is)."""
    where: bytes = b""
    """Its absolute path, as bytes, once asked for (see ``records``)."""



class Budget:
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


class RestoreState:
    """What the parts of a restore share; set up by :class:`~cas.ops.restore.walk.Restorer` (its ``__init__``)."""

    repo: Repository
    select: Callable[[str, Entry], bool] | None
    overwrite: bool
    delete: bool
    trust_mtime: bool
    in_place: bool
    same_permissions: bool
    progress: ProgressFn | None
    report: RestoreReport
    _pool: ThreadPoolExecutor
    """The file workers."""
    _whole_pool: ThreadPoolExecutor
    """The writers of small files fetched whole (see ``entries``)."""
    _budget: Budget
    _comparers: ThreadPoolExecutor | None
    """The comparers of files not in memory (see ``survey``), started when first needed."""
    _hash_ahead: HashAhead | None
    """The child hashing the destination's small files ahead of the walk (see ``survey``)."""
    _jobs: deque[DirJob]
    """Directories queued to be finished, oldest first."""
    _queued_files: int
    """The files of those directories (their :attr:`DirJob.files`)."""
    _removing: deque[DirJob]
    """Directories set aside to be finished once their removals are done."""
    _writer: FileWriter
    _remover: Remover
    _removals: ProcessRemover
    _write_child: ProcessWriter
    _local: LocalChunks
    _file_seq: itertools.count[int]
    _lock: threading.Lock
    """Guards the counts that pool threads add to (``report.deleted``)."""
    _dest: str
    _delete_root: bool
    """Whether ``delete`` applies to the destination itself (a whole tree is restored)."""
    _ahead: int
    """Subdirectories entered ahead of the walk, now (see ``Restorer._look_ahead``)."""
    _recorder: FilesRecorder | None
    """Where the files this restore creates are recorded (see :meth:`_record_written`), if anywhere."""
    _dest_dev: int
    """The destination's ``st_dev``, recorded with them."""
    _dir_records: dict[bytes, DirRecord]
    """What earlier restores recorded of the destination's directories, by path (see ``records``)."""
    _file_ids: dict[str, tuple[int, int]] | None
    """``(inode, ctime)`` of the files this restore wrote, or a file worker found matching by
    content once settled, by path, until their directory is recorded; None when no directory is
    (see ``records``)."""
    _subtrees: dict[str, tuple[tuple[int, int, int, int, int], bytes]]
    """Directories finished (or found whole) with a subtree digest, by their ``prefix``: their
    identity (size 0) and digest, until their parent is recorded (see ``records``)."""
    _settled_before: int
    """A file whose ctime is older than this had settled when the restore started."""
    _racy_from: int
    """An entry's mtime from this on is not trusted to be changed by a later write."""

    def _records(self, entry: Entry) -> bool:
        """Whether the file of ``entry``, once created, is recorded (:meth:`_record_written`)."""
        return self._file_ids is not None or (self._recorder is not None and entry.size >= self.repo.config.chunk_min)

    def _record_written(self, path: str, entry: Entry, inode: int, ctime_ns: int) -> None:
        """Record in the files cache that the file restored at ``path`` (relative to the
        destination), named and now ``inode`` with ``ctime_ns`` (taken by its descriptor once
        named), holds the entry's content: a later snapshot of the destination knows it unread
        while it keeps that identity (see :class:`~cas.repo.filescache.FilesRecorder`). Only files
        this restore created are recorded, never one it found in place, and only those a snapshot
        would cut into chunks (``chunk_min`` bytes or more): it reads a smaller file whole in one
        batched call, hardly more than the row costs to write (about 10 µs in SQLite, measured:
        recording all 23,000 files of the benchmark's execution made a fresh restore 15% slower).
        Every file's identity is kept for its directory's record (see ``records``)."""
        if self._file_ids is not None:
            self._file_ids[path] = (inode, ctime_ns)
        if self._recorder is None or entry.size < self.repo.config.chunk_min:
            return
        head, _, _ = path.rpartition("/")
        directory = os.fsencode(os.path.join(self._dest, head) if head else self._dest)
        assert self._recorder is not None
        self._recorder.add(
            directory, os.fsencode(entry.name), (entry.size, entry.mtime_ns, ctime_ns, inode, self._dest_dev),
            entry.digest, entry.chunks)

    def _remove(self, dir_fd: int, name: str, path: str, *, counted: bool = True) -> None:
        try:
            removed = self._remover.remove(dir_fd, name)
        except OSError as exc:
            self._fail(path, exc)
            return
        if counted:
            with self._lock:
                self.report.deleted += removed

    def _count_match(self, entry: Entry, fixed: bool) -> None:
        """Count a file found matching (``fixed``: its mode or mtime set) in the report."""
        self.report.files += 1
        self.report.bytes += entry.size
        self.report.unchanged += 1
        self.report.meta_fixed += fixed
        if self.progress:
            self.progress(self.report.files, self.report.bytes)

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


def is_file(present: os.stat_result | None) -> bool:
    return present is not None and stat.S_ISREG(present.st_mode)
