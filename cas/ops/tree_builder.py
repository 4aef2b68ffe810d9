"""Turning a directory on disk into tree nodes and chunks (the writer side of a snapshot).

The walk is iterative and streams: a directory's names are listed and sorted (as bytes, the only
per-entry state held for the whole directory), then each entry is stat'ed, read and handed to a
:class:`DirectoryEncoder` in turn, which emits parts as they fill. Memory therefore grows with the
number of names in the directories being walked, not with their entries, stat results or encoded
nodes, and a tree of any depth is walked without recursion. Directories are opened relative to
their parent's descriptor, so paths longer than ``PATH_MAX`` are no limit either; at most
:data:`_OPEN_DIRS` of them stay open, and a closed ancestor is reopened through ``..`` (checked to
be the same directory) when the walk climbs back to it.

Each file is opened ``O_NOFOLLOW | O_NONBLOCK`` (a FIFO swapped in for a file cannot block the
open) and checked with ``fstat`` to still be a regular file. Its chunks are hashed on the calling
thread and handed to the :class:`BlobWriter`, which compresses and packs them on its thread pool.
After reading, ``fstat`` must report the size, mtime and ctime seen before reading, and the bytes
read must match that size; otherwise the file changed while it was read, is read again, and is
finally handled per :class:`OnChange`. (A write landing in the same timestamp tick as the previous
one and leaving the size unchanged cannot be seen this way; no stat-based check can.)

A :class:`SnapshotFilter` (:mod:`cas.ops.snapshot_filter`) decides each entry once it is stat'ed:
an entry left out is never opened or read, an excluded directory never entered. A directory's
``.casignore`` is read when the walk enters it, before any of its entries is decided.

A directory's node is written after its contents, so the root tree ID names the whole snapshot.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

from cas.repo.blobwriter import BlobWriter
from cas.format.chunking import Chunker
from cas.errors import CasError, ConfigurationError, NotFound, PermissionDenied
from cas.repo.filescache import CachedFile, FilesCache
from cas.ops.ignore import IGNORE_FILE_NAME
from cas.ops.snapshot_filter import DirScope, ExcludeReason, ExcludeStats, SnapshotFilter, WalkFilter, read_ignore_file
from cas.format.hashing import hexdigest, new_hasher
from cas.types import BlobKind, OnChange
from cas.format.trees import DIR, FILE, SYMLINK, DirectoryEncoder, Entry, TooLarge, encode_directory

log = logging.getLogger("cas")

ProgressFn = Callable[[int, int], None]
_IGNORE_NAME = os.fsencode(IGNORE_FILE_NAME)

_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | _CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | _CLOEXEC
_OPEN_DIRS = 64
"""Directories of the walk held open at once; deeper ancestors are closed and reopened via ``..``."""
_CACHE_BATCH = 500
"""Names of a directory looked up in the files cache per query (below SQLite's variable limit)."""
CHANGE_RETRIES = 3
"""Times a file that changed while it was read is read again before ``--on-change`` applies."""
_RETRY_PAUSES = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 1.0, 2.0, 2.0, 3.0)
"""``--on-change=retry``: pauses before each further read (about 10 s in all) before failing."""


class FileChanged(CasError):
    """A file kept changing while the snapshot read it, and ``on_change`` said not to store it."""


@dataclass
class WalkStats:
    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    skipped: int = 0
    changed: int = 0
    """Files that changed while they were read on every attempt, stored as last read (``warn``)."""
    logical_bytes: int = 0
    files_from_cache: int = 0
    skipped_paths: list[str] = field(default_factory=list)
    changed_paths: list[str] = field(default_factory=list)
    excluded: ExcludeStats = field(default_factory=ExcludeStats)
    """What the :class:`SnapshotFilter` left out, by reason."""


@dataclass(frozen=True)
class TreeResult:
    root: str
    root_mode: int
    root_mtime_ns: int
    stats: WalkStats


class _Read(NamedTuple):
    """One read of a regular file: its fstat before reading, and what was read."""

    st: os.stat_result
    size: int
    digest: str
    chunks: tuple[str, ...]
    stable: bool
    """Size, mtime and ctime unchanged by the read, and the bytes read were the size fstat gave."""


class _Special(Exception):
    """The name turned out to be a FIFO, socket or device when opened."""


class _Replaced(Exception):
    """The name is no longer what it was stat'ed as (a directory or symlink now): stat it again."""


@dataclass(eq=False)
class _Dir:
    """A directory being walked: its sorted names and how far the walk got."""

    fd: int | None
    rel: bytes
    """Its path relative to the snapshot's root (``b""`` for the root)."""
    ident: tuple[int, int]
    """``(st_dev, st_ino)``, to check a descriptor reopened through ``..``."""
    name: str
    mode: int
    mtime_ns: int
    names: list[bytes]
    encoder: DirectoryEncoder
    pos: int = 0
    cached: dict[bytes, tuple[tuple[int, ...], CachedFile]] = field(default_factory=dict)
    cached_to: int = 0
    entries: list[Entry] | None = None
    """Its entries so far, kept only for an ``on_directory`` callback."""
    scope: DirScope | None = None
    """What the filter decides this directory's entries by (None without a filter)."""
    included: bool = True
    """False for a directory no ``--include`` pattern selected: stored only if something in it is."""
    stored: int = 0
    """Entries added to :attr:`encoder` so far."""
    held: list[Entry | _Deferred | object] | None = None
    """With a :class:`Delegation`: this directory's entries from its first one handed to a worker
    on, in name order (entries, subdirectories waiting on workers, and workers' handles)."""


@dataclass(eq=False)
class _Deferred:
    """A directory whose node waits on subdirectories handed to worker processes: it is encoded
    once their entries are back (:meth:`TreeBuilder._resolve`), after the walk."""

    frame: _Dir
    """Its frame, closed; ``held`` lists what its encoder still waits for."""


class Delegation(Protocol):
    """Where a parallel snapshot sends subdirectories (``cas.ops.snapshot_workers``): each
    directory at :attr:`depth` below the root is walked by a worker process, whole."""

    depth: int

    def submit(self, parent_rel: bytes, parent_ident: tuple[int, int], name: bytes, scope: DirScope | None) -> object:
        """Hand the entry ``name`` of the directory ``parent_rel`` (decided by ``scope``) to a
        worker; returns the handle :meth:`result` takes."""
        ...

    def result(self, handle: object) -> Entry | None:
        """The entry the worker stored for it (None: left out, vanished); raises its error."""
        ...


class TreeBuilder:
    def __init__(
        self,
        writer: BlobWriter,
        chunker: Chunker,
        *,
        files_cache: FilesCache | None = None,
        progress: ProgressFn | None = None,
        on_change: OnChange | str = OnChange.WARN,
        on_directory: Callable[[str, list[Entry]], None] | None = None,
        filter: SnapshotFilter | None = None,
        delegation: Delegation | None = None,
    ) -> None:
        """``on_directory(tree_id, entries)`` is called for each directory once it is encoded (the
        index's tree entries are filled from it at commit). ``filter`` decides what of a directory's
        contents is left out (nothing without one). ``delegation``: hand the directories at its
        depth to worker processes (a parallel snapshot) instead of walking them here."""
        self.on_directory = on_directory
        self.delegation = delegation
        self.writer = writer
        self.chunker = chunker
        self.files_cache = files_cache
        self.progress = progress
        self.on_change = OnChange(on_change)
        self.stats = WalkStats()
        self.filter_options = filter
        self._filter: WalkFilter | None = None
        self.referenced: set[str] = set()
        """Every blob the snapshot points at; checked under the GC fence at commit."""
        self._root = b""
        self._root_abs = b""
        self._cache_dir_for: tuple[bytes | None, bytes] = (None, b"")

    def build(self, path: str) -> TreeResult:
        """Store everything under ``path`` (a directory, or a single file as a one-entry tree).

        ``path`` itself is followed if it is a symlink (as ``cp -r`` and restic treat the argument);
        symlinks inside the tree are stored as symlinks.
        """
        self._root = os.fsencode(path)
        self._root_abs = os.fsencode(os.path.abspath(path))
        self._cache_dir_for = (None, b"")
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | _CLOEXEC)
        except FileNotFoundError:
            raise NotFound(f"no such file or directory: {path}") from None
        except PermissionError:
            raise PermissionDenied(f"permission denied: {path}") from None
        except OSError as exc:
            raise ConfigurationError(f"cannot snapshot {path}: {exc.strerror or exc}") from None
        try:
            st = os.fstat(fd)
        except BaseException:
            os.close(fd)
            raise
        if stat.S_ISDIR(st.st_mode):
            if self.filter_options is not None:
                self._filter = self.filter_options.start(st.st_dev)
                self.stats.excluded = self._filter.stats
            walked = self._walk(fd, st)
            root = self._resolve(walked) if isinstance(walked, _Deferred) else walked
            assert root is not None  # the root is always stored
        elif stat.S_ISREG(st.st_mode):
            os.close(fd)
            entry = self._root_file(path)
            root = self._store_tree([entry] if entry is not None else [])
        else:
            os.close(fd)
            raise ConfigurationError(f"not a directory or regular file: {path}")
        return TreeResult(root, stat.S_IMODE(st.st_mode), st.st_mtime_ns, self.stats)

    # -- the walk ---------------------------------------------------------------------------------

    def _walk(self, root_fd: int, st: os.stat_result) -> str | _Deferred:
        """Store the directory open as ``root_fd`` (which this takes over) and everything under it."""
        tree = self._walk_stack([self._open_dir(root_fd, b"", "", st, None, True)])
        assert tree is not None  # the root is always stored
        return tree

    def _walk_stack(self, stack: list[_Dir]) -> str | _Deferred | None:
        """Walk the directory of the one frame on ``stack`` and everything under it; its tree
        (None if it is left out, a :class:`_Deferred` if it waits on workers)."""
        try:
            while True:
                top = stack[-1]
                if top.pos < len(top.names):
                    name = top.names[top.pos]
                    top.names[top.pos] = b""  # the name is not needed again: free it as we go
                    top.pos += 1
                    child = self._entry(top, name)
                    if child is not None:
                        stack.append(child)
                        if len(stack) > _OPEN_DIRS:
                            self._close(stack[-_OPEN_DIRS - 1])
                    continue
                tree = self._finish_dir(top)
                stack.pop()
                if not stack:
                    self._close(top)
                    return tree
                parent = stack[-1]
                if parent.fd is None:
                    parent.fd = self._reopen_parent(top, parent)
                self._close(top)
                if tree is None:
                    continue
                if isinstance(tree, _Deferred):
                    self._hold(parent, tree)
                    continue
                self.stats.dirs += 1
                self._add(parent, Entry(top.name, DIR, stat.S_IMODE(top.mode), top.mtime_ns, tree=tree))
        finally:
            for frame in stack:
                self._close(frame)

    def walk_delegated(
        self, root_fd: int, parent_rel: bytes, parent_ident: tuple[int, int], name: bytes, scope: DirScope | None
    ) -> Entry | None:
        """A worker's share of a parallel snapshot (after :meth:`start_delegated`): store the entry
        ``name`` of the directory ``parent_rel`` as the walk would have (a directory, or whatever
        replaced it), deciding it by ``scope``. The directory is opened from ``root_fd`` one level at
        a time without following symlinks, and must be the one the main walk saw (``parent_ident``)."""
        fd = os.dup(root_fd)
        try:
            for part in parent_rel.split(b"/") if parent_rel else ():
                try:
                    opened = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except OSError as exc:
                    raise Unstable(f"{self._display(parent_rel)} was moved during the snapshot "
                                   f"({exc.strerror or exc}); snapshot it again") from None
                os.close(fd)
                fd = opened
            st = os.fstat(fd)
        except BaseException:
            os.close(fd)
            raise
        frame = _Dir(fd, parent_rel, (st.st_dev, st.st_ino), "", st.st_mode, st.st_mtime_ns, [name],
                     _Capture(), pos=1, scope=scope)  # type: ignore[arg-type]
        try:
            if frame.ident != parent_ident:
                raise Unstable(f"{self._display(parent_rel)} was moved during the snapshot; snapshot it again")
            child = self._entry(frame, name)
            if child is not None:
                tree = self._walk_stack([child])
                assert not isinstance(tree, _Deferred)  # a worker delegates nothing
                if tree is not None:
                    self.stats.dirs += 1
                    self._add(frame, Entry(child.name, DIR, stat.S_IMODE(child.mode), child.mtime_ns, tree=tree))
        finally:
            self._close(frame)
        return frame.encoder.entry  # type: ignore[attr-defined, no-any-return]

    def start_delegated(self, path: str, root_dev: int) -> None:
        """Prepare a worker of a parallel snapshot of ``path`` (on device ``root_dev``) for
        :meth:`walk_delegated`: messages name paths, and the files cache keys them, as here."""
        self._root = os.fsencode(path)
        self._root_abs = os.fsencode(os.path.abspath(path))
        self._cache_dir_for = (None, b"")
        if self.filter_options is not None:
            self._filter = self.filter_options.start(root_dev)
            self.stats.excluded = self._filter.stats

    def _open_dir(
        self, fd: int, rel: bytes, name: str, st: os.stat_result, parent: DirScope | None, included: bool
    ) -> _Dir:
        """A frame for the directory open as ``fd`` (closed here if listing it fails); ``parent``
        and ``included`` are what the filter decided for it (ignored without a filter)."""
        scope = None
        try:
            names = []
            with os.scandir(fd) as it:
                for item in it:
                    names.append(os.fsencode(item.name))
            if self._filter is not None:
                text = None
                if self._filter.reads_ignore_files and _IGNORE_NAME in names:
                    text = read_ignore_file(fd, self._display(rel))
                scope = self._filter.enter(parent, os.fsdecode(rel), included, text)
        except CasError:
            os.close(fd)
            raise
        except PermissionError:
            os.close(fd)
            raise PermissionDenied(f"cannot read directory {self._display(rel)}: permission denied") from None
        except OSError as exc:
            os.close(fd)
            raise CasError(f"cannot read directory {self._display(rel)}: {exc.strerror or exc}") from None
        except BaseException:
            os.close(fd)
            raise
        names.sort()
        return _Dir(fd, rel, (st.st_dev, st.st_ino), name, st.st_mode, st.st_mtime_ns, names,
                    DirectoryEncoder(self._store_node), entries=[] if self.on_directory else None,
                    scope=scope, included=included)

    @staticmethod
    def _close(frame: _Dir) -> None:
        if frame.fd is not None:
            os.close(frame.fd)
            frame.fd = None

    def _reopen_parent(self, child: _Dir, parent: _Dir) -> int:
        assert child.fd is not None
        try:
            fd = os.open("..", _DIR_FLAGS, dir_fd=child.fd)
        except OSError as exc:
            raise CasError(f"cannot reopen {self._display(parent.rel)}: {exc.strerror or exc}") from None
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != parent.ident:
            os.close(fd)
            raise Unstable(f"{self._display(parent.rel)} was moved during the snapshot; snapshot it again")
        return fd

    def _finish_dir(self, frame: _Dir) -> str | _Deferred | None:
        """The directory's tree ID; None for one left out (not included, and nothing in it stored);
        a :class:`_Deferred` while some of its entries wait on workers."""
        if frame.held is not None:
            return _Deferred(frame)
        if not frame.included and not frame.stored and self._filter is not None:
            self._filter.count(ExcludeReason.INCLUDE, 0)
            return None
        try:
            tree = frame.encoder.finish()
        except TooLarge as exc:
            raise ConfigurationError(f"cannot snapshot directory {self._display(frame.rel)}: {exc}") from None
        if self.on_directory is not None and frame.entries is not None:
            self.on_directory(tree, frame.entries)
            frame.entries = None
        return tree

    def _hold(self, frame: _Dir, item: _Deferred | object) -> None:
        """Add to ``frame`` an entry that waits on workers; the entries after it wait with it."""
        if frame.held is None:
            frame.held = []
        frame.held.append(item)

    def _resolve(self, deferred: _Deferred) -> str | None:
        """Encode a directory whose entries waited on workers (theirs first, depth first)."""
        frame = deferred.frame
        held, frame.held = frame.held or [], None
        for item in held:
            if isinstance(item, Entry):
                self._add(frame, item)
            elif isinstance(item, _Deferred):
                tree = self._resolve(item)
                if tree is not None:
                    child = item.frame
                    self.stats.dirs += 1
                    self._add(frame, Entry(child.name, DIR, stat.S_IMODE(child.mode), child.mtime_ns, tree=tree))
            else:
                assert self.delegation is not None
                entry = self.delegation.result(item)
                if entry is not None:
                    self._add(frame, entry)
        tree = self._finish_dir(frame)
        assert not isinstance(tree, _Deferred)
        return tree

    def _add(self, frame: _Dir, entry: Entry) -> None:
        if frame.held is not None:
            frame.held.append(entry)  # after one that waits on a worker: encoded in order, later
            return
        frame.stored += 1
        try:
            frame.encoder.add(entry)
            if frame.entries is not None:
                frame.entries.append(entry)
        except TooLarge as exc:
            raise ConfigurationError(f"cannot snapshot directory {self._display(frame.rel)}: {exc}") from None

    def _entry(self, frame: _Dir, name: bytes) -> _Dir | None:
        """Store one entry of ``frame``'s directory; a subdirectory is returned, open, to be walked."""
        rel = os.path.join(frame.rel, name) if frame.rel else name
        try:
            return self._entry_attempts(frame, name, rel)
        except CasError:
            raise
        except PermissionError:
            raise PermissionDenied(f"cannot read {self._display(rel)}: permission denied") from None
        except OSError as exc:
            raise CasError(f"cannot read {self._display(rel)}: {exc.strerror or exc}") from None

    def _entry_attempts(self, frame: _Dir, name: bytes, rel: bytes) -> _Dir | None:
        assert frame.fd is not None
        dir_fd = frame.fd
        text = os.fsdecode(name)
        attempt = 0
        while True:
            try:
                st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                return None  # vanished while we walked: it is not part of the snapshot
            mode = st.st_mode
            if (self.delegation is not None and stat.S_ISDIR(mode)
                    and rel.count(b"/") + 1 == self.delegation.depth):
                # A worker decides, walks and stores it; its entry joins this directory's later.
                self._hold(frame, self.delegation.submit(frame.rel, frame.ident, name, frame.scope))
                return None
            decision = None
            if self._filter is not None:
                assert frame.scope is not None
                decision = self._filter.decide(frame.scope, os.fsdecode(rel), st)
                if decision.reason is not None:
                    return None
                if decision.other_fs:
                    self.stats.dirs += 1
                    self._add(frame, Entry(text, DIR, stat.S_IMODE(mode), st.st_mtime_ns, tree=self._store_tree([])))
                    return None
            try:
                if stat.S_ISREG(mode):
                    cached = self._cached(frame, name, st)
                    if cached is not None:
                        self.referenced.update(cached.chunks)
                        self._count_file(st.st_size, from_cache=True)
                        self._add(frame, Entry(text, FILE, stat.S_IMODE(mode), st.st_mtime_ns, size=st.st_size,
                                               digest=cached.digest, chunks=cached.chunks))
                        return None
                    read = self._read(lambda: os.open(name, _FILE_FLAGS, dir_fd=dir_fd), rel)
                    if read is None:
                        return None
                    attempt += 1
                    if not read.stable and self._read_again(attempt, rel):
                        continue
                    self._add(frame, self._file_entry(text, read, frame.rel, name, rel))
                elif stat.S_ISDIR(mode):
                    try:
                        fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
                    except FileNotFoundError:
                        return None
                    except (NotADirectoryError, OSError) as exc:
                        if isinstance(exc, NotADirectoryError) or exc.errno == errno.ELOOP:
                            raise _Replaced from None
                        raise
                    try:
                        dst = os.fstat(fd)
                    except BaseException:
                        os.close(fd)
                        raise
                    return self._open_dir(fd, rel, text, dst, frame.scope,
                                          decision.included if decision is not None else True)
                elif stat.S_ISLNK(mode):
                    try:
                        target = os.fsdecode(os.readlink(name, dir_fd=dir_fd))
                    except FileNotFoundError:
                        return None
                    except OSError as exc:
                        if exc.errno == errno.EINVAL:  # no longer a symlink
                            raise _Replaced from None
                        raise
                    self.stats.symlinks += 1
                    self._add(frame, Entry(text, SYMLINK, stat.S_IMODE(mode), st.st_mtime_ns, target=target))
                else:
                    raise _Special
            except _Special:
                self._skip_special(rel)
            except _Replaced:
                attempt += 1
                if self._read_again(attempt, rel):
                    continue
                self._changed(rel, stored=False)
            return None

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
                f"{self._display(rel)} kept changing while it was read ({attempt} reads over about "
                f"{sum(_RETRY_PAUSES):.0f} s); it was not stored (--on-change=retry)"
            )
        if self.on_change is OnChange.FAIL:
            raise FileChanged(
                f"{self._display(rel)} changed while it was read ({attempt} reads); "
                f"it was not stored (--on-change=fail)"
            )
        return False

    def _changed(self, rel: bytes, *, stored: bool) -> None:
        shown = self._display(rel)
        self.stats.changed += 1
        self.stats.changed_paths.append(shown)
        if stored:
            log.warning("%s changed while it was read; stored as last read, which may mix old and new content",
                        shown)
        else:
            log.warning("%s kept changing type while it was read; not stored", shown)

    def _skip_special(self, rel: bytes) -> None:
        shown = self._display(rel)
        self.stats.skipped += 1
        self.stats.skipped_paths.append(shown)
        log.warning("skipping special file (device, socket or FIFO): %s", shown)

    def _cached(self, frame: _Dir, name: bytes, st: os.stat_result) -> CachedFile | None:
        """What the files cache vouches for, looked up a batch of names at a time.

        The chunks are not checked here: the commit checks every referenced blob under the GC
        fence anyway, and a snapshot whose cached chunks were collected is redone without the cache.
        """
        if self.files_cache is None:
            return None
        index = frame.pos - 1  # the walk has moved past ``name`` (and freed it in ``names``)
        if index >= frame.cached_to:
            batch = frame.names[index : index + _CACHE_BATCH]
            batch[0] = name
            frame.cached = self.files_cache.lookup(self._cache_dir(frame.rel), batch)
            frame.cached_to = index + len(batch)
        row = frame.cached.get(name)
        if row is not None and FilesCache.matches(row[0], st) and row[1].chunks:
            return row[1]
        return None

    def _cache_dir(self, rel: bytes) -> bytes:
        if rel != self._cache_dir_for[0]:  # one join per directory, not one per file
            self._cache_dir_for = (rel, os.path.join(self._root_abs, rel) if rel else self._root_abs)
        return self._cache_dir_for[1]

    def _display(self, rel: bytes) -> str:
        return os.fsdecode(os.path.join(self._root, rel) if rel else self._root)

    # -- files --------------------------------------------------------------------------------------

    def _root_file(self, path: str) -> Entry | None:
        """The snapshot of a single file (``path`` followed if it is a symlink)."""
        name = os.path.basename(os.path.abspath(path))
        attempt = 0
        while True:
            try:
                read = self._read(lambda: os.open(path, os.O_RDONLY | os.O_NONBLOCK | _CLOEXEC), b"")
            except _Special:
                raise ConfigurationError(f"not a directory or regular file: {path}") from None
            except _Replaced:
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

    def _file_entry(
        self, text: str, read: _Read, dir_rel: bytes | None, name: bytes, rel: bytes, *, directory: bytes = b""
    ) -> Entry:
        """The entry of a file that was read; remembered in the files cache if it held still."""
        self.referenced.update(read.chunks)
        if not read.stable:
            self._changed(rel, stored=True)
        elif self.files_cache is not None:
            where = self._cache_dir(dir_rel) if dir_rel is not None else directory
            self.files_cache.remember(where, name, read.st, read.size, read.digest, read.chunks)
        self._count_file(read.size, from_cache=False)
        return Entry(text, FILE, stat.S_IMODE(read.st.st_mode), read.st.st_mtime_ns, size=read.size,
                     digest=read.digest, chunks=read.chunks)

    def _read(self, opener: Callable[[], int], rel: bytes) -> _Read | None:
        """Read the regular file ``opener`` opens; None if it vanished since it was stat'ed.

        Raises :class:`_Special` if it is now a FIFO, socket or device, :class:`_Replaced` if it is
        now a directory or symlink. Chunks go to the writer as they are cut; the caller adds them to
        :attr:`referenced` only for the read it keeps.
        """
        try:
            fd = opener()
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise _Replaced from None  # a symlink now
            if exc.errno == errno.ENXIO:
                raise _Special from None  # a socket now
            raise
        try:
            before = os.fstat(fd)
            if stat.S_ISDIR(before.st_mode):
                raise _Replaced
            if not stat.S_ISREG(before.st_mode):
                raise _Special
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
        return _Read(before, size, digest, chunks, stable)

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
        hasher = new_hasher()
        size = 0
        with os.fdopen(fd, "rb", buffering=0, closefd=False) as f:
            for piece in self.chunker.chunks(f, size_hint):
                if not len(piece):
                    continue
                chunk_id = hexdigest(piece)
                hasher.update(piece)
                size += len(piece)
                chunks.append(chunk_id)
                self.writer.add(chunk_id, BlobKind.DATA, piece)
                del piece  # not held while the chunker reads its next block
        digest = chunks[0] if len(chunks) == 1 else hasher.hexdigest()
        return size, digest, tuple(chunks)

    # -- nodes ----------------------------------------------------------------------------------------

    def _store_tree(self, entries: list[Entry]) -> str:
        try:
            tree = encode_directory(entries, self._store_node)
        except TooLarge as exc:
            raise ConfigurationError(f"cannot snapshot a directory: {exc}") from None
        if self.on_directory is not None:
            self.on_directory(tree, entries)
        return tree

    def _store_node(self, node_id: str, data: bytes) -> None:
        self.referenced.add(node_id)
        self.writer.add(node_id, BlobKind.TREE, data)

    def _count_file(self, size: int, *, from_cache: bool) -> None:
        self.stats.files += 1
        self.stats.logical_bytes += size
        if from_cache:
            self.stats.files_from_cache += 1
        if self.progress:
            self.progress(self.stats.files, self.stats.logical_bytes)


class _Capture:
    """Stands in for a directory's encoder in :meth:`TreeBuilder.walk_delegated`: keeps the one entry."""

    entry: Entry | None = None

    def add(self, entry: Entry) -> None:
        self.entry = entry


class Unstable(CasError):
    """The tree changed under the snapshot in a way it cannot follow (a directory moved away)."""


__all__ = ["CHANGE_RETRIES", "Delegation", "FileChanged", "OnChange", "TreeBuilder", "TreeResult", "Unstable", "WalkStats"]
