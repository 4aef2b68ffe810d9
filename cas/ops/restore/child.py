"""How a restore starts its helper processes (:mod:`~cas.ops.restore.delete_process`'s remover,
:mod:`~cas.ops.restore.hash_ahead`'s hasher, :mod:`~cas.ops.restore.write_process`'s writer):
this interpreter, isolated (``-I``: no script directory, no ``PYTHON*`` variables, no user site on
the path), with this process's ``cas`` first on its path, whatever the working directory holds.

A helper loads as little as it can, for it lives beside the restore (each one's resident memory
counts in the restore's): no ``site`` (``-S``: no ``.pth`` files run; the path is the standard
library, this ``cas``'s directory and the directories of :data:`_THIRD_PARTY`), and the ``cas``
package without its ``__init__`` (which loads the public API: the errors, the backends' base);
the helpers' modules import, at their top, only what the child side uses (what only the restore's
side uses is imported where it is used). A helper is about 14 MiB resident this way, 22 MiB with
``site`` and the package's API.

Only when ``sys.executable`` is a Python interpreter: a process embedded in another program (uWSGI,
a frozen executable) has that program there, which would not run the child's code (and might not
exit). The restore then does the helpers' work itself.
"""

from __future__ import annotations

import os
import re
import socket
import sys
import threading
from importlib.util import find_spec
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import subprocess
    from concurrent.futures import Future
    from typing import TypeVar

    T = TypeVar("T")

_INTERPRETER = re.compile(r"(python|pypy)[0-9.]*(\.exe)?", re.IGNORECASE)
_THIRD_PARTY = ("blake3",)
"""What the helpers import from outside the standard library and this package: its directory is
put on their path (they run without ``site``)."""


def child_command(code: str, *args: str) -> list[str] | None:
    """The command running ``code`` in a child interpreter with ``args`` (after the package's
    root, its ``sys.argv[1]``), or None when there is no interpreter to run."""
    executable = sys.executable
    if not executable or getattr(sys, "frozen", False):
        return None
    if not _INTERPRETER.fullmatch(os.path.basename(executable)):
        return None
    here = os.path.realpath(__file__)
    for _ in range(__name__.count(".") + 1):  # above cas/, at any depth
        here = os.path.dirname(here)
    paths = [here]
    for name in _THIRD_PARTY:
        spec = find_spec(name)
        if spec is not None and spec.origin:
            found = os.path.dirname(os.path.dirname(spec.origin) if spec.submodule_search_locations else spec.origin)
            if found not in paths:
                paths.append(found)
    return [executable, "-I", "-S", "-c", code, os.pathsep.join(paths), *args]


def child_code(module: str) -> str:
    """The code :func:`child_command` runs for a helper: ``module``'s ``main`` on the arguments after
    the paths, its exit status the child's. The ``cas`` package is made bare (its directory, without
    running its ``__init__``) before ``module`` is imported."""
    return ("import sys; paths = sys.argv[1].split(" + repr(os.pathsep) + "); sys.path[:0] = paths; "
            "cas = type(sys)('cas'); cas.__path__ = [paths[0] + '/cas']; sys.modules['cas'] = cas; "
            f"from {module} import main; raise SystemExit(main(sys.argv[2:]))")


def chain(source: Future[T], target: Future[T]) -> None:
    """Give ``target`` the outcome of ``source`` once it has one (a helper's work done by its
    fallback in this process instead)."""
    def done(f: Future[T]) -> None:
        error = f.exception()
        if error is not None:
            target.set_exception(error)
        else:
            target.set_result(f.result())

    source.add_done_callback(done)


class HelperProcess:
    """A helper child process of a restore, spoken to over a Unix socket pair, its answers read by
    a thread of this process (:meth:`_receive`, which a helper defines). :meth:`_start` starts it
    (or sets ``_failed`` when it cannot: the helper's fallback then does the work here);
    :meth:`close` waits for its answers and its exit. ``_lock`` guards the helper's state."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None
        self._failed = False
        self.pid: int | None = None
        """The child's process ID, once started."""

    def close(self) -> None:
        """Wait for every request sent to be answered, then for the child to exit."""
        with self._lock:
            sock, reader, proc = self._sock, self._reader, self._proc
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_WR)  # the child answers what it has, then ends
                except OSError:
                    pass
        if reader is not None:
            reader.join()
        if proc is not None:
            proc.wait()
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None

    def _start(self, kind: int, name: str, code: str, *args: str) -> None:
        """Start the child running ``code`` (its socket's descriptor, then ``args``, its arguments)
        on a socket pair of ``kind``, and the thread that reads its answers (the lock held)."""
        import subprocess

        ours, theirs = socket.socketpair(socket.AF_UNIX, kind)
        command = child_command(code, str(theirs.fileno()), *args)
        try:
            with theirs:
                if command is None:
                    raise FileNotFoundError(f"no Python interpreter to run the {name}")
                self._proc = subprocess.Popen(
                    command, pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
        except OSError:
            ours.close()
            self._failed = True
            return
        self.pid = self._proc.pid
        self._sock = ours
        self._reader = threading.Thread(target=self._receive, args=(ours,), name=f"cas-restore-{name}-replies",
                                        daemon=True)
        self._reader.start()

    def _receive(self, sock: socket.socket) -> None:
        raise NotImplementedError
