"""``cas mount``: stored executions served read-only through FUSE, for tools that are not Python.

``MOUNTPOINT/<execution>/...`` shows each execution's tree with the modes, mtimes, sizes and
symlinks it was stored with (setuid, setgid and sticky bits dropped; files owned by the user who
mounted). Names come from :class:`cas.ops.view.SnapshotView`, so none can climb out of the
mountpoint, and symlinks are returned as links (the kernel resolves them like any link; cas never
follows one). A file read fetches only the chunks covering it, each verified; a chunk that fails
verification makes that read fail with EIO and is logged with the file's path.

The mount runs in the foreground until Ctrl-C (SIGINT), SIGTERM or ``fusermount -u MOUNTPOINT``;
however it ends, the mountpoint is unmounted before :func:`serve` returns or raises.

mfusepy (the ``[mount]`` extra) and libfuse are loaded here and nowhere else in cas.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import itertools
import logging
import os
import re
import shutil
import stat
import subprocess
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from functools import wraps
from typing import Any, TypeVar

from cas.errors import CasError, ConfigurationError, MissingDependency, NotFound
from cas.format.trees import DIR, FILE, SYMLINK
from cas.ops.view import SMALL_FILE, Node, SnapshotView
from cas.repo.ranges import RangeReader
from cas.types import EntryType

log = logging.getLogger("cas.mount")

READERS_KEPT = 8
"""Files being read kept open by path when the kernel does not open files through cas (their readers'
fetched chunks and read-ahead state; the least recently read is dropped beyond this)."""
LOOKED_UP_KEPT = 256
"""Files whose nodes a lookup keeps for their first read (a stored tree never changes)."""
LISTED_KEPT = 16_384
"""Directories remembered as listed (a listing after that gives their files' attributes too)."""
CACHE_SECONDS = 60
"""How long the kernel may keep names and attributes: stored trees never change, only the list of
executions does (a new snapshot appears at the top level within this time)."""

_READDIR_PLUS = 1  # libfuse 3: the kernel asks for attributes with the names (readdir's flags)
_FILL_DIR_PLUS = 2  # libfuse 3: this entry's attributes are complete (the filler's flags)
_CAP_READDIRPLUS_AUTO = 1 << 14  # libfuse 3: attributes asked only in a directory's first request
_CAP_NO_OPEN_SUPPORT = 1 << 17  # libfuse 3: the kernel takes ENOSYS from open as "never ask again"
_LOOP_ENDED = "8"
"""What libfuse 3's ``fuse_main`` returns when its loop ends other than by unmounting (a signal)."""

_T = TypeVar("_T")
_KIND = {FILE: stat.S_IFREG, DIR: stat.S_IFDIR, SYMLINK: stat.S_IFLNK}
_S_IFDIR, _S_IFREG, _S_IFLNK = stat.S_IFDIR, stat.S_IFREG, stat.S_IFLNK
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC

Listing = list[tuple[str, int, "tuple[int, int, int, int] | None"]]
"""A directory's entries as the mount lists them: name, type (``S_IFDIR``...), :func:`_fields`."""


def _fields(kind: EntryType, mode: int, size: int, mtime_ns: int) -> tuple[int, int, int, int]:
    """``(st_mode, st_nlink, st_size, mtime_ns)`` of an entry as the mount shows it (setuid, setgid
    and sticky bits dropped; a symlink's permissions are all set)."""
    st_mode = _KIND[kind] | (0o777 if kind == SYMLINK else mode & 0o777)
    return st_mode, 2 if kind == DIR else 1, size, mtime_ns


def _errors(op: Callable[..., _T]) -> Callable[..., _T]:
    """Turn cas's errors into the errno FUSE answers with; an I/O failure is logged with its path."""

    @wraps(op)
    def wrapper(self: Operations, path: str, *args: Any) -> _T:
        try:
            return op(self, path, *args)
        except NotFound:
            raise OSError(errno.ENOENT, "not found") from None
        except NotADirectoryError:
            raise OSError(errno.ENOTDIR, "not a directory") from None
        except IsADirectoryError:
            raise OSError(errno.EISDIR, "is a directory") from None
        except (CasError, OSError) as exc:
            code = exc.errno if isinstance(exc, OSError) and exc.errno and not isinstance(exc, CasError) else errno.EIO
            where = path.lstrip("/") or "/"
            text = str(exc) if str(exc).startswith(where + ":") else f"{where}: {exc}"
            log.error("%s failed (%s): %s", op.__name__, errno.errorcode.get(code, code), text)
            raise OSError(code, os.strerror(code)) from None

    return wrapper


class Operations:
    """The FUSE callbacks (mfusepy calls them by name; paths are '/'-rooted and '/'-separated)."""

    use_ns = True

    def __init__(self, view: SnapshotView) -> None:
        self.view = view
        self._uid, self._gid = os.getuid(), os.getgid()
        self._files: dict[int, RangeReader] = {}
        self._readers: OrderedDict[str, RangeReader] = OrderedDict()  # by path, when files are not opened
        self._no_open = False
        self._looked_up: dict[str, Node] = {}  # files looked up, not read yet (a few)
        self._listings: OrderedDict[str, Listing] = OrderedDict()
        self._listed: OrderedDict[str, bool] = OrderedDict()  # directories listed (by tree ID): files' attributes given?
        self._handles = itertools.count(1)
        self._lock = threading.Lock()
        self.started = False

    def init_with_config(self, conn: Any, config: Any) -> None:
        """libfuse's start: the kernel is connected. A kernel that can (Linux 4.19 on) is told,
        by the first open answered ENOSYS, to stop sending opens and releases of files: a file is
        then read with one request per read and its lookup, not three or more."""
        self.started = True
        self._no_open = conn is not None and bool(conn.capable & _CAP_NO_OPEN_SUPPORT)

    def _attrs(self, node: Node) -> dict[str, int]:
        return self._stat(_fields(node.type, node.mode, node.size, node.mtime_ns))

    def _stat(self, fields: tuple[int, int, int, int]) -> dict[str, int]:
        """mfusepy's attributes of a listing's fields (owned by this user; every time the mtime)."""
        mode, nlink, size, mtime_ns = fields
        return {"st_mode": mode, "st_nlink": nlink, "st_size": size, "st_blocks": (size + 511) // 512,
                "st_uid": self._uid, "st_gid": self._gid,
                "st_mtime": mtime_ns, "st_ctime": mtime_ns, "st_atime": mtime_ns}

    @_errors
    def getattr(self, path: str, fh: int | None = None) -> dict[str, int]:
        node = self.view.lookup(path)
        if node.type == FILE:  # a file read by path after its lookup finds its node here
            with self._lock:
                if len(self._looked_up) >= LOOKED_UP_KEPT:
                    self._looked_up.clear()
                self._looked_up[path] = node
        return self._attrs(node)

    @_errors
    def readdir(self, path: str, fh: int) -> list[tuple[str, int, int]]:
        # With each entry's type (d_type), `find -type f` and `ls` need not stat every file.
        return [(name, mode, 0) for name, mode, _fields in self._listing(self.view.lookup(path))]

    @_errors
    def readdir_plus(self, path: str, offset: int = 0) -> tuple[Listing, bool]:
        """The listing with each entry's attributes as ``(name, type, (st_mode, st_nlink, st_size,
        mtime_ns))`` (a symlink's are None: it is looked up), for libfuse 3's readdirplus, and
        whether to give the kernel the files' attributes too, not only the subdirectories'.

        Attributes given with a listing spare the kernel a lookup per entry (a walk down the tree
        makes one request per directory; a stat or open of a listed file none), but the kernel
        makes an inode for each: a walk that needs only names and types (`find -type f`) was
        about 25% slower with every file's. So a directory's files' attributes come from its
        second listing on (asked from its start): a directory listed again is one being worked
        in, whose files are then stat'ed or opened; its first listing, what a walk does, stays
        lean."""
        node = self.view.lookup(path)
        files_too = False
        if node.tree:
            with self._lock:
                if offset == 0:  # a listing from its start: the files' attributes if listed before
                    files_too = self._listed[node.tree] = node.tree in self._listed
                    self._listed.move_to_end(node.tree)
                    while len(self._listed) > LISTED_KEPT:
                        self._listed.popitem(last=False)
                else:  # the rest of a listing: as its start
                    files_too = self._listed.get(node.tree, False)
        return self._listing(node), files_too

    def _listing(self, node: Node) -> Listing:
        # The kernel reads a directory in more than one call: a stored directory (by tree ID)
        # never changes, so its listing is kept for the next call.
        with self._lock:
            listing = self._listings.get(node.tree) if node.tree else None
        if listing is None:
            listing = [(".", _S_IFDIR, None), ("..", _S_IFDIR, None)]
            if node.tree:
                listing += [(e.name, _KIND[e.type],
                             None if e.type is SYMLINK else _fields(e.type, e.mode, e.size, e.mtime_ns))
                            for e in self.view.entries(node)]
            else:
                listing += [(n.name, _S_IFDIR, _fields(DIR, n.mode, 0, n.mtime_ns)) for n in self.view.children(node)]
            if node.tree:
                with self._lock:
                    self._listings[node.tree] = listing
                    while len(self._listings) > 256:
                        self._listings.popitem(last=False)
        return listing

    @_errors
    def readlink(self, path: str) -> str:
        node = self.view.lookup(path)
        if node.type != SYMLINK:
            raise OSError(errno.EINVAL, "not a symlink")
        return node.target

    @_errors
    def open(self, path: str, flags: int) -> int:
        if flags & _WRITE_FLAGS:
            raise OSError(errno.EROFS, "read-only")
        node = self.view.lookup(path)
        if self._no_open:
            if node.type != FILE:
                raise IsADirectoryError(path)
            raise OSError(errno.ENOSYS, "opens are not needed")
        reader = self.view.open(node)
        with self._lock:
            fh = next(self._handles)
            self._files[fh] = reader
        return fh

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        """Up to ``size`` bytes of the file from ``offset`` (:meth:`read_into`, as bytes)."""
        buffer = bytearray(size)
        return bytes(buffer[: self.read_into(path, memoryview(buffer), offset, fh)])

    @_errors
    def read_into(self, path: str, target: memoryview, offset: int, fh: int) -> int:
        """Up to ``len(target)`` bytes of the file from ``offset`` copied into ``target`` (the
        kernel's reply buffer, under the mount): how many. The bytes go there from the verified
        chunks that hold them, with no copy made on the way."""
        if fh == 0 and self._no_open:
            return self._read_unopened(path, target, offset)
        with self._lock:
            reader = self._files.get(fh)
        if reader is None:
            raise OSError(errno.EBADF, "bad file handle")
        return reader.read_into(offset, target)

    def _read_unopened(self, path: str, target: memoryview, offset: int) -> int:
        """A read of a file the kernel did not open through cas: its reader is found by path. A
        file read whole by this one read (most small files) is not kept."""
        size = len(target)
        with self._lock:
            reader = self._readers.get(path)
            if reader is not None:
                self._readers.move_to_end(path)
        if reader is None:
            with self._lock:
                node = self._looked_up.pop(path, None)
            if node is None:
                node = self.view.lookup(path)
            if offset == 0 and node.type == FILE and size >= node.size and node.size <= SMALL_FILE:
                data = self.view.read_whole(node)  # a small file read whole: the common case
                target[: len(data)] = data
                return len(data)
            reader = self.view.open(node)
            if offset > 0 or offset + size < reader.size:
                with self._lock:
                    reader = self._readers.setdefault(path, reader)
                    while len(self._readers) > READERS_KEPT:
                        self._readers.popitem(last=False)
        return reader.read_into(offset, target)

    def release(self, path: str, fh: int) -> int:
        with self._lock:
            self._files.pop(fh, None)
        return 0

    def statfs(self, path: str) -> dict[str, int]:
        return {"f_bsize": 4096, "f_frsize": 4096, "f_namemax": 4096}


MAX_THREADS = 10
"""libfuse's worker threads at most (its own default)."""


def serve(view: SnapshotView, mountpoint: str, *, on_ready: Callable[[], None] | None = None) -> None:
    """Mount ``view`` at ``mountpoint`` and serve it until unmounted or interrupted."""
    fuse = _load_fuse()
    mountpoint = os.path.abspath(mountpoint)
    if is_mounted(mountpoint):
        raise ConfigurationError(f"{mountpoint} is already a mountpoint (one left by a killed process is "
                                 f"removed by 'fusermount -u {mountpoint}')")
    if not os.path.isdir(mountpoint):
        raise ConfigurationError(f"mountpoint {mountpoint} is not a directory")
    operations = Operations(view)
    try:
        if on_ready is not None:
            on_ready()
        _fuse_class(fuse)(
            operations, mountpoint, foreground=True, ro=True, nosuid=True, nodev=True,
            default_permissions=True, kernel_cache=True, fsname="cas", subtype="cas",
            attr_timeout=CACHE_SECONDS, entry_timeout=CACHE_SECONDS,
            # libfuse 3.14 prints that it ignores the unset idle limit (2**32-1) on every mount. As
            # many idle threads as there can be threads keeps its default: none is ever stopped.
            max_threads=MAX_THREADS, max_idle_threads=MAX_THREADS,
        )
    except RuntimeError as exc:  # libfuse's own failure (mount refused, /dev/fuse missing...)
        if operations.started and str(exc) == _LOOP_ENDED:
            return  # libfuse 3 reports a loop stopped by SIGINT/SIGTERM this way
        raise CasError(f"could not mount {mountpoint}: libfuse returned {exc} (see the message above)") from None
    finally:
        unmount(mountpoint)


def _fuse_class(fuse: Any) -> Any:
    """mfusepy's FUSE, answering libfuse 3's readdirplus with the attributes ``readdir_plus`` gives
    (mfusepy gives none, and the kernel then looks up every subdirectory it enters). Entries carry
    offsets (their place in the listing, plus one): libfuse 3.14 drops the attributes of a listing
    given whole (offset 0), so a readdirplus, and whatever the kernel asks after it, is answered a
    buffer at a time; a plain listing from the start is given whole, and libfuse answers the kernel's
    further calls for it without calling back. A read is copied into libfuse's buffer from the
    chunks that hold it (:meth:`Operations.read_into`). Every callback first keeps its thread's
    Python state (:func:`_keep_thread_state`)."""
    class Fuse(fuse.FUSE):  # type: ignore[misc,name-defined]
        def _wrapper(self, func: Any, *args: Any, **kwargs: Any) -> Any:
            _keep_thread_state()
            return super()._wrapper(func, *args, **kwargs)

        def read(self, path: bytes | None, buf: Any, size: int, offset: int, fip: Any) -> int:
            # Into libfuse's buffer directly (mfusepy's read takes bytes and copies them there).
            target = memoryview((ctypes.c_char * size).from_address(ctypes.addressof(buf.contents))).cast("B")
            name = "" if path is None else path.decode(self.encoding, self.errors)
            return self.operations.read_into(name, target, offset, fip.contents.fh)  # type: ignore[no-any-return]

    if fuse.fuse_version_major != 3:
        return Fuse

    plain = {mode: fuse.c_stat(st_mode=mode) for mode in (_S_IFDIR, _S_IFREG, _S_IFLNK)}  # a name's type only
    uid, gid = os.getuid(), os.getgid()

    def _c_stat(fields: tuple[int, int, int, int]) -> Any:
        """libfuse's ``struct stat`` of a listing's fields (what mfusepy makes of :meth:`Operations._stat`)."""
        mode, nlink, size, mtime_ns = fields
        time = fuse.c_timespec(*divmod(mtime_ns, 10**9))
        return fuse.c_stat(st_mode=mode, st_nlink=nlink, st_size=size, st_blocks=(size + 511) // 512,
                           st_uid=uid, st_gid=gid, st_atimespec=time, st_mtimespec=time, st_ctimespec=time)

    class Fuse3(Fuse):
        def init_fuse_3(self, conn: Any, config: Any) -> None:
            # Every listing request with attributes (readdirplus), not only a directory's first:
            # a directory larger than one request's buffer then gives the attributes of all its
            # subdirectories, not of the first few (the kernel looked each later one up).
            if conn:
                conn.contents.want &= ~_CAP_READDIRPLUS_AUTO
            super().init_fuse_3(conn, config)

        def readdir_fuse_3(self, path: bytes | None, buf: Any, filler: Any, offset: int, fip: Any, flags: int) -> int:
            plus = flags & _READDIR_PLUS
            if path is None or (not plus and offset == 0):
                # The whole listing at once: libfuse keeps it and answers the kernel's further
                # calls for this directory without calling back.
                return super().readdir_fuse_3(path, buf, filler, offset, fip, flags)  # type: ignore[no-any-return]
            listing, files_too = self.operations.readdir_plus(path.decode(self.encoding, self.errors), offset)
            for position in range(offset, len(listing)):
                name, mode, fields = listing[position]
                full = plus and fields is not None and (files_too or mode == _S_IFDIR)
                if filler(buf, name.encode(self.encoding, self.errors), _c_stat(fields) if full else plain[mode],
                          position + 1, _FILL_DIR_PLUS if full else 0) != 0:
                    break  # the kernel's buffer is full: it asks again from this offset
            return 0

    return Fuse3


_threads_kept: set[int] = set()


def _keep_thread_state() -> None:
    """Keep the Python state of the libfuse thread running this callback for the next ones.

    libfuse calls back from threads of its own. ctypes gives such a thread a fresh Python thread
    state for each callback and drops it on return, so everything a thread keeps for itself
    (``threading.local``: zstd contexts, the thread object) was made again on every request. Holding
    one more reference to the state (``PyGILState_Ensure`` once per thread, never released) keeps it
    for the thread's life; libfuse keeps its worker threads, so these are a few states in all."""
    thread = threading.get_native_id()
    if thread not in _threads_kept:
        _threads_kept.add(thread)
        ctypes.pythonapi.PyGILState_Ensure()


def is_mounted(mountpoint: str) -> bool:
    """Whether ``mountpoint`` is in this host's mount table (a dead FUSE mount included, which
    ``os.path.ismount`` cannot stat)."""
    wanted = os.path.abspath(mountpoint)
    return any(point == wanted for point in _mount_points())


def _mount_points() -> Iterator[str]:
    try:
        with open("/proc/self/mounts", "rb") as f:
            for line in f:
                fields = line.split()
                if len(fields) > 1:
                    yield _unescape(fields[1])
    except OSError:
        return


def _unescape(field: bytes) -> str:
    """A path from the mount tables, where spaces and other bytes are octal escapes."""
    return os.fsdecode(re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m.group(1), 8)]), field))


def unmount(mountpoint: str) -> None:
    """Detach a FUSE mount left at ``mountpoint`` (lazily: busy files do not keep it alive). Does
    nothing when it is not mounted."""
    if not is_mounted(mountpoint):
        return
    for tool in ("fusermount3", "fusermount"):
        path = shutil.which(tool)
        if path is None:
            continue
        done = subprocess.run([path, "-u", "-z", mountpoint], capture_output=True, check=False)
        if done.returncode == 0 or not is_mounted(mountpoint):
            return
    log.error("could not unmount %s: run 'fusermount -u %s'", mountpoint, mountpoint)


def _load_fuse() -> Any:
    # mfusepy binds libfuse 2 when both are installed unless told otherwise; libfuse 3 lets the kernel
    # send reads of up to 1 MiB instead of 128 KiB (fewer Python calls per byte read).
    chosen = "FUSE_LIBRARY_PATH" in os.environ or "FUSE_LIBRARY_NAME" in os.environ
    if not chosen and ctypes.util.find_library("fuse3"):
        os.environ["FUSE_LIBRARY_NAME"] = "fuse3"
    try:
        import mfusepy
    except ImportError as exc:
        raise MissingDependency("cas mount needs mfusepy: pip install 'cas-store[mount]'") from exc
    except OSError as exc:  # mfusepy found no libfuse
        raise MissingDependency(f"cas mount needs libfuse ({exc}): apt-get install fuse3") from exc
    finally:
        if not chosen:
            os.environ.pop("FUSE_LIBRARY_NAME", None)
    return mfusepy
