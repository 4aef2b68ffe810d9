"""Local filesystem backend: one file per object under a root directory.

Writes go to a temporary file in the target directory, are fsynced, and then appear under their
final name in one step: ``rename`` when overwriting is allowed, ``link`` (which fails if the name
exists) when it is not. A crash never leaves a partial object under a final name.

:meth:`LocalBackend.get_view` gives ranges of objects mapped into memory (``mmap``), read-only: the
reader sees the page cache's pages, with no copy into fresh memory (on a virtual machine, each
fresh page is a fault costing about as much as copying it). The last :data:`MAPS_KEPT` objects
mapped stay mapped (their pages read show in the process's resident size as file pages: page cache
the kernel reclaims as it needs, not memory of the process's own). A mapping is only made of a
range that the file holds when it is mapped, and objects are never rewritten in place (a new object
is a new file under its name); a file cut shorter while mapped by something outside cas would stop
the process reading it (SIGBUS), as it would git reading its mapped packs.
"""

from __future__ import annotations

import errno
import mmap
import os
import secrets
import shutil
import stat
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Iterator
from typing import BinaryIO

from backends.base import Backend, Capabilities, ObjectInfo, check_key
from backends.errors import (
    AlreadyExists,
    CasError,
    ConfigurationError,
    NotFound,
    PermissionDenied,
    Unavailable,
)

_TMP_PREFIX = ".tmp-"
_COPY_BLOCK = 8 << 20


#: Failures of the storage that a retry cannot fix: they stay until someone frees space or renames.
_PERMANENT_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.ENAMETOOLONG, errno.ENOTDIR, errno.ELOOP}
)


def _translate(exc: OSError, key: str) -> Exception:
    if isinstance(exc, CasError):  # ours already (AlreadyExists is also an OSError)
        return exc
    if exc.errno == errno.ENOENT:
        return NotFound(f"object not found: {key}")
    if exc.errno == errno.EEXIST:
        return AlreadyExists(f"object already exists: {key}")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return PermissionDenied(f"permission denied for {key}: {exc.strerror}")
    return Unavailable(
        f"local storage error on {key}: {exc.strerror or exc}",
        temporary=exc.errno not in _PERMANENT_ERRNOS,
    )


_READ_FLAGS = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)

MAPS_KEPT = 8
"""Objects kept mapped by :meth:`LocalBackend.get_view` (each holds a file descriptor, and the pages
of it that were read count in the process's resident size, as page cache the kernel can reclaim)."""
MIN_MAPPED = 64 * 1024
"""Ranges shorter than this are read (a mapping costs more than copying them)."""


class LocalBackend(Backend):
    capabilities = Capabilities(remote=False, put_if_absent=True)

    def __init__(self, root: str | os.PathLike[str], *, create: bool = True) -> None:
        self.root = os.path.abspath(os.fspath(root))
        if os.path.exists(self.root) and not os.path.isdir(self.root):
            raise ConfigurationError(f"repository path is not a directory: {self.root}")
        if not os.path.isdir(self.root):
            if not create:
                raise NotFound(f"repository directory does not exist: {self.root}")
            try:
                os.makedirs(self.root, mode=0o700, exist_ok=True)
            except OSError as exc:
                raise _translate(exc, self.root) from exc
        # key -> (the file's identity when mapped, its mapping): the last objects mapped.
        self._maps: OrderedDict[str, tuple[tuple[int, int, int], mmap.mmap]] = OrderedDict()
        self._maps_lock = threading.Lock()

    def describe(self) -> str:
        return f"file://{self.root}"

    def _path(self, key: str) -> str:
        return os.path.join(self.root, *check_key(key).split("/"))

    def put(self, key: str, data: bytes | memoryview | BinaryIO, *, overwrite: bool = True) -> None:
        path = self._path(key)
        directory = os.path.dirname(path)
        if not overwrite and os.path.lexists(path):
            raise AlreadyExists(f"object already exists: {key}")
        try:
            _makedirs_private(directory)
            named = None if isinstance(data, (bytes, bytearray, memoryview)) else _name_unnamed(data, directory)
            if named is None:
                fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, dir=directory)
            else:
                fd, tmp = -1, named
        except OSError as exc:
            raise _translate(exc, key) from exc
        try:
            if fd >= 0:
                with os.fdopen(fd, "wb") as f:
                    if isinstance(data, (bytes, bytearray, memoryview)):
                        f.write(data)
                    else:
                        _copy_stream(data, f)
                    f.flush()
                    os.fsync(f.fileno())
            else:
                os.fsync(data.fileno())  # type: ignore[union-attr]  # a file: _name_unnamed said so
            if overwrite:
                os.replace(tmp, path)
            else:
                # link() refuses an existing name, so two racing writers cannot both win.
                os.link(tmp, path)
                os.unlink(tmp)
            fsync_directory(directory)
        except BaseException as exc:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            if isinstance(exc, OSError) and not isinstance(exc, CasError):
                raise _translate(exc, key) from exc
            raise

    def staging_directory(self) -> str | None:
        return self.root

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        # os.open and pread, not a buffered file object: a restore reads one range per tree node,
        # thousands of small reads, where building the file object cost more than the read.
        path = self._path(key)
        try:
            fd = os.open(path, _READ_FLAGS)
            try:
                if offset < 0 or length is None or length < 0:
                    size = os.fstat(fd).st_size
                    if offset < 0:
                        offset = max(0, size + offset)
                    if length is None or length < 0:  # to the end, as a file's read() takes it
                        length = max(0, size - offset)
                data = os.pread(fd, length, offset)
                if len(data) < length:  # a read may stop short of what is there (at 2 GiB, say)
                    parts = [data]
                    got = len(data)
                    while got < length:
                        more = os.pread(fd, length - got, offset + got)
                        if not more:
                            break
                        parts.append(more)
                        got += len(more)
                    data = b"".join(parts)
                return data
            finally:
                os.close(fd)
        except IsADirectoryError as exc:
            raise NotFound(f"object not found: {key}") from exc
        except OSError as exc:
            raise _translate(exc, key) from exc

    def get_view(self, key: str, offset: int, length: int) -> memoryview:
        """:meth:`get` of a range, as a read-only view of the object's file mapped into memory (see
        the module's notes); a short range, or one the file does not hold, is read as :meth:`get`
        reads it. The file is checked to be the one mapped (device, inode, size) on every call."""
        if length < MIN_MAPPED or offset < 0:
            return super().get_view(key, offset, length)
        path = self._path(key)
        try:
            st = os.stat(path)
        except OSError as exc:
            raise _translate(exc, key) from exc
        if offset + length > st.st_size or not stat.S_ISREG(st.st_mode):
            return super().get_view(key, offset, length)
        identity = (st.st_dev, st.st_ino, st.st_size)
        with self._maps_lock:
            kept = self._maps.get(key)
            if kept is not None and kept[0] == identity:
                self._maps.move_to_end(key)
                return memoryview(kept[1])[offset : offset + length]
        try:
            fd = os.open(path, _READ_FLAGS)
            try:
                st = os.fstat(fd)  # the file opened, which a rename may have put there since
                if offset + length > st.st_size:
                    return super().get_view(key, offset, length)
                identity = (st.st_dev, st.st_ino, st.st_size)
                mapped = mmap.mmap(fd, st.st_size, access=mmap.ACCESS_READ)
            finally:
                os.close(fd)
        except OSError as exc:
            raise _translate(exc, key) from exc
        with self._maps_lock:
            self._maps[key] = (identity, mapped)
            self._maps.move_to_end(key)
            while len(self._maps) > MAPS_KEPT:
                self._maps.popitem(last=False)  # unmapped once the views of it are gone
        return memoryview(mapped)[offset : offset + length]

    def close(self) -> None:
        with self._maps_lock:
            self._maps.clear()

    def stat(self, key: str) -> ObjectInfo:
        try:
            st = os.stat(self._path(key))
        except OSError as exc:
            raise _translate(exc, key) from exc
        if not os.path.isfile(self._path(key)):
            raise NotFound(f"object not found: {key}")
        return ObjectInfo(key, st.st_size)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        # Walk only the directory the prefix is in, then filter by the prefix's last part.
        base = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        start = os.path.join(self.root, *base.split("/")) if base else self.root
        for dirpath, dirnames, filenames in os.walk(start):
            dirnames.sort()
            rel = os.path.relpath(dirpath, self.root)
            rel = "" if rel == "." else rel.replace(os.sep, "/") + "/"
            for name in sorted(filenames):
                if name.startswith(_TMP_PREFIX):
                    continue
                key = rel + name
                if not key.startswith(prefix):
                    continue
                try:
                    size = os.stat(os.path.join(dirpath, name)).st_size
                except FileNotFoundError:
                    continue
                yield ObjectInfo(key, size)

    def delete(self, key: str) -> None:
        try:
            os.unlink(self._path(key))
        except OSError as exc:
            raise _translate(exc, key) from exc


def _makedirs_private(path: str) -> None:
    """Like ``os.makedirs(path, 0o700)``, but every level it creates is 0700, not just the last."""
    if os.path.isdir(path):
        return
    parent = os.path.dirname(path)
    if parent and parent != path:
        _makedirs_private(parent)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        if not os.path.isdir(path):
            raise


def _name_unnamed(src: BinaryIO, directory: str) -> str | None:
    """Give ``src`` a temporary name in ``directory`` when it is an unnamed regular file (built in
    :meth:`LocalBackend.staging_directory`) read from its start: its bytes become the object's
    without a copy. None when it is not such a file, or the kernel will not link it (another file
    system, opened with ``O_EXCL``, no ``/proc``): the caller copies it."""
    try:
        fd = src.fileno()
        st = os.fstat(fd)
        if st.st_nlink != 0 or not stat.S_ISREG(st.st_mode) or src.tell() != 0:
            return None
    except (AttributeError, OSError, ValueError):
        return None
    name = f"{_TMP_PREFIX}{secrets.token_hex(8)}"
    try:
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None
    try:
        # linkat(AT_SYMLINK_FOLLOW) of the descriptor's /proc link: a directory descriptor makes
        # Python call linkat (plain link() would link the /proc link itself, and fail).
        os.link(f"/proc/self/fd/{fd}", name, dst_dir_fd=dir_fd, follow_symlinks=True)
    except OSError:
        return None
    finally:
        os.close(dir_fd)
    return os.path.join(directory, name)


def _copy_stream(src: BinaryIO, dst: BinaryIO) -> None:
    """Copy the rest of ``src`` to ``dst``: inside the kernel (``copy_file_range``) when ``src`` is
    a regular file, so the bytes never pass through this process's memory; by blocks otherwise."""
    try:
        src_fd = src.fileno()
        start = src.tell()
        regular = stat.S_ISREG(os.fstat(src_fd).st_mode)
    except (AttributeError, OSError, ValueError):
        regular = False
    copy_range = getattr(os, "copy_file_range", None)
    if regular and copy_range is not None:
        dst.flush()
        pos = start
        try:
            while True:
                n = copy_range(src_fd, dst.fileno(), _COPY_BLOCK, pos)
                if not n:
                    break
                pos += n
        except OSError as exc:
            if pos != start or exc.errno not in _NO_COPY_RANGE:
                raise
        else:
            src.seek(pos)
            return
    shutil.copyfileobj(src, dst, _COPY_BLOCK)


#: ``copy_file_range`` refused before copying anything: copy through memory instead.
_NO_COPY_RANGE = frozenset({errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EBADF})


def fsync_directory(path: str) -> None:
    """Make a rename or link in ``path`` durable (best effort: some filesystems refuse)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def from_url(url: str, **options: object) -> LocalBackend:
    from urllib.parse import unquote, urlsplit

    parts = urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise ConfigurationError(f"file:// URL must name a local path, got host {parts.netloc!r}")
    path = unquote(parts.path)
    if not path:
        raise ConfigurationError("file:// URL has no path")
    return LocalBackend(path, create=bool(options.get("create", True)))
