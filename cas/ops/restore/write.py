"""Writing one restored file: created without a name (``O_TMPFILE``) or under a temporary one, its
content written (holes skipped, ranges of the file it replaces copied by the kernel), checked
against the tree's size and BLAKE3, given its mode and mtime, and only then named.

What reaches the final name is always a whole, verified file: a name is given (``link`` of the
unnamed file, or ``rename`` of the temporary) only after the check, and ``rename`` replaces an
entry rather than writing through it. Nothing is synced: like ``cp`` and ``tar``, a restore
promises a complete, verified tree once it returns, not that the tree survives a power loss that
follows (a crash leaves each name either absent, the old file, or the whole new file, as far as
the file system orders a ``rename`` after the data it names).
"""

from __future__ import annotations

import errno
import functools
import os
from collections.abc import Callable, Iterable

from cas.errors import AlreadyExists, IntegrityError
from cas.format.hashing import HASH_BESIDE_FROM, HashBeside, hexdigest, new_hasher
from cas.format.trees import Entry
from cas.ops.restore.create import all_zero
from cas.ops.restore.local import Span, identity

#: Preallocating helps large files stay contiguous; for small ones it is only an extra syscall.
PREALLOCATE_FROM = 16 * 1024 * 1024
HAS_COPY_RANGE = [hasattr(os, "copy_file_range")]
FATAL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EMFILE, errno.ENFILE}
_HASH_BLOCK = 4 * 1024 * 1024


def write_content(fd: int, entry: Entry, pieces: Iterable[bytes | Span], path: str, *, preallocate: bool) -> int:
    """Write a file's content from ``pieces`` (verified chunk bytes, or :class:`Span` ranges of the
    file it replaces) at the file's position 0, leaving holes for chunks of zeros, then check the
    whole against the entry's size and digest. Returns the size; raises IntegrityError naming ``path``.

    Bytes are hashed as they are written. A one-chunk file's digest is its chunk ID, which was
    checked when its bytes were read. Once a span is copied, the file is read back and hashed
    instead, unless every span's file still has the identity it had when its chunks were hashed
    (see :class:`Span`): then each chunk of the new file is one whose bytes hashed to its ID (read,
    or copied unchanged), in the tree's order, and only the size is left to check."""
    if preallocate:
        try:
            os.posix_fallocate(fd, 0, entry.size)
        except OSError as exc:
            if exc.errno in FATAL_ERRNOS:
                raise
    hasher = None
    if len(entry.chunks) != 1:
        # A large file is hashed on another core beside the chunks' verification and the writes (a
        # restore of a 1 GiB file of weights: 0.86x the time into tmpfs and onto ext4, paired
        # runs, the same peak memory).
        hasher = HashBeside() if entry.size >= HASH_BESIDE_FROM else new_hasher()
    read_back = False
    sources: dict[int, tuple[int, ...] | None] = {}
    written = 0
    holes = False
    try:
        for piece in pieces:
            if isinstance(piece, Span):
                _copy_span(piece, fd)
                read_back = True
                sources.setdefault(piece.fd, piece.identity)
                written += piece.length
                continue
            if hasher is not None and not read_back:
                hasher.update(piece)
            if all_zero(piece):
                # A hole, as the file most likely had: skip it (a file system without holes fills
                # the gap with zeros when the next data or the final size is written).
                os.lseek(fd, len(piece), os.SEEK_CUR)
                holes = True
            else:
                view = memoryview(piece)
                while view:
                    n = os.write(fd, view)
                    view = view[n:]
            written += len(piece)
    finally:
        if isinstance(hasher, HashBeside):
            hasher.close()
    if holes:
        os.ftruncate(fd, written)  # the file may end in a hole
    if written != entry.size:
        raise IntegrityError(f"{path}: restored {written} bytes, the tree records {entry.size}")
    if read_back and _unchanged(sources):
        return written
    if read_back:
        digest = _digest_of(fd, written)
    elif hasher is None:
        digest = entry.chunks[0]
    else:
        digest = hasher.hexdigest()
    if digest != entry.digest:
        raise IntegrityError(f"{path}: content does not match the file's recorded BLAKE3")
    return written


def set_metadata(fd: int, entry: Entry, mode: int, mode_set: bool) -> None:
    if not mode_set:
        os.fchmod(fd, mode)
    os.utime(fd, ns=(entry.mtime_ns, entry.mtime_ns))


def _copy_span(span: Span, fd: int) -> None:
    """Copy a span to ``fd``'s position in the kernel (or through a buffer where it cannot)."""
    offset, left = span.offset, span.length
    while left:
        n = 0
        if HAS_COPY_RANGE[0]:
            try:
                n = os.copy_file_range(span.fd, fd, left, offset)
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EBADF):
                    raise
                HAS_COPY_RANGE[0] = exc.errno != errno.ENOSYS
        if not n:
            data = os.pread(span.fd, min(left, _HASH_BLOCK), offset)
            if not data:
                raise IntegrityError("a file being replaced shrank while its content was reused")
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            n = len(data)
        offset += n
        left -= n


def _unchanged(sources: dict[int, tuple[int, ...] | None]) -> bool:
    """Whether every file spans were copied from has, now that they are copied, the identity it had
    when its chunks were hashed (and had one: see :class:`Span`)."""
    return all(known is not None and identity(os.fstat(fd)) == known for fd, known in sources.items())


def _digest_of(fd: int, size: int) -> str:
    hasher = new_hasher()
    offset = 0
    while offset < size:
        block = os.pread(fd, min(_HASH_BLOCK, size - offset), offset)
        if not block:
            break
        hasher.update(block)
        offset += len(block)
    return str(hasher.hexdigest())


def place(dir_fd: int, tmp: str, name: str, path: str, remove_dir: Callable[[], None] | None) -> None:
    """Rename a finished temporary into place (replacing an entry, never writing through it). A
    directory in the way is removed first by ``remove_dir`` (``--delete``), else refused."""
    for attempt in range(2):
        try:
            os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            return
        except OSError as exc:
            if not isinstance(exc, IsADirectoryError) and exc.errno != errno.ENOTEMPTY:
                raise
            if remove_dir is None or attempt:
                raise AlreadyExists(
                    f"{path} is a directory in the destination; remove it first (or pass --delete)"
                ) from None
        remove_dir()


@functools.lru_cache(maxsize=16)
def _zero_chunk_id(length: int) -> str:
    return hexdigest(bytes(length))


def has_zero_runs(entry: Entry, locations: dict) -> bool:  # type: ignore[type-arg]
    """Whether a file holds a chunk of zeros that repeats, i.e. a long run of zeros, likely a hole.

    Such a file is not preallocated, so its holes stay holes. Only repeated chunks are checked (a
    long zero run is cut into identical chunks), each against the ID of that many zero bytes.
    """
    seen: set[str] = set()
    checked: set[str] = set()
    for chunk_id in entry.chunks:
        if chunk_id in seen and chunk_id not in checked:
            checked.add(chunk_id)
            loc = locations.get(chunk_id)
            if loc is not None and _zero_chunk_id(loc.raw_length) == chunk_id:
                return True
        seen.add(chunk_id)
    return False
