"""A restore's removals (``delete``) made by a process of its own.

Removing a deleted package of thousands of files is thousands of system calls, and on a restore's
own threads each of them gives up the interpreter lock and waits to take it back, as the restore's
walk does: the walk waited for them. Restoring the benchmark's second execution over the first with
``delete``: 1.3-1.8 s of restore with ``deps/cfnlint`` (8,305 entries) to remove, 0.8-1.0 s with it
removed beforehand. So a child process makes them: :class:`ProcessRemover` sends it a directory's
descriptor (``SCM_RIGHTS`` over a Unix socket) and a name, and the child removes that entry with a
:class:`~cas.ops.restore.delete.Remover` of its own and answers how many entries it removed, or the
error. The rules are the remover's: nothing is followed through a symlink, nothing outside the
directory given is touched, live restores' temporaries are left.

The child is started by the first removal (a restore with nothing to delete starts none) and
imports the ``cas`` package this process did. It ignores Ctrl-C (the restore's to handle) and ends
once this process closes its end of the socket (on exit too). If it cannot be started, or stops
before answering, the removals it has not answered are made by the fallback remover's threads here.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import struct
import threading
from concurrent.futures import Future

from cas.ops.restore.child import HelperProcess, chain, child_code
from cas.ops.restore.delete import Remover

_REQUEST = struct.Struct("<Q")  # + the name
_REPLY = struct.Struct("<QqI")  # request, entries removed (or -1: failed), errno + the message
_MAX_MESSAGE = 65536
_IN_FLIGHT = 64
"""Removals the child holds at once (each holds a descriptor of its directory)."""
_CHILD = child_code(__name__)


class ProcessRemover(HelperProcess):
    """:meth:`Remover.submit <cas.ops.restore.delete.Remover.submit>` made by a child process."""

    def __init__(self, fallback: Remover) -> None:
        super().__init__()
        self._fallback = fallback
        self._sending = threading.Lock()
        self._pending: dict[int, tuple[Future[int], int, str]] = {}
        self._next = 0

    @property
    def in_child(self) -> bool:
        """Whether the removals so far were all made by the child (none by the fallback)."""
        return self.pid is not None and not self._failed

    def submit(self, dir_fd: int, name: str) -> Future[int]:
        """Remove ``name`` from the directory (a whole subtree if it is one); ``dir_fd`` must stay
        open until the future is done. The future gives how many entries were removed."""
        with self._lock:
            if self._sock is None and not self._failed:
                self._start(socket.SOCK_SEQPACKET, "delete", _CHILD)
            if self._failed:
                return self._fallback.submit(dir_fd, name)
            sock = self._sock
            number = self._next
            self._next += 1
            future: Future[int] = Future()
            self._pending[number] = (future, dir_fd, name)
        try:
            # Not under the lock: a send waits while the child has its fill of removals, and the
            # replies that make room must get through meanwhile.
            with self._sending:
                socket.send_fds(sock, [_REQUEST.pack(number) + os.fsencode(name)], [dir_fd])
        except OSError:
            with self._lock:
                self._give_up()  # the child is gone: this one and the unanswered go to the fallback
        return future

    def _receive(self, sock: socket.socket) -> None:
        while True:
            try:
                reply = sock.recv(_MAX_MESSAGE)
            except OSError:
                reply = b""
            if len(reply) < _REPLY.size:
                break  # the child ended: after every answer, or without some
            number, removed, code = _REPLY.unpack_from(reply)
            with self._lock:
                future, _, _ = self._pending.pop(number)
            if removed >= 0:
                future.set_result(removed)
            else:
                message = reply[_REPLY.size:].decode("utf-8", "replace")
                future.set_exception(OSError(code or errno.EIO, message))
        with self._lock:
            self._give_up()

    def _give_up(self) -> None:
        """The child is gone (the lock held): what it did not answer goes to the fallback remover."""
        self._failed = True
        pending, self._pending = self._pending, {}
        for future, dir_fd, name in pending.values():
            chain(self._fallback.submit(dir_fd, name), future)


# -- the child ------------------------------------------------------------------------------------


def _serve(sock: socket.socket) -> None:
    remover = Remover()
    send = threading.Lock()
    room = threading.Semaphore(_IN_FLIGHT)  # descriptors received and not yet closed

    def reply(number: int, error: BaseException | None, removed: int = 0) -> None:
        if error is None:
            message = _REPLY.pack(number, removed, 0)
        else:
            code = error.errno if isinstance(error, OSError) and error.errno else errno.EIO
            text = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
            message = _REPLY.pack(number, -1, code) + text.encode("utf-8", "replace")[:4096]
        with send:
            sock.send(message)

    def answer(number: int, fd: int, removal: Future[int]) -> None:
        os.close(fd)
        room.release()
        error = removal.exception()
        reply(number, error, 0 if error is not None else removal.result())

    try:
        while True:
            room.acquire()  # so the requests past that wait in the socket, not as open descriptors here
            message, fds, _flags, _address = socket.recv_fds(sock, _MAX_MESSAGE, 1)
            if not message:
                break  # the restore closed its end: nothing more will come
            number, = _REQUEST.unpack_from(message)
            if not fds:  # the kernel could not give us the descriptor (EMFILE): say so, go on
                room.release()
                reply(number, OSError(errno.EMFILE, os.strerror(errno.EMFILE)))
                continue
            removal = remover.submit(fds[0], os.fsdecode(message[_REQUEST.size:]))
            removal.add_done_callback(lambda f, n=number, fd=fds[0]: answer(n, fd, f))
    finally:
        remover.close()


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the restore's to handle
    with socket.socket(fileno=int(argv[0])) as sock:
        _serve(sock)
    return 0
