"""Reading one regular file for a snapshot: open, ``fstat``, read, cut, hash, hand the chunks on.

Each file is opened ``O_NOFOLLOW | O_NONBLOCK`` (a FIFO swapped in for a file cannot block the
open) and checked with ``fstat`` to still be a regular file. Its chunks are hashed on the calling
thread and handed to the :class:`~cas.repo.blobwriter.BlobWriter`, which compresses and packs them
on its thread pool. After reading, ``fstat`` must report the size, mtime and ctime seen before
reading, and the bytes read must match that size; otherwise the read is not :attr:`FileRead.stable`
and the caller decides what to do (:mod:`cas.ops.snapshot.entries`). (A write landing in the same
timestamp tick as the previous one and leaving the size unchanged cannot be seen this way; no
stat-based check can.)
"""

from __future__ import annotations

import errno
import os
import stat
from typing import NamedTuple

from cas.format.chunking import Chunker
from cas.format.hashing import HASH_BESIDE_FROM, HashBeside, hexdigest, new_hasher
from cas.repo.blobwriter import BlobWriter
from cas.types import BlobKind

_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | _CLOEXEC
_PATH_FLAGS = os.O_RDONLY | os.O_NONBLOCK | _CLOEXEC
"""The snapshot's own argument: followed if it is a symlink."""


class FileRead(NamedTuple):
    """One read of a regular file: its fstat before reading, and what was read."""

    st: os.stat_result
    size: int
    digest: str
    chunks: tuple[str, ...]
    stable: bool
    """Size, mtime and ctime unchanged by the read, and the bytes read were the size fstat gave."""


class SpecialFile(Exception):
    """The name turned out to be a FIFO, socket or device when opened."""


class Replaced(Exception):
    """The name is no longer what it was stat'ed as (a directory or symlink now): stat it again."""


class FileReader:
    """Reads regular files into chunks for one writer; holds nothing between files.

    Chunks go to the writer as they are cut, on every read, kept or not: the caller counts a read's
    chunks as referenced only for the read it keeps.
    """

    def __init__(self, writer: BlobWriter, chunker: Chunker) -> None:
        self.writer = writer
        self.chunker = chunker

    def read_at(self, dir_fd: int, name: bytes) -> FileRead | None:
        """Read the entry ``name`` of the directory open as ``dir_fd`` (not followed if a symlink);
        None if it vanished since it was stat'ed.

        Raises :class:`SpecialFile` if it is now a FIFO, socket or device, :class:`Replaced` if it
        is now a directory or symlink; any other ``OSError`` as it comes.
        """
        try:
            fd = os.open(name, _FILE_FLAGS, dir_fd=dir_fd)
        except FileNotFoundError:
            return None
        except OSError as exc:
            _raise_if_not_a_file(exc)
            raise
        return self._read_open(fd)

    def read_path(self, path: str) -> FileRead | None:
        """Read the file at ``path``, followed if it is a symlink; otherwise as :meth:`read_at`."""
        try:
            fd = os.open(path, _PATH_FLAGS)
        except FileNotFoundError:
            return None
        except OSError as exc:
            _raise_if_not_a_file(exc)
            raise
        return self._read_open(fd)

    def take_whole(self, st: os.stat_result, data: bytes, digest: str) -> FileRead:
        """A file below the minimum chunk size read whole elsewhere (the walk's batches,
        :mod:`cas.ops.snapshot.batch`), unchanged from ``st`` before and after: ``data``, whose
        BLAKE3 is ``digest``, handed on as its one chunk."""
        if not data:
            return FileRead(st, 0, digest, (), True)
        self.writer.add(digest, BlobKind.DATA, data)
        return FileRead(st, len(data), digest, (digest,), True)

    def _read_open(self, fd: int) -> FileRead:
        """Read the file open as ``fd`` (closed here)."""
        try:
            before = os.fstat(fd)
            if stat.S_ISDIR(before.st_mode):
                raise Replaced
            if not stat.S_ISREG(before.st_mode):
                raise SpecialFile
            # Opened non-blocking only so that a FIFO swapped in could not block the open. A
            # regular file's reads ignore the flag (Linux): a small file is read as it is opened,
            # a system call fewer per file, and made blocking only if a read says it would block.
            if before.st_size < self.chunker.min_size:
                size, digest, chunks = self._read_small(fd, before.st_size)
            else:
                os.set_blocking(fd, True)
                size, digest, chunks = self._read_chunked(fd, before.st_size)
            after = os.fstat(fd)
        finally:
            os.close(fd)
        stable = size == before.st_size and (after.st_size, after.st_mtime_ns, after.st_ctime_ns) == (
            before.st_size, before.st_mtime_ns, before.st_ctime_ns)
        return FileRead(before, size, digest, chunks, stable)

    def _read_small(self, fd: int, size: int) -> tuple[int, str, tuple[str, ...]]:
        """A file below the minimum chunk size: one chunk (read the general way if it grew past it)."""
        try:
            data = self._read_below(fd, size)
        except BlockingIOError:
            os.set_blocking(fd, True)
            os.lseek(fd, 0, os.SEEK_SET)
            data = self._read_below(fd, size)
        if data is None:
            os.set_blocking(fd, True)
            os.lseek(fd, 0, os.SEEK_SET)
            return self._read_chunked(fd, self.chunker.min_size)
        chunk_id = hexdigest(data)
        if not data:
            return 0, chunk_id, ()
        self.writer.add(chunk_id, BlobKind.DATA, data)
        return len(data), chunk_id, (chunk_id,)

    def _read_below(self, fd: int, size: int) -> bytes | None:
        """The whole of a file fstat said was ``size`` bytes (below the minimum chunk size); None
        if it holds the minimum chunk size or more (it grew)."""
        limit = self.chunker.min_size
        # Ask for the size fstat reports (+1 to notice growth): a buffer of the minimum chunk
        # size per small file would be allocated and shrunk 47,000 times for a site-packages.
        data = os.read(fd, min(limit, size + 1))
        if len(data) == size:
            # All it held when stat'ed, and not a byte more: no read to see the end. Had it grown
            # or changed since, the fstat after reading says so and the file is read again.
            return data
        while len(data) < limit:
            more = os.read(fd, limit - len(data))
            if not more:
                return data
            data += more
        return None

    def _read_chunked(self, fd: int, size_hint: int) -> tuple[int, str, tuple[str, ...]]:
        chunks: list[str] = []
        # A large file is hashed whole on another core while this thread hashes and stores its
        # chunks; each piece is hashed there before the chunker reuses its buffer for the next (a
        # snapshot of a 1 GiB file of weights into tmpfs: 0.91x and 0.98x the time, paired runs).
        beside = HashBeside() if size_hint >= HASH_BESIDE_FROM else None
        hasher = beside or new_hasher()
        size = 0
        try:
            with os.fdopen(fd, "rb", buffering=0, closefd=False) as f:
                for piece in self.chunker.chunks(f, size_hint):
                    if not len(piece):
                        continue
                    hasher.update(piece)
                    chunk_id = hexdigest(piece)
                    size += len(piece)
                    chunks.append(chunk_id)
                    self.writer.add(chunk_id, BlobKind.DATA, piece)
                    if beside is not None:
                        beside.settle()
                    del piece  # not held while the chunker reads its next block
        finally:
            if beside is not None:
                beside.close()
        digest = chunks[0] if len(chunks) == 1 else hasher.hexdigest()
        return size, digest, tuple(chunks)


def _raise_if_not_a_file(exc: OSError) -> None:
    """Called while the open's ``exc`` is handled: what its errno says the name has become."""
    if exc.errno == errno.ELOOP:
        raise Replaced from None  # a symlink now
    if exc.errno == errno.ENXIO:
        raise SpecialFile from None  # a socket now


__all__ = ["FileRead", "FileReader", "Replaced", "SpecialFile"]
