"""Run the real ``cas`` command line while one file is changed at an exact moment of its snapshot.

The snapshot cannot be paused from outside, so the child process wraps ``os.open``, ``os.read``
and ``os.fdopen`` before running :func:`cas.cli.main`: when the snapshot opens the file named
``victim`` (any directory), or first reads from such a descriptor, the file is changed right then.
Only the victim is touched; every other call passes through unchanged. No production code knows
about this, so the same test runs against any version of the walker.

The walk reads small files through the compiled helper (``cas.native.files.read_files``, a
batch of files per call), which no Python wrapper can pause halfway. The child wraps it too: a
``fifo`` or ``dir`` race replaces the victim just before a call that is to read it (the helper
must then decline it, and the walk find what it became); for ``rewrite`` the helper is not given
the victim, as it declines any file that changed, so its reads go through the calls above.

Kinds of race:

``fifo``      the victim is replaced by a FIFO just before it is opened (``rounds`` times)
``dir``       the victim is replaced by a directory holding ``inner.txt`` just before it is opened
``rewrite``   after the first read from each of the first ``rounds`` opens of the victim, it is
              rewritten in place: same size, filled with the next letter (``A``, ``B``, ...), and
              given an mtime of ``1000 + version`` seconds, so the change shows whatever the clock
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

_CHILD = r'''
import os, sys
kind, victim, rounds = sys.argv[1], os.fsencode(sys.argv[2]), int(sys.argv[3])
state = {"left": rounds, "version": 0, "fresh": set()}
real_open, real_read, real_fdopen = os.open, os.read, os.fdopen
base = os.path.basename(victim)

def is_victim(path):
    return not isinstance(path, int) and os.path.basename(os.fsencode(path)) == base

def replace():
    os.unlink(victim)
    if kind == "fifo":
        os.mkfifo(victim)
    else:
        os.mkdir(victim)
        with open(os.path.join(victim, b"inner.txt"), "wb") as f:
            f.write(b"inner")

def rewrite():
    state["version"] += 1
    version = state["version"]
    size = os.stat(victim).st_size
    with open(victim, "r+b") as f:
        f.write(bytes([65 + version]) * size)
    os.utime(victim, ns=((1000 + version) * 10**9, (1000 + version) * 10**9))

def racing_open(path, flags, *args, **kwargs):
    if is_victim(path) and state["left"] > 0:
        if kind in ("fifo", "dir"):
            state["left"] -= 1
            replace()
        fd = real_open(path, flags, *args, **kwargs)
        if kind == "rewrite":
            state["left"] -= 1
            state["fresh"].add(fd)
        return fd
    return real_open(path, flags, *args, **kwargs)

def after_read(fd):
    if fd in state["fresh"]:
        state["fresh"].discard(fd)
        rewrite()

def racing_read(fd, n):
    data = real_read(fd, n)
    after_read(fd)
    return data

class Reader:
    def __init__(self, f, fd):
        self._f, self._fd = f, fd
    def read(self, n=-1):
        data = self._f.read(n)
        after_read(self._fd)
        return data
    def __getattr__(self, name):
        return getattr(self._f, name)
    def __enter__(self):
        return self
    def __exit__(self, *exc):
        self._f.close()

def racing_fdopen(fd, *args, **kwargs):
    f = real_fdopen(fd, *args, **kwargs)
    return Reader(f, fd) if fd in state["fresh"] else f

import cas.native.files as native
real_read_files = native.read_files

def racing_read_files(dir_fd, names, seen):
    if base not in names:
        return real_read_files(dir_fd, names, seen)
    if kind in ("fifo", "dir"):
        if state["left"] > 0:
            state["left"] -= 1
            replace()
        return real_read_files(dir_fd, names, seen)
    i = names.index(base)  # rewrite: the helper leaves the victim to the calls wrapped above
    found = real_read_files(dir_fd, names[:i] + names[i + 1:], seen[:i] + seen[i + 1:])
    found.insert(i, None)
    return found

os.open, os.read, os.fdopen = racing_open, racing_read, racing_fdopen
native.read_files = racing_read_files
from cas.cli import main
sys.exit(main(sys.argv[4:]))
'''


def run_racing(
    env: dict[str, str], cwd: Path, kind: str, victim: Path, rounds: int, *args: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """``cas *args`` with the race ``kind`` on ``victim``; ``timeout`` only guards against a hang."""
    argv = [sys.executable, "-c", _CHILD, kind, str(victim), str(rounds), *args]
    return subprocess.run(argv, capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout, check=False)


def write_victim(path: Path, size: int) -> None:
    """Version 0 of a ``rewrite`` victim: ``A`` * size, mtime 1000 s."""
    path.write_bytes(b"A" * size)
    os.utime(path, ns=(1000 * 10**9, 1000 * 10**9))
