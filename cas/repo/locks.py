"""Host-local exclusive locks that leave no file behind.

A lock is an ``fcntl.flock`` on a file at a fixed path. The kernel releases it when its holder
exits, however it exits, so no lock is ever stale. The holder removes the file while still holding
it; a process that was waiting for the lock on a file that has since been removed notices (the
path no longer names the file it locked) and starts again on whatever is at the path now, so only
the lock on the file currently at the path counts. Lock files therefore exist only while someone
holds or waits for them; one left by a process killed in between (``SIGKILL`` after creating it) is
taken over and removed by the next holder.

Local file systems only (flock is not reliably shared over every network file system); these
locks guard per-host state (the chunk cache, download directories).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator


@contextlib.contextmanager
def exclusive(path: str, *, wait: bool = True) -> Iterator[bool]:
    """Hold the lock named by ``path`` (its directory must exist) for the ``with`` block.

    Yields True once held. With ``wait=False`` it yields False at once, holding nothing, when
    another process or thread holds it. Each call opens its own file description, so threads of
    one process exclude each other as processes do.
    """
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0)
    while True:
        fd = os.open(path, flags, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                os.close(fd)
                fd = -1
                yield False
                return
            held = os.fstat(fd)
            try:
                current = os.stat(path, follow_symlinks=False)
            except FileNotFoundError:
                continue  # the holder before us removed it: lock whatever is there now
            if (current.st_ino, current.st_dev) != (held.st_ino, held.st_dev):
                continue
            try:
                yield True
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)  # while still held: see the module docstring
            return
        finally:
            if fd >= 0:
                os.close(fd)
