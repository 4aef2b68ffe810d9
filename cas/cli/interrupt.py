"""Ctrl-C always ends a command.

The first Ctrl-C raises ``KeyboardInterrupt`` in the main thread, as Python does: the command
stops, cleans up (workers stopped, temporaries removed) and exits with status 130. Python raises it
wherever the main thread is, which can be just after it took a lock that a thread of the command
shares and before a ``with`` statement took charge of releasing it; cleaning up can then wait for
that thread forever (a parallel snapshot did, until ``WorkerPool.close`` stopped waiting), or for
the lock itself. Code that takes a lock cleaning up needs again runs inside a critical section
(:mod:`cas.critical`): a Ctrl-C there is raised at the section's end. And whatever cleaning up may
still hang on, a second Ctrl-C, or cleaning up for longer than :data:`INTERRUPT_GRACE`, ends the
process at once.

Ending it at once is safe for what is stored: every step of a write is crash-safe (the write
order, docs/FORMAT.md), as for a process killed. Only temporaries of the interrupted command may be
left.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

from cas.critical import defer_interrupt

INTERRUPT_GRACE = 30.0
"""Seconds a command may take to clean up after a Ctrl-C before the process ends without it."""

EXIT_INTERRUPTED = 130


@contextmanager
def interruptible() -> Iterator[None]:
    """Within the block, Ctrl-C behaves as the module says. Nothing changes where this process
    does not handle Ctrl-C with Python's default handler (ignored, as in a background job without
    job control, or handled by an embedding program) or off the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)
    if previous is not signal.default_int_handler:
        yield
        return
    signal.signal(signal.SIGINT, _first)
    try:
        yield
    finally:
        # After a Ctrl-C the timer stays armed: the process is ending, and the interpreter's own
        # exit (joining threads) is part of what it bounds.
        if signal.getsignal(signal.SIGINT) is _first:
            signal.signal(signal.SIGINT, previous)


def _first(signum: int, frame: FrameType | None) -> None:
    signal.signal(signal.SIGINT, _again)
    # A timer, not a thread: the command may fork workers, and this needs no lock of any kind.
    signal.signal(signal.SIGALRM, _too_long)
    signal.setitimer(signal.ITIMER_REAL, INTERRUPT_GRACE)
    if not defer_interrupt():  # inside a critical section, its end raises it
        raise KeyboardInterrupt


def _again(signum: int, frame: FrameType | None) -> None:
    _end("interrupted again")


def _too_long(signum: int, frame: FrameType | None) -> None:
    _end(f"interrupted, and still stopping after {INTERRUPT_GRACE:g} s")


def _end(why: str) -> None:
    os.write(2, f"cas: error: {why}: exited without cleaning up\n".encode())
    os._exit(EXIT_INTERRUPTED)


__all__ = ["EXIT_INTERRUPTED", "INTERRUPT_GRACE", "interruptible"]
