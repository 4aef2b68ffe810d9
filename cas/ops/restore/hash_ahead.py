"""Small files of a restore's destination hashed ahead of the walk, by a process of its own.

Restoring over a previous execution (``overwrite`` without ``trust_mtime``) compares every small
file in place with its entry by its BLAKE3: open, read, hash, close, thousands of times, on the
walk's thread, which sets the restore's pace (the benchmark's second execution over the first:
0.44 s of 1.3 s). The interpreter lock keeps threads from sharing that work, so a child process
does it: given the destination's descriptor, it walks the destination in the walk's order (by
name, a subdirectory's files before its subdirectories, up to as many subdirectories entered ahead
as the walk enters) and, for each directory, sends what it found: each regular file of at most
``max_size`` bytes whose content was in memory (``RWF_NOWAIT``: it never waits for the disk), with
its inode, size, mtime, ctime and BLAKE3 (a directory's files opened, read and hashed by one
call of the compiled helper, :func:`cas.native.files.hash_files`). The walk takes a directory's records when it surveys it
(:meth:`HashAhead.take`) and trusts one only if the file still has that inode, size, mtime and
ctime and had *settled* when hashed (see :data:`cas.ops.restore.settled.SETTLED_NS`: a write through
a shared mapping changes the times only at its first write to a clean page); anything else, it
compares itself, as without the child.

The child only reads: it opens directories with ``O_NOFOLLOW``, never follows a symlink, never
leaves the destination, and skips the restores' temporaries. It is started with the restore and
killed when the restore ends (what it has not sent by then is not needed); if it cannot start or
dies, the walk compares everything itself. What it sends and the walk has not taken is held for at
most :data:`_HELD` files.

A command-line restore starts the child before it loads the engine (:func:`start_early`: SQLAlchemy
and the rest take a few hundred milliseconds, the child's head start); the restore then takes it
over (:func:`start`) if its destination is that directory.
"""

from __future__ import annotations

import atexit
import errno
import os
import pickle
import signal
import socket
import stat
import struct
import threading
import time
from typing import TYPE_CHECKING

from cas.native.files import hash_files
from cas.ops.restore.child import child_code, child_command
from cas.ops.restore.settled import SETTLED_NS
from cas.ops.restore.temps import TMP_PREFIX

if TYPE_CHECKING:
    import subprocess

    from cas.format.trees import Entry

SMALL = 256 * 1024
"""Files of at most this many bytes are hashed by the child (the walk compares them as it lists
their directory: ``survey._COMPARE_AT_ONCE``)."""
_FRAME = struct.Struct("<I")
_HINT = struct.Struct("<QQ")  # the directory's st_dev and st_ino, + the subdirectory's name
_LOOK_AHEAD = 16
"""Subdirectories entered ahead, as the restore's walk does (``walk._LOOK_AHEAD``)."""
_MAX_DEPTH = 64
"""Directories deeper than this are left to the walk (the child holds one descriptor per level)."""
_SEND_DIRS = 8
_SEND_BYTES = 64 * 1024
"""The child sends what it found once it has this many directories' records, or bytes of them."""
_HELD = 200_000
"""Files' records received and not yet taken, at most: past that, further ones are dropped."""
_OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
_CHILD = child_code(__name__)


Hashed = tuple[int, int, int, int, str, int]
"""A file as the child found it: inode, size, mtime, ctime (ns), the BLAKE3 of its content and its
permission bits (a plain tuple, as :func:`cas.native.files.hash_files` gives it and it is sent:
nothing is built per file on receipt)."""


def judge(hashed: Hashed, at_ns: int, st: os.stat_result, entry: Entry, mode: int, settled_ns: int) -> bool | None:
    """Whether the file ``st`` (an lstat taken now) matches ``entry`` (a small file, restored with
    ``mode``) by what the child found at ``at_ns``, if that still holds: the file unchanged since
    (inode, size, mtime and ctime) and settled then (its ctime ``settled_ns`` older). None: not
    known that way (a mode or mtime to fix is also left to the usual comparison, which fixes them)."""
    if ((st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns) != hashed[:4]
            or at_ns - st.st_ctime_ns < settled_ns or not stat.S_ISREG(st.st_mode)):
        return None
    if hashed[1] != entry.size or hashed[4] != entry.digest:
        return False
    if stat.S_IMODE(st.st_mode) == mode and st.st_mtime_ns == entry.mtime_ns:
        return True
    return None


_early: list[tuple[tuple[int, int], HashAhead]] = []
"""The child started by :func:`start_early`, with its directory's device and inode, until taken."""


def start_early(dest: str) -> None:
    """Start the child on the directory ``dest`` for a restore that this process is about to make
    (before the engine's modules load). The restore takes it over (:func:`start`) if its destination
    is that directory; else it is stopped when the process exits. Nothing is done when ``dest`` is
    not a directory holding something (the restore will say what is wrong, or has nothing to hash),
    nor when a files cache records it as a restore left it (the restore will not use the child)."""
    try:
        fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return
    try:
        st = os.fstat(fd)
        with os.scandir(fd) as listing:
            if next(listing, None) is None:
                return
        from cas.repo.filescache import destination_recorded

        if destination_recorded(os.fsencode(os.path.abspath(dest)), st):
            return  # the restore will not use it (its records spare the comparing: see ``start``'s caller)
        ahead = HashAhead(fd, SMALL, SETTLED_NS)  # the child has a descriptor of its own
    except OSError:
        return
    finally:
        os.close(fd)
    atexit.register(ahead.close)
    _early.append(((st.st_dev, st.st_ino), ahead))


def discard_early() -> None:
    """Stop the child :func:`start_early` started, if any, at once (the rest of closing it is left
    to the process's exit): the restore compares without it."""
    while _early:
        _early.pop()[1].kill()


def start(dest_fd: int, settled_ns: int) -> HashAhead:
    """The child hashing the directory ``dest_fd``: the one :func:`start_early` started for it, if
    any, else a new one (which hashes only files settled ``settled_ns`` before)."""
    st = os.fstat(dest_fd)
    while _early:
        ident, ahead = _early.pop()
        if ident == (st.st_dev, st.st_ino):
            return ahead
        ahead.close()
    return HashAhead(dest_fd, SMALL, settled_ns)


class HashAhead:
    """The child hashing a destination's small files, and what it has sent."""

    def __init__(self, dest_fd: int, max_size: int, settled_ns: int) -> None:
        """Start the child on the directory ``dest_fd`` (it gets a descriptor of its own). It hashes
        only files whose ctime is at least ``settled_ns`` old: no other record could be trusted."""
        self._lock = threading.Lock()
        self._ready: dict[tuple[int, int], tuple[int, dict[str, Hashed]]] = {}
        self._held = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None
        self._reader: threading.Thread | None = None
        self._hints: socket.socket | None = None
        self._walked = threading.Event()
        import subprocess  # here: the child imports this module too

        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        hints, their_hints = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        command = child_command(_CHILD, str(theirs.fileno()), str(dest_fd), str(max_size), str(settled_ns),
                                str(their_hints.fileno()))
        try:
            with theirs, their_hints:
                if command is None:
                    raise FileNotFoundError("no Python interpreter to run the hasher")
                self._proc = subprocess.Popen(
                    command, pass_fds=(theirs.fileno(), dest_fd, their_hints.fileno()), stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )
        except OSError:
            ours.close()
            hints.close()
            return
        self._sock = ours
        self._hints = hints
        self._reader = threading.Thread(target=self._receive, args=(ours,), name="cas-restore-hash-ahead",
                                        daemon=True)
        self._reader.start()

    def kill(self) -> None:
        """Stop the child now; :meth:`close` still closes the rest."""
        if self._proc is not None:
            self._proc.kill()

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def take(self, ident: tuple[int, int]) -> tuple[int, dict[str, Hashed]] | None:
        """What was found in the directory ``(st_dev, st_ino)``, if it has arrived (given once): when
        it was looked at (``time.time_ns()`` before), and the files' records by name."""
        with self._lock:
            found = self._ready.pop(ident, None)
            if found is not None:
                self._held -= len(found[1])
            return found

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the child has walked the whole destination and all it sent is here (or it
        failed); whether it has."""
        return self._sock is None or self._walked.wait(timeout)

    def skip(self, ident: tuple[int, int], name: str) -> None:
        """Tell the child not to hash the subdirectory ``name`` of the directory ``ident`` (the tree
        lacks it): a hint, dropped if the child is not keeping up with them; never waits."""
        if self._hints is None:
            return
        try:
            self._hints.send(_HINT.pack(*ident) + os.fsencode(name), socket.MSG_DONTWAIT)
        except OSError:
            pass

    def close(self) -> None:
        """Stop the child (it only reads: nothing is left half done) and forget what it sent."""
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
        if self._sock is not None:
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._reader is not None:
            self._reader.join()
        if self._sock is not None:
            self._sock.close()
        if self._hints is not None:
            self._hints.close()
        with self._lock:
            self._ready.clear()
            self._held = 0

    def _receive(self, sock: socket.socket) -> None:
        pending = bytearray()
        while True:
            try:
                data = sock.recv(1 << 20)
            except OSError:
                data = b""
            if not data:
                self._walked.set()
                return
            pending += data
            start = 0
            frames = []
            while len(pending) - start >= _FRAME.size:
                length, = _FRAME.unpack_from(pending, start)
                if len(pending) - start - _FRAME.size < length:
                    break
                frames.append(bytes(pending[start + _FRAME.size:start + _FRAME.size + length]))
                start += _FRAME.size + length
            del pending[:start]
            for frame in frames:
                ident, at_ns, records = pickle.loads(frame)
                with self._lock:
                    if self._held + len(records) <= _HELD:
                        self._ready[ident] = (at_ns, records)
                        self._held += len(records)


# -- the child ------------------------------------------------------------------------------------


class _Unsupported(Exception):
    """Reads that do not wait for the disk are refused here."""


class _Level:
    __slots__ = ("ahead", "fd", "ident", "key", "next", "started", "subdirs")

    def __init__(self, fd: int, ident: tuple[int, int], key: tuple[int, int, bytes], subdirs: list[str]) -> None:
        self.fd = fd
        self.ident = ident
        self.key = key
        """Its parent's ident and its name, as the hints name it."""
        self.subdirs = subdirs
        self.next = 0
        self.ahead = 0
        self.started: dict[int, _Level | None] = {}


class _Walker:
    """The destination walked in the restore walk's order, each directory's small files hashed."""

    def __init__(self, sock: socket.socket, hints: socket.socket, max_size: int, settled_ns: int) -> None:
        self.sock = sock
        self.hints = hints
        self.skipped: set[tuple[int, int, bytes]] = set()
        self.max_size = max_size
        self.settled_ns = settled_ns
        self.ahead = 0
        self.out = bytearray()
        self.dirs_out = 0

    def send(self, frame: bytes) -> None:
        """Send a directory's frame, a few together (fewer wake-ups of the restore's receiver)."""
        self.out += _FRAME.pack(len(frame)) + frame
        self.dirs_out += 1
        if self.dirs_out >= _SEND_DIRS or len(self.out) >= _SEND_BYTES:
            self.flush()

    def flush(self) -> None:
        if self.out:
            self.sock.sendall(self.out)
            self.out.clear()
        self.dirs_out = 0

    def walk(self, root_fd: int) -> None:
        root = self.enter(root_fd, (0, 0, b""))
        stack = [root]
        while stack:
            if self.read_hints():
                self.drop_skipped(stack)
                if not stack:
                    break
            level = stack[-1]
            if level.next < len(level.subdirs) and len(stack) < _MAX_DEPTH:
                self.look_ahead(level)
                index = level.next
                level.next += 1
                if index in level.started:
                    child = level.started.pop(index)
                    self.ahead -= child is not None
                    if child is not None and child.key in self.skipped:
                        self.close_level(child)
                        child = None
                else:
                    child = self.open(level, level.subdirs[index])
                    level.ahead = max(level.ahead, level.next)
                if child is not None:
                    stack.append(child)
                continue
            stack.pop()
            if level is not root:
                self.close_level(level)
        self.flush()

    def read_hints(self) -> bool:
        """Take the hints sent so far (subdirectories the tree lacks); whether there were any."""
        got = False
        while True:
            try:
                hint = self.hints.recv(_HINT.size + 4096, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return got
            if len(hint) < _HINT.size:
                return got  # the restore closed its end
            dev, ino = _HINT.unpack_from(hint)
            self.skipped.add((dev, ino, hint[_HINT.size:]))
            got = True

    def drop_skipped(self, stack: list[_Level]) -> None:
        """Leave the subtree of any directory on the path that the tree lacks."""
        for depth, level in enumerate(stack):
            if level.key in self.skipped:
                for gone in reversed(stack[depth:]):
                    self.close_level(gone)
                del stack[depth:]
                return

    def close_level(self, level: _Level) -> None:
        for ahead in level.started.values():
            if ahead is not None:
                self.close_level(ahead)
                self.ahead -= 1
        level.started.clear()
        os.close(level.fd)

    def look_ahead(self, level: _Level) -> None:
        level.ahead = max(level.ahead, level.next)
        while level.ahead < len(level.subdirs) and self.ahead < _LOOK_AHEAD:
            child = self.open(level, level.subdirs[level.ahead])
            level.started[level.ahead] = child
            level.ahead += 1
            self.ahead += child is not None

    def open(self, parent: _Level, name: str) -> _Level | None:
        key = (*parent.ident, os.fsencode(name))
        if key in self.skipped:
            return None
        try:
            fd = os.open(name, _OPEN_DIR, dir_fd=parent.fd)
        except OSError:
            return None
        try:
            return self.enter(fd, key)
        except OSError:
            os.close(fd)
            return None

    def enter(self, fd: int, key: tuple[int, int, bytes]) -> _Level:
        """Hash the directory's small files, send their records, and list its subdirectories."""
        at_ns = time.time_ns()
        st = os.fstat(fd)
        files: list[str] = []
        subdirs = []
        with os.scandir(fd) as listing:
            for item in listing:
                name = item.name
                if name.startswith(TMP_PREFIX):
                    continue
                try:
                    if item.is_file(follow_symlinks=False):
                        files.append(name)
                    elif item.is_dir(follow_symlinks=False):
                        subdirs.append(name)
                except OSError:
                    continue
        try:  # opened, read (never waiting for the disk) and hashed in one call, without the GIL
            found = hash_files(fd, [os.fsencode(name) for name in files], self.max_size,
                               at_ns - self.settled_ns, True)
        except OSError as exc:
            if exc.errno in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                raise _Unsupported from None  # this file system cannot: nothing to do here
            raise
        records = {name: record for name, record in zip(files, found) if record is not None}
        subdirs.sort(key=os.fsencode)  # the trees' order, which the walk enters them in
        ident = (st.st_dev, st.st_ino)
        self.send(pickle.dumps((ident, at_ns, records), protocol=pickle.HIGHEST_PROTOCOL))
        return _Level(fd, ident, key, subdirs)


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the restore's to handle
    if not (hasattr(os, "RWF_NOWAIT") and hasattr(os, "preadv")):
        return 0
    with socket.socket(fileno=int(argv[0])) as sock, socket.socket(fileno=int(argv[4])) as hints:
        try:
            _Walker(sock, hints, int(argv[2]), int(argv[3])).walk(int(argv[1]))
        except (OSError, _Unsupported):
            return 0  # the restore went away (or the destination did, or reads would wait): done
    return 0
