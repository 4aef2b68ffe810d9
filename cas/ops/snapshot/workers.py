"""A snapshot on several cores: subdirectories walked by worker processes and this one, the upper
levels here.

The per-file work of a snapshot (stat, open, read, cut, hash, tree entry, files-cache row) is
Python on one thread; only hashing and compression leave the GIL. So a large tree is split by
directory across processes:

* :func:`split_depth` lists the upper levels of the tree (names only, as ``getdents`` gives them)
  and picks the shallowest depth with enough directories to share out (:data:`_TASKS_PER_JOB` per
  job), or says the tree is too small to pay for starting processes (fewer than
  :data:`PARALLEL_MIN_NAMES` names found).
* :class:`WorkerPool` forks ``jobs - 1`` workers before this process starts any thread of the snapshot's
  own (its files cache is made first, so that several processes do not create the database at
  once), and each worker drops the index connections it inherited
  (``forget_inherited_connections``) and opens its own, and its own files-cache connection. A
  SQLite index is not loaded whole first: each process loads SQLAlchemy only if it writes to the
  index (a pack of new chunks, tree rows the index lacks), so a snapshot of what is stored already
  loads it nowhere (see :mod:`manifests.lazy`). Each runs a
  :class:`~cas.ops.snapshot.walk.TreeBuilder` with its own :class:`~cas.repo.blobwriter.BlobWriter`
  (its own packs, uploaded and indexed by it, fenced as every writer's are) and its own files
  cache connection, on the directories it takes from one shared queue (so a worker that finishes
  early takes more).
* This process walks the levels above that depth as a snapshot always does, hands each directory
  at that depth to the queue with the filter scope it inherits (its ``.casignore`` files and
  whether it is included), reads the files of the upper levels itself, and encodes the upper
  directories once the workers' entries are back; while it waits for them it takes directories
  from the queue itself (:meth:`WorkerPool.work_here`: a second tree builder sharing its writer,
  files cache and spool), so ``jobs`` processes walk, not ``jobs`` workers beside an idle command
  (a process forked from this one counts all it inherited in its resident memory: one fewer
  saves that much). It commits once, checking under the GC fence
  every blob any of the processes referenced (docs/GC.md): a worker's pack that GC deleted
  before the commit makes the commit fail and the snapshot be stored again, as for any writer.

Worker processes send results, warnings (re-logged here) and errors over a pipe each, and their
directories' index rows in batches as their spools check them (written to this process's spool
file as they came, not held until the end); an error in
one stops them all (``SIGTERM``: each stops after the file it is reading, unwinding, so its
temporary pack files are closed and an object it was writing is removed) and is raised here as the same one-line error a single process raises.
Only for local backends: an object store's client (its connection pool) cannot be shared by a
forked child, so remote repositories are snapshotted by one process (their uploads overlap on
threads already).
"""

from __future__ import annotations

import ctypes
import datetime as dt
import logging
import multiprocessing
import multiprocessing.connection
import os
import pickle
import queue
import signal
import stat
import sys
import threading
import time
from dataclasses import dataclass, field, fields
from typing import Any

from cas.critical import critical
from cas.errors import CasError
from cas.format.chunking import Chunker
from cas.format.trees import Entry
from cas.ops.snapshot.filter import DirScope, SnapshotFilter
from cas.ops.snapshot.walk import OnChange, ProgressFn, TreeBuilder, WalkStats
from cas.ops.tree_index import TreeRowSpool, TreeSink
from cas.repo.blobwriter import BlobWriter, WriteStats
from cas.repo.filescache import FilesCache
from cas.repo.repository import Repository

log = logging.getLogger("cas")

MAX_JOBS = 4
"""The default number of worker processes is the CPUs this process may run on, at most this."""
PARALLEL_MIN_NAMES = 20_000
"""A tree goes to workers only if listing it finds this many names. Measured on 2 cores (paired
runs, default against ``--jobs 1``): 3,000 and 10,000 small files were no faster with workers
(1.10x, 1.05x) at twice the memory; 24,666 files (the ML workload's exec-02) 0.87x, 31,084
(exec-01) 0.80x, 100,000 small files 0.74x. Bytes are not counted: one process already compresses
on threads, so the workers share the per-file work, and sizes would cost a ``stat`` a file."""
_TASKS_PER_JOB = 8
"""The split depth is the first with at least this many directories per worker (for balance)."""
_MAX_DEPTH = 3
"""Deepest split considered; a deeper tree is split where it has the most directories."""
_LIST_LIMIT = 2000
"""Directories listed, at most, to decide whether a tree is large enough."""
ENCODERS = 1
"""Compression threads of the writer of each process of a parallel snapshot (the command's too):
the processes are the parallelism, and each thread holds its compression context and a group of
blobs in memory."""
_POLL = 0.1
"""Seconds an idle worker waits for a task before it checks whether it was told to stop."""
_STOP_WAIT = 10.0
"""Seconds the stopped workers are given, together, to unwind before those left are killed."""
_RECEIVER_WAIT = 2.0
"""Seconds the results thread is given to end once every worker is gone (it has only to see each
pipe's end)."""


def default_jobs() -> int:
    """The number of worker processes a snapshot uses unless told: one per CPU, at most :data:`MAX_JOBS`."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, MAX_JOBS))


def split_depth(path: str, jobs: int, *, any_size: bool = False) -> int | None:
    """The depth below ``path`` whose directories go to workers; None to snapshot in this process
    (not a directory, too little work unless ``any_size``, or too few directories to share)."""
    level = [os.fsencode(path)]
    names = listed = 0
    best_count, best_depth = 0, 0
    below: list[bytes] = []
    for depth in range(1, _MAX_DEPTH + 1):
        below = []
        for directory in level:
            found = _list(directory, below)
            if found is None:
                if depth == 1:
                    return None  # a file, or nothing we can list: the walk says what it is
                continue
            listed += 1
            names += found
        if len(below) > best_count:
            best_count, best_depth = len(below), depth
        if len(below) >= _TASKS_PER_JOB * jobs or not below:
            break
        level = below
    if best_count < 2:
        return None
    if any_size:
        return best_depth
    # Enough work? The names below the upper levels count too, listed breadth first until known.
    todo = below
    while names < PARALLEL_MIN_NAMES and todo and listed < _LIST_LIMIT:
        directory = todo.pop()
        found = _list(directory, todo)
        if found is not None:
            listed += 1
            names += found
    if names < PARALLEL_MIN_NAMES and listed < _LIST_LIMIT:
        return None
    return best_depth


def _list(directory: bytes, subdirs: list[bytes]) -> int | None:
    """How many names ``directory`` holds, its subdirectories appended to ``subdirs`` (the entry
    types ``getdents`` gives: no ``stat``); None if it cannot be listed."""
    names = 0
    try:
        with os.scandir(directory) as it:
            for item in it:
                names += 1
                try:
                    if item.is_dir(follow_symlinks=False):
                        subdirs.append(item.path)
                except OSError:
                    continue
    except OSError:
        return None
    return names


@dataclass
class _Setup:
    """What a worker inherits from the fork (nothing of it is pickled)."""

    repo: Repository
    path: str
    root_fd: int
    root_dev: int
    chunker: Chunker
    files_cache: str | None
    files_cache_max_age: dt.timedelta | None
    on_change: OnChange
    filter: SnapshotFilter | None


@dataclass
class WorkerResult:
    """What the workers did, all together, for the commit (their directories' rows went to the
    pool's ``on_trees`` as they were checked)."""

    referenced: set[str] = field(default_factory=set)
    stats: WalkStats = field(default_factory=WalkStats)
    writes: WriteStats = field(default_factory=WriteStats)

    def add(self, other: WorkerResult) -> None:
        self.referenced |= other.referenced
        add_walk_stats(self.stats, other.stats)
        for f in fields(WriteStats):
            setattr(self.writes, f.name, getattr(self.writes, f.name) + getattr(other.writes, f.name))


def add_walk_stats(into: WalkStats, other: WalkStats) -> None:
    """Add ``other``'s counts to ``into``'s."""
    for name in ("files", "dirs", "symlinks", "skipped", "changed", "logical_bytes", "files_from_cache"):
        setattr(into, name, getattr(into, name) + getattr(other, name))
    into.skipped_paths.extend(other.skipped_paths)
    into.changed_paths.extend(other.changed_paths)
    for reason, count in other.excluded.entries.items():
        into.excluded.entries[reason] += count
    for reason, count in other.excluded.bytes.items():
        into.excluded.bytes[reason] += count


_TASK, _TREES, _LOG, _ERROR, _FINAL = "task", "trees", "log", "error", "final"
_PR_SET_PDEATHSIG = 1
_HELD_DURING_FORK = {signal.SIGINT, signal.SIGTERM}


class WorkerPool:
    """Worker processes walking the directories a :class:`TreeBuilder` hands them (its
    :class:`~cas.ops.snapshot.walk.Delegation`). Start it before this process starts threads.

    Each worker sends its directories' index rows in batches as its spool checks them; they go to
    ``on_trees`` (on the results thread) and the chunks a directory references come with its
    result, so that no process holds all of them twice at the end."""

    def __init__(self, setup: _Setup, workers: int, depth: int, progress: ProgressFn | None,
                 on_trees: TreeSink | None = None) -> None:
        self.depth = depth
        self._setup = setup
        self._progress = progress
        self._on_trees = on_trees
        self._referenced: set[str] = set()
        self._here: TreeBuilder | None = None
        self._here_counts = (0, 0)
        self._cond = threading.Condition()
        self._results: dict[int, Entry | None] = {}
        self._finals: list[WorkerResult] = []
        self._failure: BaseException | None = None
        self._next = 0
        self._done_files = self._done_bytes = 0
        self._own = (0, 0)
        self._closed = False
        self._procs: list[multiprocessing.process.BaseProcess] = []
        self._conns: list[multiprocessing.connection.Connection] = []
        ctx = multiprocessing.get_context("fork")
        try:
            self._tasks = ctx.Queue()
        except BaseException:
            os.close(setup.root_fd)
            raise
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()  # or a child could write our buffered output again
            except (OSError, ValueError, AttributeError):
                pass
        # Python runs its fork handlers (logging's) here after each fork, and drops an exception
        # raised in one: a Ctrl-C arriving then would be lost. Held back until every worker is
        # started, it is raised below instead (the workers unblock it after ignoring it).
        held = signal.pthread_sigmask(signal.SIG_BLOCK, _HELD_DURING_FORK)
        try:
            try:
                for number in range(workers):
                    reader, writer = ctx.Pipe(duplex=False)
                    proc = ctx.Process(target=_worker_main, args=(writer, self._tasks, setup, os.getpid(), held),
                                       name=f"cas-snapshot-{number + 1}", daemon=True)
                    proc.start()
                    writer.close()
                    self._procs.append(proc)
                    self._conns.append(reader)
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, held)
        except BaseException:
            self.close()
            raise
        self._receiver = threading.Thread(target=self._receive, name="cas-snapshot-results", daemon=True)
        self._receiver.start()

    # -- the Delegation protocol -----------------------------------------------------------------

    def submit(self, parent_rel: bytes, parent_ident: tuple[int, int], name: bytes, scope: DirScope | None) -> int:
        self.check()
        number = self._next
        self._next += 1
        # Pickled here, not on the queue's thread, so that a failure to is raised, not lost.
        task = pickle.dumps((number, parent_rel, parent_ident, name, scope), pickle.HIGHEST_PROTOCOL)
        with critical():  # put takes the queue's lock, which close() takes again
            self._tasks.put(task)
        return number

    def result(self, handle: object) -> Entry | None:
        """The entry of the directory ``handle`` names. While a worker is still walking it, this
        process walks directories from the queue itself (with :meth:`work_here`'s builder)."""
        assert isinstance(handle, int)
        while True:
            with self._cond:
                if handle in self._results:
                    return self._results.pop(handle)
                self._raise_failure()
                if self._here is None:
                    self._cond.wait()
                    continue
            try:
                with critical():  # the queue's read lock, which the workers take too
                    task = self._tasks.get(timeout=_POLL)
            except queue.Empty:
                continue  # all taken (or not yet through the queue's pipe): look again
            number, parent_rel, parent_ident, name, scope = pickle.loads(task)  # ours
            entry = self._here.walk_delegated(self._setup.root_fd, parent_rel, parent_ident, name, scope)
            with self._cond:
                self._results[number] = entry

    def work_here(self, builder: TreeBuilder) -> None:
        """Let this process walk queued directories too, with ``builder`` (rooted as the workers'
        are; its files, chunks and directories go where the caller's walk sends its own), while it
        waits for their entries: a job of its own, instead of an idle one among the workers."""
        builder.start_delegated(self._setup.path, self._setup.root_dev)
        builder.progress = self._here_progress
        self._here = builder

    def _here_progress(self, files: int, nbytes: int) -> None:
        self._here_counts = (files, nbytes)
        self.own_progress(*self._own)

    # -- the rest --------------------------------------------------------------------------------

    def check(self) -> None:
        """Raise the error a worker stopped with, if one did."""
        with self._cond:
            self._raise_failure()

    def own_progress(self, files: int, nbytes: int) -> None:
        """This process's walk's progress: reported with the workers' (and a worker's error raised)."""
        self._own = (files, nbytes)
        if self._failure is not None:
            self.check()
        if self._progress is not None:
            here_files, here_bytes = self._here_counts
            with self._cond:
                self._progress(files + here_files + self._done_files, nbytes + here_bytes + self._done_bytes)

    def finish(self) -> WorkerResult:
        """Once every directory is handed out: let the workers finish (their packs uploaded and
        indexed) and return what they did."""
        with critical():
            for _ in self._procs:
                self._tasks.put(None)
        with self._cond:
            while len(self._finals) < len(self._procs):
                self._raise_failure()
                self._cond.wait()
        total = WorkerResult(self._referenced)
        for part in self._finals:
            total.add(part)
        if self._here is not None:  # its writes are counted by the caller's writer, which it shares
            total.add(WorkerResult(self._here.referenced, self._here.stats))
        for proc in self._procs:
            proc.join()
        return total

    def close(self) -> None:
        """Stop the workers (if they did not finish) and wait for them to exit."""
        if self._closed:
            return
        self._closed = True
        for proc in self._procs:
            if proc.exitcode is None and proc.pid is not None:
                try:
                    os.kill(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        # One deadline for them all: the command's own grace after a Ctrl-C (cas.cli.interrupt)
        # must cover this and what follows, whatever number of workers is stuck (one blocked
        # sending to a results thread that stopped reading never sees its SIGTERM's flag).
        deadline = time.monotonic() + _STOP_WAIT
        for proc in self._procs:
            proc.join(max(0.0, deadline - time.monotonic()))
        for proc in self._procs:
            if proc.exitcode is None:
                log.debug("snapshot worker %s did not stop in %g s; killed", proc.pid, _STOP_WAIT)
                proc.kill()
                proc.join()
        self._tasks.cancel_join_thread()
        self._tasks.close()
        receiver = getattr(self, "_receiver", None)
        if receiver is not None:
            # Over at once: every worker is gone, so every pipe is at its end. Except after a
            # Ctrl-C that Python raised just after this thread took ``_cond``'s lock and before the
            # ``with`` around it was in charge of releasing it: the lock stays taken, and the
            # results thread (a daemon) waits for it forever. This process must not wait with it.
            receiver.join(_RECEIVER_WAIT)
            if receiver.is_alive():
                log.debug("the snapshot's results thread did not end; leaving it")
        for conn in self._conns:
            conn.close()
        os.close(self._setup.root_fd)  # the workers have their copies

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure

    def _fail(self, exc: BaseException) -> None:
        if self._failure is None:
            self._failure = exc

    def _receive(self) -> None:
        """The results thread: takes every worker's messages until each has finished or gone."""
        conns = list(self._conns)
        finished: set[int] = set()
        while conns:
            for conn in multiprocessing.connection.wait(conns):
                assert isinstance(conn, multiprocessing.connection.Connection)
                try:
                    message = conn.recv()
                except (EOFError, OSError):
                    conns.remove(conn)
                    with self._cond:
                        if not self._closed and id(conn) not in finished:
                            # Gone without a word: killed (out of memory?) or crashed.
                            self._fail(CasError("a snapshot worker process exited unexpectedly; nothing was committed"))
                        self._cond.notify_all()
                    continue
                if message[0] in (_FINAL, _ERROR):
                    finished.add(id(conn))
                self._handle(message)

    def _handle(self, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == _LOG:
            _, name, level, text = message
            logging.getLogger(name).log(level, "%s", text)
            return
        if kind == _TREES:
            try:
                if self._on_trees is not None:
                    self._on_trees(message[1], message[2], message[3])
            except Exception as exc:  # noqa: BLE001 - raised by the walk, not lost with this thread
                with self._cond:
                    self._fail(CasError(f"cannot keep the snapshot's directory rows for its commit: {exc}"))
                    self._cond.notify_all()
            return
        with self._cond:
            if kind == _TASK:
                _, number, entry, referenced, files, nbytes = message
                self._referenced.update(referenced)
                self._results[number] = entry
                self._done_files += files
                self._done_bytes += nbytes
                if self._progress is not None:
                    self._progress(self._own[0] + self._here_counts[0] + self._done_files,
                                   self._own[1] + self._here_counts[1] + self._done_bytes)
            elif kind == _ERROR:
                self._fail(_rebuild_error(message[1], message[2]))
            elif kind == _FINAL:
                self._finals.append(message[1])
            self._cond.notify_all()


def _rebuild_error(cls: type, text: str) -> BaseException:
    """A worker's error as this process raises it: the same class and one-line message."""
    if isinstance(cls, type) and issubclass(cls, CasError):
        try:
            return cls(text)
        except Exception:  # noqa: BLE001 - a class that takes other arguments: keep the message
            return CasError(text)
    return CasError(f"a snapshot worker failed: {text}")


class _Stopped(BaseException):
    """A worker was told to stop (``SIGTERM``): unwind (closing temporaries) and exit."""


_stopping = False
"""Set in a worker by ``SIGTERM``. Checked between files and while waiting for a task, not raised
from the handler: an exception raised there could surface anywhere (in a finaliser, say)."""


def _stop(signum: int, frame: object) -> None:
    global _stopping
    _stopping = True


def _check_stop(files: int, nbytes: int) -> None:
    """A worker's progress callback, called after each file: stop if told to."""
    if _stopping:
        raise _Stopped


class _Forward(logging.Handler):
    """A worker's log records, sent to the main process to be logged there."""

    def __init__(self, send: Any) -> None:
        super().__init__()
        self._send = send

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._send((_LOG, record.name, record.levelno, record.getMessage()))
        except Exception:  # noqa: BLE001, S110 - the main process is gone: nothing to tell
            pass


def _end_with_parent(parent: int) -> None:
    """Be sent ``SIGTERM`` if the main process dies (Linux), instead of waiting for tasks forever."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # it died before we asked
        raise _Stopped


def _worker_main(conn: multiprocessing.connection.Connection, tasks: Any, setup: _Setup, parent: int,
                 signals: set[signal.Signals]) -> None:
    """A worker process: walk directories from ``tasks`` until told to stop. Never returns: it
    exits here, so that neither the parent's exit handlers nor a flush of its buffers run twice."""
    code = 1
    lock = threading.Lock()

    def send(message: tuple[Any, ...]) -> None:
        with lock:
            conn.send(message)

    try:
        try:
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle
            signal.signal(signal.SIGTERM, _stop)
            signal.pthread_sigmask(signal.SIG_SETMASK, signals)  # the parent's, held while it forked
            _end_with_parent(parent)
            # Inherited handlers write to this process's copies of the parent's streams: forward.
            logging.root.handlers = [_Forward(send)]
            # The index connections are the parent's: forget them without closing, open our own.
            setup.repo.index.forget_inherited_connections()
            _serve(send, tasks, setup)
            code = 0
        except _Stopped:
            pass
        except BaseException as exc:  # noqa: BLE001 - reported to the main process, which raises it
            send((_ERROR, type(exc), str(exc) or type(exc).__name__))
    except BaseException:  # noqa: BLE001, S110 - the parent is gone: nobody to tell
        pass
    finally:
        os._exit(code)


def _serve(send: Any, tasks: Any, setup: _Setup) -> None:
    files_cache = FilesCache(setup.files_cache, setup.files_cache_max_age) if setup.files_cache else None

    def send_trees(frame: bytes, tree_ids: list[str], assumed: list[str]) -> None:
        send((_TREES, frame, tree_ids, assumed))

    spool = TreeRowSpool(setup.repo.index, sink=send_trees)
    try:
        with BlobWriter(setup.repo, workers=ENCODERS) as writer:
            builder = TreeBuilder(writer, setup.chunker, files_cache=files_cache, on_change=setup.on_change,
                                  on_directory=spool.add, filter=setup.filter, progress=_check_stop)
            builder.start_delegated(setup.path, setup.root_dev)
            stats = builder.stats
            while True:
                try:
                    task = tasks.get(timeout=_POLL)
                except queue.Empty:
                    _check_stop(0, 0)
                    continue
                if task is None:
                    break
                number, parent_rel, parent_ident, name, scope = pickle.loads(task)  # from our parent
                files, nbytes = stats.files, stats.logical_bytes
                entry = builder.walk_delegated(setup.root_fd, parent_rel, parent_ident, name, scope)
                send((_TASK, number, entry, builder.referenced, stats.files - files, stats.logical_bytes - nbytes))
                builder.referenced.clear()  # the main process has them
            writer.flush()  # every pack uploaded and its rows indexed (fenced) before we report
        if files_cache is not None:
            files_cache.commit(expire=False)  # the main process expires, once
        spool.finish()  # its last batch sent
        send((_FINAL, WorkerResult(builder.referenced, stats, writer.stats)))
    finally:
        spool.close()
        if files_cache is not None:
            files_cache.close()


def start_pool(
    repo: Repository, path: str, jobs: int, *, chunker: Chunker, files_cache: str | None,
    files_cache_max_age: dt.timedelta | None, on_change: OnChange, filter: SnapshotFilter | None,
    progress: ProgressFn | None, any_size: bool = False, on_trees: TreeSink | None = None,
) -> WorkerPool | None:
    """Workers for a snapshot of ``path`` in ``jobs`` processes, this one included (``jobs - 1``
    workers: this process walks queued directories too once its own walk is done, see
    :meth:`WorkerPool.work_here`), or None when it is better taken in this process alone (one
    job, a remote backend, a small tree unless ``any_size`` (the number of jobs was asked for), not
    a directory)."""
    if jobs <= 1 or repo.backend.capabilities.remote:
        return None
    depth = split_depth(path, jobs, any_size=any_size)
    if depth is None:
        return None
    try:
        root_fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None  # the walk reports it
    try:
        st = os.fstat(root_fd)
    except BaseException:
        os.close(root_fd)
        raise
    if not stat.S_ISDIR(st.st_mode):
        os.close(root_fd)
        return None
    setup = _Setup(repo, path, root_fd, st.st_dev, chunker, files_cache, files_cache_max_age, on_change, filter)
    log.debug("snapshot of %s: directories at depth %d go to %d worker processes and this one", path, depth, jobs - 1)
    return WorkerPool(setup, jobs - 1, depth, progress, on_trees)  # takes ``root_fd`` over, failing or not
