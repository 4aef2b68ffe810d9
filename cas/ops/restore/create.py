"""One file created whole and only then named: the part of :mod:`cas.ops.restore.write` that a
restore's writer process (:mod:`cas.ops.restore.write_process`) needs, with nothing else imported
(no index, no repository): a small file's whole content, already verified, written in the fewest
calls, under its name only once complete; many of one directory by one call of the compiled helper
(:meth:`FileWriter.write_whole_many`). The rules on names are :mod:`cas.ops.restore.write`'s.
"""

from __future__ import annotations

import errno
import os
import stat
import threading

from cas.native.files import write_whole_files
from cas.ops.restore.temps import TMP_PREFIX

#: Read and write: a file built partly by copying ranges in the kernel is read back to be checked.
_FILE_FLAGS = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
_TMPFILE_FLAGS = getattr(os, "O_TMPFILE", 0) | os.O_RDWR | getattr(os, "O_CLOEXEC", 0)
HAS_TMPFILE = [hasattr(os, "O_TMPFILE") and os.path.isdir("/proc/self/fd")]
"""Whether files are created unnamed (``O_TMPFILE``); set to false once the file system refuses."""
_SPECIAL_BITS = stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX


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
    """Creates, fills and names the files of one restore (shared by its worker threads; the writer
    process has one of its own, with the same tag and a suffix)."""

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self._next = 0
        self._lock = threading.Lock()
        self._umask = current_umask()

    def _numbers(self, count: int) -> int:
        """The first of ``count`` numbers for temporary names that no other call is given."""
        with self._lock:
            first = self._next
            self._next += count
            return first

    def temporary_name(self) -> str:
        # Unique per restore without a syscall per file; O_EXCL catches the (foreign) collision.
        return f"{TMP_PREFIX}{self.tag}-{self._numbers(1)}"

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

    def write_whole_many(self, dir_fd: int, files: list[tuple[str, bytes, int, int, bool]]) -> list[object]:
        """Create each of ``files`` ((name, data, mode, mtime_ns, identify): ``data`` verified
        already, the whole content) in as few calls as a whole file takes: created as :meth:`create` does (with
        its final mode where it can be), one write (none for a file of zeros, which is a hole),
        ``utime`` by descriptor, named as :meth:`link` names it; nothing appears under a name before
        its file is whole. All in one call of the compiled helper, which leaves the GIL
        (:func:`cas.native.files.write_whole_files`). One answer per file, in order: None once it took
        its name, or with ``identify`` its (inode, ctime in ns) then; the temporary name it has
        (its name was taken, for :func:`place`); or an OSError: it failed, and nothing of it is
        left."""
        answers, HAS_TMPFILE[0] = write_whole_files(
            dir_fd, [(os.fsencode(name), data if type(data) is bytes else bytes(data), mode, mtime_ns, identify)
                     for name, data, mode, mtime_ns, identify in files],
            os.fsencode(f"{TMP_PREFIX}{self.tag}-"), self._numbers(len(files)), self._umask, HAS_TMPFILE[0])
        return [os.fsdecode(answer) if type(answer) is bytes else answer for answer in answers]

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


def unlink_quietly(dir_fd: int, name: str) -> None:
    try:
        os.unlink(name, dir_fd=dir_fd)
    except OSError:
        pass


def all_zero(data: bytes) -> bool:
    """Whether a chunk is all zero bytes; the first and last bytes rule out nearly all others cheaply."""
    if not data or data[0] or data[-1]:
        return False
    return (data if isinstance(data, bytes) else bytes(data)).count(0) == len(data)
