"""Critical sections: stretches of the main thread that a Ctrl-C must not cut in two.

Python runs a signal's handler between any two instructions of the main thread, and the
command's first Ctrl-C raises ``KeyboardInterrupt`` from there (:mod:`cas.cli.interrupt`). Raised
just after the thread took a lock that no ``with`` is yet in charge of (inside
``multiprocessing.Queue.put``, say, which takes the queue's own lock), it leaves the lock taken,
and cleaning up then waits for it forever: a parallel snapshot's ``WorkerPool.close`` did, on the
queue's lock, until the command's grace ran out. Code that takes such a lock runs it inside
``with critical():``; the command's handler, finding the main thread inside one, only records the
interrupt (:func:`defer_interrupt`), and the section's end raises it.

Only a handler that asks defers: outside a command (cas used as a library, with Python's own
handler) a Ctrl-C lands where it lands. Sections on other threads defer nothing (signals are
handled on the main thread).
"""

from __future__ import annotations

import threading
from types import TracebackType

_MAIN = threading.main_thread().ident


class _State:
    depth = 0  # critical sections the main thread is in
    pending = False  # an interrupt came during one


class critical:  # a lower-case name: used as a statement, ``with critical():``
    """A critical section of the main thread (nested ones count as one); elsewhere, nothing."""

    __slots__ = ("_main",)

    def __enter__(self) -> None:
        self._main = threading.get_ident() == _MAIN
        if self._main:
            _State.depth += 1

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._main:
            _State.depth -= 1
            if _State.depth == 0 and _State.pending:
                _State.pending = False
                raise KeyboardInterrupt


def defer_interrupt() -> bool:
    """For a ``SIGINT`` handler (which runs on the main thread): True if the main thread is inside
    a critical section, and then the section's end raises ``KeyboardInterrupt``; False if the
    handler should raise it itself."""
    if _State.depth:
        _State.pending = True
        return True
    return False


__all__ = ["critical", "defer_interrupt"]
