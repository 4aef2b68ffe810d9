"""What a restore's destination already holds: entries that match the tree, chunks to reuse, what
to delete.

An existing file *matches* its tree entry when it is a regular file of the entry's size whose
content's BLAKE3 equals the entry's digest (the digest of a file is the BLAKE3 of its whole content,
see ``cas.ops.snapshot.file_reader``), or, when the caller trusts modification times, whose size and mtime equal the
entry's. Metadata (mode, mtime) of a matching file is fixed in place, without rewriting content.

A file of the entry's size is compared chunk by chunk at the entry's boundaries (one hash pass, and
the equal chunks are known by position); otherwise by its whole BLAKE3. A file that differs gives up
the chunks of the new content it holds: those at their positions, and, when they cover less than
half of it, those found by cutting it with the repository's chunker. They are copied from it
by the kernel (through a descriptor opened before it is replaced, as :class:`Span` ranges) instead of
fetched, and the new file is read back and checked whole. Chunks of files already verified in the
destination are reused too, read and hashed again. A file changing under the restore can cost a
fetch, never a wrong byte. :func:`patch_in_place`
writes only the differing chunks into the file itself (the restore's ``in_place`` option).

Whose temporaries are whose is :mod:`cas.ops.restore.temps`'s.
"""

from __future__ import annotations

import errno
import os
import stat
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, NamedTuple

from cas.errors import IntegrityError
from cas.format.config import RepoConfig
from cas.format.hashing import HASH_BESIDE_FROM, hexdigest, new_hasher
from cas.format.trees import Entry
from cas.native.files import range_digests
from cas.ops.restore.settled import SETTLED_NS
from cas.repo.reader import file_chunks
from cas.repo.repository import Repository
from cas.types import BlobLocation

if TYPE_CHECKING:
    from cas.format.chunking import Chunker  # imported where a file is cut: a restore rarely does

_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
_HASH_BLOCK = 1024 * 1024
#: Threads that hash a large file's chunks in place at once (``_aligned_chunks``).
_RANGE_THREADS = min(4, os.cpu_count() or 1)


# -- comparing and reusing ------------------------------------------------------------------------


class Span(NamedTuple):
    """``length`` bytes at ``offset`` of the open file ``fd`` (the file being replaced), to be copied
    by the kernel (``copy_file_range``: a reflink where the file system shares extents) instead of
    read into Python. Its bytes hashed to the chunk's ID when the file was compared with the tree.

    ``identity`` is the file's :func:`identity` when it was hashed, if it had not changed for a
    while then (None: not proven). If the file still has it once the span is copied, nothing
    changed it in between and the copy holds the bytes that were hashed; otherwise the new file is
    read back and checked whole, so a change meanwhile cannot pass."""

    fd: int
    offset: int
    length: int
    identity: tuple[int, ...] | None = None


def identity(st: os.stat_result) -> tuple[int, ...]:
    """What changes whenever a file's content does: device, inode, size, mtime and ctime (which
    nothing but the kernel sets, to the time of any write, truncation or ``utime``)."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


@dataclass
class OldFile:
    """A differing file about to be replaced, open for reading: where each wanted chunk is in it."""

    fd: int
    chunks: dict[str, tuple[int, int]] = field(default_factory=dict)
    aligned: set[int] = field(default_factory=set)
    """Offsets at which the file holds the entry's chunk of that position (same size as the entry)."""
    aligned_bytes: int = 0
    identity: tuple[int, ...] | None = None
    """The file's :func:`identity` before its chunks were hashed, if it had settled (see :class:`Span`)."""

    def read(self, chunk_id: str) -> bytes | None:
        """The chunk's bytes if the file (still) holds them, checked against the ID."""
        where = self.chunks.get(chunk_id)
        if where is None:
            return None
        data = os.pread(self.fd, where[1], where[0])
        return data if len(data) == where[1] and hexdigest(data) == chunk_id else None

    def span(self, chunk_id: str) -> Span | None:
        """Where the file holds the chunk, to be copied without reading it (checked afterwards)."""
        where = self.chunks.get(chunk_id)
        return None if where is None else Span(self.fd, where[0], where[1], self.identity)

    def close(self) -> None:
        os.close(self.fd)


@dataclass
class Examined:
    matches: bool
    old: OldFile | None = None
    meta_fixed: bool = False
    verified: tuple[int, int] | None = None
    """For a match by content, ``(inode, ctime)`` if the file had settled and nothing was fixed:
    it holds the entry while it keeps that identity (see :mod:`cas.ops.restore.records`)."""


def examine_file(
    dir_fd: int, entry: Entry, mode: int, *, trust_mtime: bool, config: RepoConfig | None,
    lengths: list[int] | None = None, lock: bool = False,
) -> Examined:
    """Compare the file named ``entry.name`` in ``dir_fd`` with the entry.

    ``lengths``, the sizes of the entry's chunks when known, lets a file of the entry's size be
    compared chunk by chunk at the entry's boundaries: equal chunk IDs at every offset is equal
    content, and the chunks that are equal are the ones to reuse when others differ (a checkpoint
    whose tensors keep their offsets). Otherwise the whole content's BLAKE3 is compared.

    A match has its mode (``mode``, what the restore would set) and mtime fixed in place, unless it
    has other hard links: then it is not a match (it is replaced, the other links keep theirs). A
    regular file that differs is returned open, with the entry's chunks it holds (at the entry's
    boundaries, and, when those do not cover half of it, found by cutting it with the chunker of
    ``config``; None to skip that). Anything else (absent, a symlink, a directory) is not a match.

    With ``lock``, an exclusive ``flock`` is taken on the file before it is compared and held while
    the returned :class:`OldFile` is open (so that restores patching it in place take turns).
    """
    try:
        fd = os.open(entry.name, _READ_FLAGS, dir_fd=dir_fd)
    except OSError:
        return Examined(False)  # absent, a symlink (ELOOP), unreadable: written anew
    keep = False
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return Examined(False)
        # Before anything is hashed: a file changed since has another identity. One changed not
        # long before might not (coarse clocks, pages dirtied through a mapping): not settled.
        settled = st.st_ctime_ns <= time.time_ns() - SETTLED_NS
        if lock:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX)
        same_meta = stat.S_IMODE(st.st_mode) == mode and st.st_mtime_ns == entry.mtime_ns
        found: dict[str, tuple[int, int]] = {}
        found_bytes = 0
        aligned: set[int] = set()
        # A file with other links (outside the destination, maybe) never has its metadata changed
        # in place: it is replaced like a file that differs.
        if st.st_size == entry.size and (same_meta or st.st_nlink == 1):
            if trust_mtime and st.st_mtime_ns == entry.mtime_ns:
                matches = True
            elif lengths is not None and len(entry.chunks) > 1:
                found, found_bytes, aligned = _aligned_chunks(fd, entry.chunks, lengths)
                matches = found_bytes == entry.size
            else:
                matches = _content_digest(fd, st.st_size) == entry.digest
            if matches:
                fixed = _fix_metadata(fd, st, entry, mode)
                trusted = trust_mtime and st.st_mtime_ns == entry.mtime_ns
                verified = (st.st_ino, st.st_ctime_ns) if settled and not fixed and not trusted else None
                return Examined(True, meta_fixed=fixed, verified=verified)
        if config is not None and entry.chunks and found_bytes * 2 < entry.size:
            from cas.format.chunking import Chunker

            for chunk_id, where in _chunks_in(fd, Chunker(config), st.st_size, set(entry.chunks)).items():
                found.setdefault(chunk_id, where)
        keep = bool(found)
        old = OldFile(fd, found, aligned, found_bytes, identity(st) if settled else None) if keep else None
        return Examined(False, old)
    finally:
        if not keep:
            os.close(fd)


def match_whole(
    dir_fd: int, entry: Entry, mode: int, *, nowait: bool = False
) -> tuple[bool | None, bool, os.stat_result | None]:
    """Compare the file named ``entry.name`` in ``dir_fd`` with the entry by its whole content's
    BLAKE3, by the rules of :func:`examine_file` without ``trust_mtime``, ``lengths`` or ``config``
    (a regular file of the entry's size, with the entry's mode and mtime or no other links; a match
    has its mode and mtime fixed in place), in the fewest calls: open, ``fstat``, one read for a
    small file, close. Returns whether it matches, whether its metadata was fixed, and the file's
    ``fstat`` (None when it cannot be opened: absent, a symlink, unreadable).

    With ``nowait``, a small file is read only if its content is all in memory (``RWF_NOWAIT``):
    otherwise nothing is changed and the first value is None, for the caller to compare it where
    waiting for the disk costs less (on threads, several reads at once)."""
    try:
        fd = os.open(entry.name, _READ_FLAGS, dir_fd=dir_fd)
    except OSError:
        return False, False, None
    try:
        st = os.fstat(fd)
        if st.st_size != entry.size or not stat.S_ISREG(st.st_mode):
            return False, False, st
        if st.st_nlink != 1 and (stat.S_IMODE(st.st_mode) != mode or st.st_mtime_ns != entry.mtime_ns):
            return False, False, st
        if nowait and _NOWAIT[0] and 0 < st.st_size < _HASH_BLOCK:
            digest = _digest_in_memory(fd, st.st_size)
            if digest is None:
                return None, False, st
        else:
            digest = _content_digest(fd, st.st_size)
        if digest != entry.digest:
            return False, False, st
        return True, _fix_metadata(fd, st, entry, mode), st
    finally:
        os.close(fd)


#: Whether reads may ask not to wait for the disk (``RWF_NOWAIT``): cleared where refused.
_NOWAIT = [hasattr(os, "RWF_NOWAIT") and hasattr(os, "preadv")]


def _digest_in_memory(fd: int, size: int) -> str | None:
    """The BLAKE3 of a small file's content (one byte more is asked for, to see that it did not
    grow), or None if some of it is not in the page cache (reading it would wait for the disk)."""
    buffer = bytearray(size + 1)
    try:
        got = os.preadv(fd, [buffer], 0, os.RWF_NOWAIT)
    except BlockingIOError:
        return None
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise
        _NOWAIT[0] = False  # the file system (or kernel) cannot: read as usual
        return _content_digest(fd, size)
    if got < size:
        return None  # partly in memory: a short read, not the end of the file (its size is known)
    if got > size:
        return _content_digest(fd, size)  # it grew meanwhile: hashed whole, as usual
    return hexdigest(memoryview(buffer)[:size])


def _fix_metadata(fd: int, st: os.stat_result, entry: Entry, mode: int) -> bool:
    """Give a matching file the restore's mode and the entry's mtime; whether either changed."""
    fixed = False
    if stat.S_IMODE(st.st_mode) != mode:
        os.fchmod(fd, mode)
        fixed = True
    if st.st_mtime_ns != entry.mtime_ns:
        os.utime(fd, ns=(entry.mtime_ns, entry.mtime_ns))
        fixed = True
    return fixed


def _aligned_chunks(
    fd: int, chunks: tuple[str, ...], lengths: list[int]
) -> tuple[dict[str, tuple[int, int]], int, set[int]]:
    """The entry's chunks the file holds at the entry's own offsets, how many bytes they cover, and
    those offsets. The file's ranges are read and hashed by the compiled helper, on up to
    :data:`_RANGE_THREADS` threads for a large file (a checkpoint is compared at the speed of the
    cores, not of one)."""
    threads = _RANGE_THREADS if sum(lengths) >= HASH_BESIDE_FROM else 1
    found: dict[str, tuple[int, int]] = {}
    aligned: set[int] = set()
    covered = 0
    offset = 0
    for chunk_id, length, digest in zip(chunks, lengths, range_digests(fd, lengths, threads)):
        if digest == chunk_id:
            found.setdefault(chunk_id, (offset, length))
            aligned.add(offset)
            covered += length
        offset += length
    return found, covered, aligned


def patch_in_place(
    dir_fd: int, entry: Entry, path: str, old: OldFile, lengths: list[int], mode: int,
    chunk_data: Callable[[list[str]], Iterator[bytes]],
) -> int:
    """Write into the file ``old`` (still locked) the chunks it lacks at their offsets, check the
    whole content against the entry's digest, set mode and mtime. Returns the bytes written.

    ``chunk_data(ids)`` yields the verified bytes of ``ids`` in order. The file is opened for
    writing by name without following a symlink and must be the file ``old`` read (same inode).
    """
    wfd = os.open(entry.name, os.O_WRONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), dir_fd=dir_fd)
    try:
        a, b = os.fstat(wfd), os.fstat(old.fd)
        if (a.st_dev, a.st_ino) != (b.st_dev, b.st_ino) or a.st_size != entry.size or a.st_nlink != 1:
            # Replaced meanwhile, or linked elsewhere too (never written through another link).
            raise FileChangedError(f"{path} cannot be patched in place")
        todo: list[tuple[str, int]] = []
        offset = 0
        for chunk_id, length in zip(entry.chunks, lengths):
            if offset not in old.aligned:
                todo.append((chunk_id, offset))
            offset += length
        written = 0
        for (chunk_id, at), data in zip(todo, chunk_data([c for c, _ in todo])):
            view = memoryview(data)
            while view:
                n = os.pwrite(wfd, view, at)
                view, at = view[n:], at + n
            written += len(data)
        if _content_digest(old.fd, entry.size) != entry.digest:
            raise IntegrityError(f"{path}: content does not match the file's recorded BLAKE3 after patching it")
        os.fchmod(wfd, mode)
        os.utime(wfd, ns=(entry.mtime_ns, entry.mtime_ns))
        return written
    finally:
        os.close(wfd)


class FileChangedError(OSError):
    """A file cannot be patched in place: replaced meanwhile, or hard-linked (it is written anew)."""


def _content_digest(fd: int, size: int) -> str:
    if size < _HASH_BLOCK:  # one read for a small file (one byte more, to see it did not grow)
        data = os.pread(fd, size + 1, 0)
        if len(data) <= size:
            return hexdigest(data)
    hasher = new_hasher()
    offset = 0
    while True:
        block = os.pread(fd, _HASH_BLOCK, offset)
        if not block:
            return str(hasher.hexdigest())
        hasher.update(block)
        offset += len(block)


def _chunks_in(fd: int, chunker: Chunker, size: int, wanted: set[str]) -> dict[str, tuple[int, int]]:
    """Where the wanted chunks are in the file, cutting it as a snapshot would."""
    found: dict[str, tuple[int, int]] = {}
    offset = 0
    with os.fdopen(os.dup(fd), "rb", buffering=0) as stream:
        for piece in chunker.chunks(stream, size):
            chunk_id = hexdigest(piece)
            if chunk_id in wanted:
                found.setdefault(chunk_id, (offset, len(piece)))
            offset += len(piece)
    return found


class LocalChunks:
    """Chunks held by files this restore verified or wrote in the destination (``root``), by chunk ID.

    Shared by the restore's workers. A read reopens the file by path without following a final
    symlink, checks it is a regular file and hashes the bytes read: whatever happened to the file
    meanwhile, a chunk is reused only if it is exactly the chunk.

    A file that is still to be compared (it may well match) is *expected*: its chunks count as held
    while the comparison runs, and a reader waits for it. Each file task has a sequence number in
    submission order and waits only on files submitted before it; the pool takes tasks in that
    order, so whatever it waits on is already running and no wait can be circular.
    """

    def __init__(self, root: str = "") -> None:
        self._root = root
        self._where: dict[str, tuple[str, int, int]] = {}
        self._expected: dict[str, tuple[int, threading.Event]] = {}
        self._lock = threading.Lock()

    def __contains__(self, chunk_id: str) -> bool:
        return chunk_id in self._where or chunk_id in self._expected

    def expect(self, entry: Entry, seq: int) -> threading.Event:
        """Announce that file task ``seq`` may soon hold ``entry``'s chunks; set the event when done."""
        done = threading.Event()
        with self._lock:
            for chunk_id in entry.chunks:
                if chunk_id not in self._where:
                    self._expected.setdefault(chunk_id, (seq, done))
        return done

    def add_file(self, path: str, entry: Entry, locations: dict[str, BlobLocation]) -> None:
        """Record a file of the destination at ``path`` (relative to the root) whose content is ``entry``'s."""
        if len(entry.chunks) == 1:
            self._where.setdefault(entry.chunks[0], (path, 0, entry.size))
            return
        if not entry.chunks or any(c not in locations for c in entry.chunks):
            return
        offset = 0
        with self._lock:
            for chunk_id in entry.chunks:
                length = locations[chunk_id].raw_length
                self._where.setdefault(chunk_id, (path, offset, length))
                offset += length

    def for_task(self, seq: int) -> TaskView:
        return TaskView(self, seq)

    def read(self, chunk_id: str, seq: int) -> bytes | None:
        where = self._where.get(chunk_id)
        if where is None:
            expected = self._expected.get(chunk_id)
            if expected is None or expected[0] >= seq:
                return None
            expected[1].wait()
            where = self._where.get(chunk_id)
            if where is None:
                return None
        path, offset, length = where
        try:
            fd = os.open(os.path.join(self._root, path), _READ_FLAGS)
        except OSError:
            return None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None
            data = os.pread(fd, length, offset)
        except OSError:
            return None
        finally:
            os.close(fd)
        return data if len(data) == length and hexdigest(data) == chunk_id else None


@dataclass(frozen=True)
class TaskView:
    """:class:`LocalChunks` as seen by one file task (which may wait only on earlier tasks)."""

    chunks: LocalChunks
    seq: int

    def read(self, chunk_id: str) -> bytes | None:
        return self.chunks.read(chunk_id, self.seq)


def content(
    repo: Repository,
    entry: Entry,
    locations: dict[str, BlobLocation],
    path: str,
    prefetched: dict[str, bytes] | None,
    sources: list[OldFile | TaskView],
    reused: list[int],
) -> Iterator[bytes | Span]:
    """A file's chunks in order: a :class:`Span` where the file being replaced (an
    :class:`OldFile` among ``sources``) holds it, else verified bytes read from the first other
    source that holds it, else from the repository. Adds the bytes taken from ``sources`` to
    ``reused[0]``. The whole is checked by the writer (``write.write_content``)."""
    remote: list[str] = []

    def fetch() -> Iterator[bytes]:
        yield from file_chunks(repo, replace(entry, chunks=tuple(remote)), locations, path, prefetched)
        remote.clear()

    for chunk_id in entry.chunks:
        piece: bytes | Span | None = None
        for source in sources:
            piece = source.span(chunk_id) if isinstance(source, OldFile) else source.read(chunk_id)
            if piece is not None:
                break
        if piece is None:
            remote.append(chunk_id)
            continue
        if remote:
            yield from fetch()
        reused[0] += piece.length if isinstance(piece, Span) else len(piece)
        yield piece
    if remote:
        yield from fetch()
