"""One entry of a directory being snapshotted: what its name becomes in the tree.

The walk (:mod:`cas.ops.snapshot.walk`) hands each name of a directory to :meth:`EntryReader.entry`
in name order. The name is stat'ed without following symlinks (a batch of names at a time, with
the files cache's rows for them, and the small files among them read in batches too:
:mod:`cas.ops.snapshot.batch`); then, in turn: a directory at the delegation's depth is handed
back to the walk for a worker (:data:`DELEGATE`); the
:class:`~cas.ops.snapshot.filter.WalkFilter` may leave it out (never opened or read) or have a
directory on another file system stored empty (:class:`OtherFileSystem`); a regular file the
files cache vouches for is taken from it; any other regular file is read
(:class:`~cas.ops.snapshot.file_reader.FileReader`); a symlink's target is read; a directory is opened and
returned (:class:`Subdir`) for the walk to enter; a FIFO, socket or device is skipped with a
warning.

A name that is no longer what it was stat'ed as (a file replaced by a directory, say) is stat'ed
again, and a file whose read was not stable is read again: :data:`CHANGE_RETRIES` times, and then
as :class:`OnChange` says (store what was read with a warning, fail, or keep reading for about
ten seconds and then fail with :class:`FileChanged`).
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import time
from collections.abc import Callable
from typing import NamedTuple, Protocol

from cas.errors import CasError, ConfigurationError, NotFound, PermissionDenied
from cas.format.trees import FILE, SYMLINK, Entry, new_entry
from cas.ops.snapshot.batch import NAMES, NameBatch, Stated, stat_batch
from cas.ops.snapshot.file_reader import FileRead, FileReader, Replaced, SpecialFile
from cas.ops.snapshot.filter import Decision, DirScope, WalkFilter
from cas.repo.filescache import CachedFile, FilesCache
from cas.types import OnChange

log = logging.getLogger("cas")

ProgressFn = Callable[[int, int], None]

_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | _CLOEXEC
"""How the walk opens directories: never through a symlink."""
CHANGE_RETRIES = 3
"""Times a file that changed while it was read is read again before ``--on-change`` applies."""
_RETRY_PAUSES = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 1.0, 2.0, 2.0, 3.0)
"""``--on-change=retry``: pauses before each further read (about 10 s in all) before failing."""


class FileChanged(CasError):
    """A file kept changing while the snapshot read it, and ``on_change`` said not to store it."""


class Unstable(CasError):
    """The tree changed under the snapshot in a way it cannot follow (a directory moved away)."""


class Subdir(NamedTuple):
    """A subdirectory to walk, open as :attr:`fd` (the walk takes the descriptor over)."""

    fd: int
    st: os.stat_result
    rel: bytes
    name: str
    included: bool
    """What the filter decided for it (True without a filter)."""


class OtherFileSystem(NamedTuple):
    """A directory on another file system than the root's, to be stored empty (``--one-file-system``)."""

    name: str
    st: os.stat_result


DELEGATE = object()
""":meth:`EntryReader.entry`'s answer for a directory at the delegation's depth, stat'ed only."""


class Listing(Protocol):
    """What :class:`EntryReader` reads of the walk's frame for a directory."""

    fd: int | None
    rel: bytes
    """The directory's path relative to the snapshot's root (``b""`` for the root)."""
    names: list[bytes]
    """Its sorted names; those before :attr:`pos` are already freed (set to ``b""``)."""
    pos: int
    """The index after the name being decided."""
    scope: DirScope | None
    cached: dict[bytes, tuple[tuple[int, ...], CachedFile]]
    """The files cache's rows for the batch of names up to :attr:`batch_to` (kept here)."""
    batch: NameBatch | None
    """The names up to :attr:`batch_to`, stat'ed, and the small files among them read ahead."""
    batch_to: int


class WalkCounts(Protocol):
    """The counters of :class:`~cas.ops.snapshot.walk.WalkStats` this module moves."""

    files: int
    symlinks: int
    skipped: int
    changed: int
    logical_bytes: int
    files_from_cache: int
    skipped_paths: list[str]
    changed_paths: list[str]


class EntryReader:
    """Decides and stores the entries of one snapshot's directories (rooted at ``root``).

    Counts into ``stats`` and adds every blob a file's entry points at to ``referenced``; the walk
    counts and stores directories. ``delegate_depth``: directories that many levels below the root
    are answered with :data:`DELEGATE`.
    """

    def __init__(
        self,
        root: str,
        reader: FileReader,
        *,
        stats: WalkCounts,
        referenced: set[str],
        files_cache: FilesCache | None = None,
        progress: ProgressFn | None = None,
        on_change: OnChange = OnChange.WARN,
        filter: WalkFilter | None = None,
        delegate_depth: int | None = None,
    ) -> None:
        self._root = os.fsencode(root)
        self._root_abs = os.fsencode(os.path.abspath(root))
        self._cache_dir_for: tuple[bytes | None, bytes] = (None, b"")
        self.reader = reader
        self.stats = stats
        self.referenced = referenced
        self.files_cache = files_cache
        self.progress = progress
        self.on_change = on_change
        self.filter = filter
        self.delegate_depth = delegate_depth

    def display(self, rel: bytes) -> str:
        """The path of ``rel`` (relative to the root) as messages show it."""
        return os.fsdecode(os.path.join(self._root, rel) if rel else self._root)

    def entry(self, frame: Listing, name: bytes) -> Entry | Subdir | OtherFileSystem | object | None:
        """What the entry ``name`` of ``frame``'s directory becomes: an :class:`Entry` to add, a
        :class:`Subdir` to walk, an :class:`OtherFileSystem` to store empty, :data:`DELEGATE`, or
        None (left out, vanished or skipped)."""
        rel = frame.rel + b"/" + name if frame.rel else name  # a listed name holds no '/'
        try:
            return self._entry_attempts(frame, name, rel)
        except CasError:
            raise
        except PermissionError:
            raise PermissionDenied(f"cannot read {self.display(rel)}: permission denied") from None
        except OSError as exc:
            raise CasError(f"cannot read {self.display(rel)}: {exc.strerror or exc}") from None

    def _entry_attempts(
        self, frame: Listing, name: bytes, rel: bytes
    ) -> Entry | Subdir | OtherFileSystem | object | None:
        assert frame.fd is not None
        dir_fd = frame.fd
        text = os.fsdecode(name)
        attempt = 0
        pending = self._stated(frame, name)
        while True:
            stated, pending = pending, None  # what the batch saw serves the first attempt only
            if stated is not None:
                st = stated.st
            else:
                try:
                    st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                except FileNotFoundError:
                    return None  # vanished while we walked: it is not part of the snapshot
            mode = st.st_mode
            if (self.delegate_depth is not None and stat.S_ISDIR(mode)
                    and rel.count(b"/") + 1 == self.delegate_depth):
                return DELEGATE  # a worker decides, walks and stores it
            decision = None
            if self.filter is not None:
                assert frame.scope is not None
                if stated is not None and stated.decision is not None:
                    decision = stated.decision  # decided (and counted) as the batch was stat'ed
                else:
                    decision = self.filter.decide(frame.scope, os.fsdecode(rel), st)
                if decision.reason is not None:
                    return None
                if decision.other_fs:
                    return OtherFileSystem(text, st)
            try:
                if stat.S_ISREG(mode):
                    cached = self._cached(frame, name, st)
                    if cached is not None:
                        self.referenced.update(cached.chunks)
                        self._count_file(st.st_size, from_cache=True)
                        return new_entry(text, FILE, stat.S_IMODE(mode), st.st_mtime_ns, st.st_size, cached.digest,
                                         cached.chunks)
                    read = self._read(frame, name, stated)
                    if read is None:
                        return None
                    attempt += 1
                    if not read.stable and self._read_again(attempt, rel):
                        continue
                    return self._file_entry(text, read, frame.rel, name, rel)
                elif stat.S_ISDIR(mode):
                    try:
                        fd = os.open(name, DIR_FLAGS, dir_fd=dir_fd)
                    except FileNotFoundError:
                        return None
                    except (NotADirectoryError, OSError) as exc:
                        if isinstance(exc, NotADirectoryError) or exc.errno == errno.ELOOP:
                            raise Replaced from None
                        raise
                    try:
                        dst = os.fstat(fd)
                    except BaseException:
                        os.close(fd)
                        raise
                    return Subdir(fd, dst, rel, text, decision.included if decision is not None else True)
                elif stat.S_ISLNK(mode):
                    try:
                        target = os.fsdecode(os.readlink(name, dir_fd=dir_fd))
                    except FileNotFoundError:
                        return None
                    except OSError as exc:
                        if exc.errno == errno.EINVAL:  # no longer a symlink
                            raise Replaced from None
                        raise
                    self.stats.symlinks += 1
                    return new_entry(text, SYMLINK, stat.S_IMODE(mode), st.st_mtime_ns, target=target)
                else:
                    raise SpecialFile
            except SpecialFile:
                self._skip_special(rel)
            except Replaced:
                attempt += 1
                if self._read_again(attempt, rel):
                    continue
                self._changed(rel, stored=False)
            return None

    def root_file(self, path: str) -> Entry:
        """The snapshot of a single file (``path`` followed if it is a symlink)."""
        name = os.path.basename(os.path.abspath(path))
        attempt = 0
        while True:
            try:
                read = self.reader.read_path(path)
            except SpecialFile:
                raise ConfigurationError(f"not a directory or regular file: {path}") from None
            except Replaced:
                raise Unstable(f"{path} changed type during the snapshot; snapshot it again") from None
            except PermissionError:
                raise PermissionDenied(f"cannot read {path}: permission denied") from None
            except OSError as exc:
                raise CasError(f"cannot read {path}: {exc.strerror or exc}") from None
            if read is None:
                raise NotFound(f"file vanished during snapshot: {path}")
            attempt += 1
            if read.stable or not self._read_again(attempt, b""):
                break
        directory, base = os.path.split(self._root_abs)
        return self._file_entry(name, read, None, base, b"", directory=directory)

    # -- when a file changes while it is read -------------------------------------------------------

    def _read_again(self, attempt: int, rel: bytes) -> bool:
        """After ``attempt`` reads of ``rel`` saw it change: True to read it again (after a pause
        under ``retry``), False to store what was read (``warn``); raises under ``fail``/``retry``."""
        if attempt <= CHANGE_RETRIES:
            return True
        if self.on_change is OnChange.RETRY:
            pause = attempt - CHANGE_RETRIES - 1
            if pause < len(_RETRY_PAUSES):
                time.sleep(_RETRY_PAUSES[pause])
                return True
            raise FileChanged(
                f"{self.display(rel)} kept changing while it was read ({attempt} reads over about "
                f"{sum(_RETRY_PAUSES):.0f} s); it was not stored (--on-change=retry)"
            )
        if self.on_change is OnChange.FAIL:
            raise FileChanged(
                f"{self.display(rel)} changed while it was read ({attempt} reads); "
                f"it was not stored (--on-change=fail)"
            )
        return False

    def _changed(self, rel: bytes, *, stored: bool) -> None:
        shown = self.display(rel)
        self.stats.changed += 1
        self.stats.changed_paths.append(shown)
        if stored:
            log.warning("%s changed while it was read; stored as last read, which may mix old and new content",
                        shown)
        else:
            log.warning("%s kept changing type while it was read; not stored", shown)

    def _skip_special(self, rel: bytes) -> None:
        shown = self.display(rel)
        self.stats.skipped += 1
        self.stats.skipped_paths.append(shown)
        log.warning("skipping special file (device, socket or FIFO): %s", shown)

    # -- files and the files cache ------------------------------------------------------------------

    def _stated(self, frame: Listing, name: bytes) -> Stated | None:
        """What ``name`` was when its batch was stat'ed (None: it could not be), the batch of
        names from it on stat'ed, and looked up in the files cache, first if it is not yet."""
        index = frame.pos - 1  # the walk has moved past ``name`` (and freed it in ``names``)
        if index >= frame.batch_to or frame.batch is None:
            assert frame.fd is not None
            names = frame.names[index : index + NAMES]
            names[0] = name
            frame.batch_to = index + len(names)
            frame.cached = {} if self.files_cache is None else self.files_cache.lookup(self._cache_dir(frame.rel), names)
            frame.batch = stat_batch(frame.fd, names, lambda name, st: self._choose(frame, name, st))
        return frame.batch.stated.get(name)

    def _choose(self, frame: Listing, name: bytes, st: os.stat_result) -> tuple[Decision | None, bool]:
        """For a name as its batch is stat'ed: the filter's decision if it is a regular file (else
        the walk decides later), and whether it is a small file to read through the batch."""
        if not stat.S_ISREG(st.st_mode):
            return None, False
        decision = None
        if self.filter is not None:
            assert frame.scope is not None
            decision = self.filter.decide(frame.scope, os.fsdecode(frame.rel + b"/" + name if frame.rel else name), st)
            if decision.reason is not None:
                return decision, False
        small = st.st_size < self.reader.chunker.min_size
        return decision, small and self._cached(frame, name, st) is None

    def _read(self, frame: Listing, name: bytes, stated: Stated | None) -> FileRead | None:
        """Read the regular file ``name``: from its batch if the helper read it, else the slow way."""
        assert frame.fd is not None
        if stated is not None and frame.batch is not None:
            found = frame.batch.content(frame.fd, name)
            if found is not None:
                return self.reader.take_whole(stated.st, *found)
        return self.reader.read_at(frame.fd, name)

    def _cached(self, frame: Listing, name: bytes, st: os.stat_result) -> CachedFile | None:
        """What the files cache vouches for (its rows are looked up as the name's batch is stat'ed).

        The chunks are not checked here: the commit checks every referenced blob under the GC
        fence anyway, and a snapshot whose cached chunks were collected is redone without the cache.
        """
        if self.files_cache is None:
            return None
        row = frame.cached.get(name)
        if row is not None and FilesCache.matches(row[0], st) and row[1].chunks:
            return row[1]
        return None

    def _cache_dir(self, rel: bytes) -> bytes:
        if rel != self._cache_dir_for[0]:  # one join per directory, not one per file
            self._cache_dir_for = (rel, os.path.join(self._root_abs, rel) if rel else self._root_abs)
        return self._cache_dir_for[1]

    def _file_entry(
        self, text: str, read: FileRead, dir_rel: bytes | None, name: bytes, rel: bytes, *, directory: bytes = b""
    ) -> Entry:
        """The entry of a file that was read; remembered in the files cache if it held still."""
        self.referenced.update(read.chunks)
        if not read.stable:
            self._changed(rel, stored=True)
        elif self.files_cache is not None:
            where = self._cache_dir(dir_rel) if dir_rel is not None else directory
            self.files_cache.remember(where, name, read.st, read.size, read.digest, read.chunks)
        self._count_file(read.size, from_cache=False)
        return new_entry(text, FILE, stat.S_IMODE(read.st.st_mode), read.st.st_mtime_ns, read.size, read.digest,
                         read.chunks)

    def _count_file(self, size: int, *, from_cache: bool) -> None:
        self.stats.files += 1
        self.stats.logical_bytes += size
        if from_cache:
            self.stats.files_from_cache += 1
        if self.progress:
            self.progress(self.stats.files, self.stats.logical_bytes)


__all__ = ["CHANGE_RETRIES", "DELEGATE", "EntryReader", "FileChanged", "OtherFileSystem", "Subdir", "Unstable"]
