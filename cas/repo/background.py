"""Work ahead of reads, on two threads the whole process shares, and each repository's share of it.

Readers (a file of a view, a directory's read-ahead, chunks fetched ahead) hand work to
:func:`background`'s threads through their repository's :class:`BackgroundWork`, so that closing
the repository waits for what it still has there: work left running after the close used the
closed index and backend (a lookup on a connection closed under it crashed the interpreter).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def background() -> ThreadPoolExecutor:
    """Two threads shared by every reader of the process for work ahead of reads."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="cas-readahead")
        return _pool


class BackgroundWork:
    """What one repository has on :func:`background`'s threads: :meth:`close` waits for all of it,
    including what that work submits in turn. Nothing is cancelled (a reader may be waiting for
    it); every task is bounded (a read ahead, never a wait for a reader)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._futures: set[Future[Any]] = set()
        self._pid = os.getpid()

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        future = background().submit(fn, *args)
        with self._lock:
            self._futures.add(future)
        future.add_done_callback(self._done)

    def _done(self, future: Future[Any]) -> None:
        with self._lock:
            self._futures.discard(future)

    def close(self) -> None:
        """Wait until nothing of this repository's is queued or running (not to be called from
        that work itself). In a forked child there is none: the threads stayed with the parent."""
        if os.getpid() != self._pid:
            return
        while True:
            with self._lock:
                pending = [f for f in self._futures if not f.done()]
            if not pending:
                return
            wait(pending)
