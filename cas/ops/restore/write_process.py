"""A restore's small files written by a process of its own.

A small file restored whole is five system calls (create, write, ``utime``, link, close) and a few
microseconds of Python around them. On the restore's threads every call gives up the interpreter
lock and takes it back, while the walk (reading trees, locating, fetching and verifying chunks)
needs it: 100,000 small files took 1.9 s of the walk's work alone and 3.8 s with the writing on two
threads of the same process. So a child process writes them: :class:`ProcessWriter` sends it a
directory's descriptor (``SCM_RIGHTS`` over a Unix socket) with a batch of files (name, verified
content, mode, mtime); the child takes batches as they come (up to :data:`_QUEUED` ahead of its
writing) and writes them on :data:`_WRITERS` threads, each file as the restore's own threads would
(:meth:`~cas.ops.restore.create.FileWriter.write_whole_many`: nothing appears under a name before
the file is whole) and answers, per file, None (named; or its inode and ctime then, if asked),
the temporary name it has (its name was taken: the restore places it), or the error.

The restore hands it batches once it has written many small files itself (see
``walk._PROCESS_AFTER``); the child is started by the first batch (a restore without many small
files starts none) and
imports, from the ``cas`` package this process did, only what it needs (:mod:`cas.ops.restore.create`
and this module, without ``site`` and the package's API: about 14 MiB resident, see
:mod:`cas.ops.restore.child`). It ignores Ctrl-C (the restore's to handle) and ends
once this process closes its end of the socket. If it cannot be started, or stops before
answering, the batches it has not answered are written by the fallback (the restore's threads).
"""

from __future__ import annotations

import errno
import os
import pickle
import queue
import signal
import socket
import struct
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from cas.ops.restore import create
from cas.ops.restore.child import HelperProcess, chain, child_code
from cas.ops.restore.create import FileWriter

if TYPE_CHECKING:
    from concurrent.futures import Future

File = tuple[str, bytes, int, int, bool]
"""A file to write: its name, its whole content (verified), its mode, its mtime in nanoseconds, and
whether to answer with its identity once named (for the files cache)."""
Result = None | tuple[int, int] | str | OSError
"""Per file: None (it has its name), or (inode, ctime in ns) then if asked for; a temporary name
(the name was taken); or the error."""

MESSAGE_BYTES = 1 << 20
"""The content sent to the child in one message, about (a file is never split)."""
_HEADER = struct.Struct("<QQ")  # batch number, then the length of the pickled batch or answers
_CHILD = child_code(__name__)


class ProcessWriter(HelperProcess):
    """Writes batches of small files of one directory in a child process."""

    def __init__(self, tag: str, fallback: Callable[[int, list[File]], Future[list[object]]]) -> None:
        """``tag``: the restore's temporary names' tag (the child's names carry it, with a suffix
        of their own); ``fallback`` writes a batch in this process when the child cannot (it
        submits it to the restore's threads)."""
        super().__init__()
        self._tag = tag
        self._fallback = fallback
        self._sending = threading.Lock()
        self._pending: dict[int, tuple[Future[list[object]], int, list[File]]] = {}
        self._next = 0

    def submit(self, dir_fd: int, files: list[File]) -> Future[list[object]]:
        """Write ``files`` into the directory; ``dir_fd`` must stay open until the future is done.
        The future gives one result per file (see :data:`Result`). They go in messages of about
        :data:`MESSAGE_BYTES` (each process holds a message's bytes twice while it passes)."""
        parts: list[list[File]] = [[]]
        size = 0
        for file in files:
            if parts[-1] and size + len(file[1]) > MESSAGE_BYTES:
                parts.append([])
                size = 0
            parts[-1].append(file)
            size += len(file[1])
        if len(parts) == 1:
            return self._submit(dir_fd, files)
        return _joined([self._submit(dir_fd, part) for part in parts])

    def _submit(self, dir_fd: int, files: list[File]) -> Future[list[object]]:
        with self._lock:
            if self._sock is None and not self._failed:
                self._start(socket.SOCK_STREAM, "write", _CHILD, self._tag, "1" if create.HAS_TMPFILE[0] else "0")
            if self._failed:
                return self._fallback(dir_fd, files)
            number = self._next
            self._next += 1
            future: Future[list[object]] = _future()
            sock = self._sock
            self._pending[number] = (future, dir_fd, files)
        payload = pickle.dumps(files, protocol=pickle.HIGHEST_PROTOCOL)
        try:
            # Not under the lock: a send waits while the child is busy, and the answers that make
            # room must get through meanwhile.
            with self._sending:
                assert sock is not None
                socket.send_fds(sock, [_HEADER.pack(number, len(payload))], [dir_fd])
                sock.sendall(payload)
        except OSError:
            with self._lock:
                self._give_up()
        return future

    def _receive(self, sock: socket.socket) -> None:
        while True:
            try:
                header = _read_exactly(sock, _HEADER.size)
                number, length = _HEADER.unpack(header)
                answers = pickle.loads(_read_exactly(sock, length))  # our own child's
            except (OSError, EOFError, pickle.UnpicklingError):
                break  # the child ended: after every answer, or without some
            with self._lock:
                future, _, _ = self._pending.pop(number)
            future.set_result(answers)
        with self._lock:
            self._give_up()

    def _give_up(self) -> None:
        """The child is gone (the lock held): what it did not answer is written by the fallback."""
        self._failed = True
        pending, self._pending = self._pending, {}
        for future, dir_fd, files in pending.values():
            chain(self._fallback(dir_fd, files), future)


def write_batch(writer: FileWriter, dir_fd: int, files: list[File]) -> list[object]:
    """Write ``files`` into the directory with ``writer``: one :data:`Result` per file."""
    return writer.write_whole_many(dir_fd, files)


def _future() -> Future[list[object]]:
    """A new future (``concurrent.futures`` imported here: the child, which imports this module
    too, has no use for it)."""
    from concurrent.futures import Future

    return Future()


def _joined(futures: list[Future[list[object]]]) -> Future[list[object]]:
    """One future of the answers of ``futures``, in order, once all have them."""
    joined: Future[list[object]] = _future()
    waiting = list(futures)
    left = [len(waiting)]
    lock = threading.Lock()

    def done(_: Future[list[object]]) -> None:
        with lock:
            left[0] -= 1
            if left[0]:
                return
        try:
            joined.set_result([answer for f in waiting for answer in f.result()])
        except BaseException as exc:  # noqa: BLE001 - given to whoever waits
            joined.set_exception(exc)
        finally:
            # Each of them keeps this function among its callbacks: without this, every batch
            # (its files' bytes and entries) would wait in a reference cycle for the collector.
            waiting.clear()

    for f in waiting:
        f.add_done_callback(done)
    return joined


def _read_exactly(sock: socket.socket, n: int) -> bytes:
    parts, got = [], 0
    while got < n:
        part = sock.recv(min(n - got, 1 << 20))
        if not part:
            raise EOFError("the other end closed")
        parts.append(part)
        got += len(part)
    return b"".join(parts)


# -- the child ------------------------------------------------------------------------------------


_QUEUED = 3
"""Messages the child holds received and not yet written, at most: it takes the next ones while it
writes, so that the restore's sends do not wait for each batch's writing (and the child does not
wait for the restore's next batch while the restore locates and fetches it)."""


_WRITERS = 2
"""Threads of the child that write batches: creating files is the kernel's work, which the
compiled helper does without the interpreter lock, so two threads keep both of a small host's
cores creating files."""


def _receive_messages(sock: socket.socket, out: queue.Queue[tuple[int, list[int], memoryview] | None]) -> None:
    """The child's reading thread: each message (batch number, descriptors passed, pickled batch)
    put on ``out``, then None once the restore closes its end (or the socket fails)."""
    try:
        while True:
            message, fds, _flags, _address = socket.recv_fds(sock, _HEADER.size, 1)
            if not message:
                return  # the restore closed its end: nothing more will come
            if len(message) < _HEADER.size:
                message += _read_exactly(sock, _HEADER.size - len(message))
            number, length = _HEADER.unpack(message)
            view = memoryview(bytearray(length))
            got = 0
            while got < length:
                n = sock.recv_into(view[got:])
                if not n:
                    raise EOFError("the restore closed its end in a message")
                got += n
            out.put((number, fds, view))
    except (OSError, EOFError):
        return
    finally:
        out.put(None)


def _serve(sock: socket.socket, tag: str) -> None:
    writer = FileWriter(tag)
    received: queue.Queue[tuple[int, list[int], memoryview] | None] = queue.Queue(_QUEUED)
    sending = threading.Lock()
    reader = threading.Thread(target=_receive_messages, args=(sock, received), name="cas-write-receive", daemon=True)
    reader.start()
    writers = [threading.Thread(target=_write_messages, args=(writer, received, sock, sending), daemon=True,
                                name=f"cas-write-{i}") for i in range(1, _WRITERS)]
    for thread in writers:
        thread.start()
    _write_messages(writer, received, sock, sending)
    for thread in writers:
        thread.join()


def _write_messages(writer: FileWriter, received: queue.Queue[tuple[int, list[int], memoryview] | None],
                    sock: socket.socket, sending: threading.Lock) -> None:
    """A writing thread of the child: each batch received written and answered, until the end
    (None, put back for the other writing threads)."""
    while (item := received.get()) is not None:
        number, fds, view = item
        files: list[File] = pickle.loads(view)  # from the restore
        view.release()
        if not fds:  # the kernel could not give us the descriptor (EMFILE)
            answers: list[object] = [OSError(errno.EMFILE, os.strerror(errno.EMFILE))] * len(files)
        else:
            try:
                answers = write_batch(writer, fds[0], files)
            finally:
                os.close(fds[0])
        payload = pickle.dumps(answers, protocol=pickle.HIGHEST_PROTOCOL)
        with sending:
            sock.sendall(_HEADER.pack(number, len(payload)) + payload)
    received.put(None)


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the restore's; we end when it closes
    sock = socket.socket(fileno=int(argv[0]))
    create.HAS_TMPFILE[0] = create.HAS_TMPFILE[0] and argv[2] == "1"  # as the restore found its file system
    try:
        _serve(sock, argv[1])
    except (OSError, EOFError):
        return 1
    return 0
