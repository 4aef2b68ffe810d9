"""A directory's names stat'ed, and its small files read and hashed, a batch at a time by the
compiled helper (:mod:`cas.native`), for the snapshot's walk (:mod:`cas.ops.snapshot.entries`).

One file the Python way costs an ``lstat``, ``open``, ``fstat``, ``read``, ``fstat`` and ``close``,
each a call that leaves the interpreter lock and takes it back from the writer's compression
threads. Here :data:`NAMES` names are stat'ed in one call (:func:`~cas.native.files.stat_names`),
and the small files among them that must be read (the walk picks them: regular, below the minimum
chunk size, not left out, not vouched for by the files cache) are read, checked against that
``lstat`` before and after reading, and hashed by calls of :data:`READ_BYTES` at most
(:func:`~cas.native.files.read_files`), each without the lock.

Whatever the helper does not vouch for (a name it could not stat, a file that changed or could
not be read) is answered None, and the walk does it the slow way
(:class:`~cas.ops.snapshot.file_reader.FileReader`), which reads again and tells errors.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import NamedTuple

from cas.native.files import read_files, stat_names
from cas.ops.snapshot.filter import Decision

NAMES = 500
"""Names stat'ed per call: as many as the files cache looks up per query."""
READ_BYTES = 1 << 20
"""Bytes of small files read per call at most (at least one file): what a batch holds in memory."""


class Stated(NamedTuple):
    """One name of the batch: its ``lstat``, and for a regular file the filter's decision, if
    the walk has a filter (taken here, and counted, once)."""

    st: os.stat_result
    decision: Decision | None


class NameBatch:
    """The names of a directory from one position on: what each was when stat'ed, and the
    content of the small files the walk will read, fetched a call's worth ahead of it."""

    def __init__(self, stated: dict[bytes, Stated], to_read: list[tuple[bytes, os.stat_result]]) -> None:
        self.stated = stated
        self._to_read = to_read
        """The small files to read, in the walk's order, with the ``lstat`` each must still match."""
        self._position = {name: i for i, (name, _) in enumerate(to_read)}
        self._next = 0
        self._contents: dict[bytes, tuple[bytes, str] | None] = {}

    def content(self, dir_fd: int, name: bytes) -> tuple[bytes, str] | None:
        """The content and BLAKE3 of ``name`` (one of the files to read), read in a call with the
        files after it up to :data:`READ_BYTES`; None if it is not one of them, or the helper
        could not vouch for the read."""
        if name in self._contents:
            return self._contents.pop(name)
        start = self._position.get(name)
        if start is None or start < self._next:
            return None
        end, total = start, 0
        while end < len(self._to_read):
            size = self._to_read[end][1].st_size
            if end > start and total + size > READ_BYTES:
                break
            total += size
            end += 1
        part = self._to_read[start:end]
        seen = [(st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns, st.st_ctime_ns) for _, st in part]
        found = read_files(dir_fd, [n for n, _ in part], seen)
        self._contents = dict(zip((n for n, _ in part), found))
        self._next = end
        return self._contents.pop(name)


def stat_batch(
    dir_fd: int, names: list[bytes], choose: Callable[[bytes, os.stat_result], tuple[Decision | None, bool]]
) -> NameBatch:
    """``names`` of the directory open as ``dir_fd`` stat'ed in one call; ``choose(name, st)``
    gives each stat'ed one's decision and whether it is a small file to read through the batch."""
    stated = {}
    to_read = []
    for name, st in zip(names, stat_names(dir_fd, names)):
        if st is None:
            continue  # asked again the slow way, which tells why
        decision, read = choose(name, st)
        stated[name] = Stated(st, decision)
        if read:
            to_read.append((name, st))
    return NameBatch(stated, to_read)


__all__ = ["NAMES", "READ_BYTES", "NameBatch", "Stated", "stat_batch"]
