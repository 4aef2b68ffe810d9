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
import itertools
import os
import stat
from collections.abc import Callable, Iterable

from cas.errors import AlreadyExists, IntegrityError
from cas.format.hashing import hexdigest, new_hasher
from cas.format.trees import Entry
from cas.ops.restore.local import Span, identity
from cas.ops.restore.temps import TMP_PREFIX

#: Read and write: a file built partly by copying ranges in the kernel is read back to be checked.
_FILE_FLAGS = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
_TMPFILE_FLAGS = getattr(os, "O_TMPFILE", 0) | os.O_RDWR | getattr(os, "O_CLOEXEC", 0)
#: Preallocating helps large files stay contiguous; for small ones it is only an extra syscall.
PREALLOCATE_FROM = 16 * 1024 * 1024
HAS_TMPFILE = [hasattr(os, "O_TMPFILE") and os.path.isdir("/proc/self/fd")]
HAS_COPY_RANGE = [hasattr(os, "copy_file_range")]
FATAL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EMFILE, errno.ENFILE}
_SPECIAL_BITS = stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX
_HASH_BLOCK = 4 * 1024 * 1024


def current_umask() -> int | None:
    """The process's umask without changing it (``/proc/self/status``), None where unknown."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return None


class FileWriter:
    """Creates, fills and names the files of one restore (shared by its worker threads)."""

    def __init__(self, tag: str) -> None:
        self._tag = tag
        self._counter = itertools.count()
        self._umask = current_umask()

    def temporary_name(self) -> str:
        # Unique per restore without a syscall per file; O_EXCL catches the (foreign) collision.
        return f"{TMP_PREFIX}{self._tag}-{next(self._counter)}"

    def create(self, dir_fd: int, mode: int) -> tuple[int, str | None, bool]:
        """A new file in the directory, unnamed if the file system can (``O_TMPFILE``: an interrupted
        restore leaves nothing behind, one directory operation instead of two), else under a
        temporary name (returned). The third value says whether ``mode`` was given at creation
        (the umask lets it through and it has no setuid, setgid or sticky bit, which a write would
        clear or which must not show before the content is checked): then no ``fchmod`` follows."""
        at_create = self._umask is not None and not mode & _SPECIAL_BITS and mode & self._umask == 0
        create_mode = mode if at_create else 0o600
        if HAS_TMPFILE[0]:
            try:
                return os.open(".", _TMPFILE_FLAGS, create_mode, dir_fd=dir_fd), None, at_create
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOENT):
                    raise
                HAS_TMPFILE[0] = False  # the file system cannot: use named temporaries
        tmp = self.temporary_name()
        return os.open(tmp, _FILE_FLAGS, create_mode, dir_fd=dir_fd), tmp, at_create

    def write_whole(self, dir_fd: int, name: str, data: bytes, mode: int, mtime_ns: int) -> str | None:
        """Create a file holding ``data`` (verified already: the whole content) in as few calls as
        a whole file takes: created with its final mode where it can be, one write (none for a file
        of zeros, which is a hole), ``utime`` by descriptor, named. Returns None if it took its final
        name, else the temporary name it has (the name was taken), for :func:`place`. Nothing
        appears under ``name`` before the file is whole."""
        fd, tmp, mode_set = self.create(dir_fd, mode)
        try:
            try:
                if _all_zero(data):
                    os.ftruncate(fd, len(data))
                elif data:
                    written = os.write(fd, data)
                    if written < len(data):
                        view = memoryview(data)[written:]
                        while view:
                            view = view[os.write(fd, view):]
                if not mode_set:
                    os.fchmod(fd, mode)
                os.utime(fd, ns=(mtime_ns, mtime_ns))
                if tmp is None:
                    tmp = self.link(fd, dir_fd, name)
            finally:
                os.close(fd)
        except BaseException:
            if tmp is not None:
                unlink_quietly(dir_fd, tmp)
            raise
        return tmp

    def link(self, fd: int, dir_fd: int, name: str) -> str | None:
        """Give a finished unnamed file its final name; if the name is taken (``--overwrite``), link
        it under a temporary name instead and return that, for :func:`place` to rename."""
        try:
            os.link(f"/proc/self/fd/{fd}", name, dst_dir_fd=dir_fd, follow_symlinks=True)
            return None
        except FileExistsError:
            tmp = self.temporary_name()
            os.link(f"/proc/self/fd/{fd}", tmp, dst_dir_fd=dir_fd, follow_symlinks=True)
            return tmp


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
    hasher = None if len(entry.chunks) == 1 else new_hasher()
    read_back = False
    sources: dict[int, tuple[int, ...] | None] = {}
    written = 0
    holes = False
    for piece in pieces:
        if isinstance(piece, Span):
            _copy_span(piece, fd)
            read_back = True
            sources.setdefault(piece.fd, piece.identity)
            written += piece.length
            continue
        if hasher is not None and not read_back:
            hasher.update(piece)
        if _all_zero(piece):
            # A hole, as the file most likely had: skip it (a file system without holes fills the
            # gap with zeros when the next data or the final size is written).
            os.lseek(fd, len(piece), os.SEEK_CUR)
            holes = True
        else:
            view = memoryview(piece)
            while view:
                n = os.write(fd, view)
                view = view[n:]
        written += len(piece)
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


def unlink_quietly(dir_fd: int, name: str) -> None:
    try:
        os.unlink(name, dir_fd=dir_fd)
    except OSError:
        pass


def _all_zero(data: bytes) -> bool:
    """Whether a chunk is all zero bytes; the first and last bytes rule out nearly all others cheaply."""
    if not data or data[0] or data[-1]:
        return False
    return (data if isinstance(data, bytes) else bytes(data)).count(0) == len(data)


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
