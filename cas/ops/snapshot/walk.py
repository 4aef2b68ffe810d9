"""Turning a directory on disk into tree nodes and chunks (the writer side of a snapshot): the walk.

The walk is iterative and streams: a directory's names are listed and sorted (as bytes, the only
per-entry state held for the whole directory), then each entry is decided, stat'ed and read by an
:class:`~cas.ops.snapshot.entries.EntryReader` (a file's content by a
:class:`~cas.ops.snapshot.file_reader.FileReader`) and handed to a :class:`DirectoryEncoder` in turn, which
emits parts as they fill. Memory therefore grows with the number of names in the directories being
walked, not with their entries, stat results or encoded nodes, and a tree of any depth is walked
without recursion: the walk is a stack of open directory frames. Directories are opened relative to
their parent's descriptor, so paths longer than ``PATH_MAX`` are no limit either; at most
:data:`_OPEN_DIRS` of them stay open, and a closed ancestor is reopened through ``..`` (checked to
be the same directory) when the walk climbs back to it.

A :class:`SnapshotFilter` (:mod:`cas.ops.snapshot.filter`) decides each entry once it is stat'ed:
an entry left out is never opened or read, an excluded directory never entered. A directory's
``.casignore`` is read when the walk enters it, before any of its entries is decided.

In a parallel snapshot the directories at one depth are handed to worker processes through a
:class:`Delegation`; a directory waiting on them is a :class:`_Deferred`, encoded after the walk.

A directory's node is written after its contents, so the root tree ID names the whole snapshot.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from cas.errors import CasError, ConfigurationError, NotFound, PermissionDenied
from cas.format.chunking import Chunker
from cas.format.trees import DIR, DirectoryEncoder, Entry, TooLarge, encode_directory
from cas.ops.ignore import IGNORE_FILE_NAME
from cas.ops.snapshot.batch import NameBatch
from cas.ops.snapshot.entries import (
    DELEGATE,
    DIR_FLAGS,
    EntryReader,
    OtherFileSystem,
    ProgressFn,
    Subdir,
    Unstable,
)
from cas.ops.snapshot.file_reader import FileReader
from cas.ops.snapshot.filter import (
    DirScope,
    ExcludeReason,
    ExcludeStats,
    SnapshotFilter,
    WalkFilter,
    read_ignore_file,
)
from cas.repo.blobwriter import BlobWriter
from cas.repo.filescache import CachedFile, FilesCache
from cas.types import BlobKind, OnChange

_IGNORE_NAME = os.fsencode(IGNORE_FILE_NAME)

_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_OPEN_DIRS = 64
"""Directories of the walk held open at once; deeper ancestors are closed and reopened via ``..``."""


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
    batch: NameBatch | None = None
    batch_to: int = 0
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
    """Where a parallel snapshot sends subdirectories (``cas.ops.snapshot.workers``): each
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
        self.reader = FileReader(writer, chunker)
        self.files_cache = files_cache
        self.progress = progress
        self.on_change = OnChange(on_change)
        self.stats = WalkStats()
        self.filter_options = filter
        self._filter: WalkFilter | None = None
        self.referenced: set[str] = set()
        """Every blob the snapshot points at; checked under the GC fence at commit."""
        self._entries = self._entry_reader("", None)  # rooted where :meth:`build` or a worker starts

    def build(self, path: str) -> TreeResult:
        """Store everything under ``path`` (a directory, or a single file as a one-entry tree).

        ``path`` itself is followed if it is a symlink (as ``cp -r`` and restic treat the argument);
        symlinks inside the tree are stored as symlinks.
        """
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
            self._start(path, st.st_dev)
            walked = self._walk(fd, st)
            root = self._resolve(walked) if isinstance(walked, _Deferred) else walked
            assert root is not None  # the root is always stored
        elif stat.S_ISREG(st.st_mode):
            os.close(fd)
            self._start(path, None)
            root = self._store_tree([self._entries.root_file(path)])
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
                    child = self._step(top, name)
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
                    opened = os.open(part, DIR_FLAGS, dir_fd=fd)
                except OSError as exc:
                    raise Unstable(f"{self._entries.display(parent_rel)} was moved during the snapshot "
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
                raise Unstable(f"{self._entries.display(parent_rel)} was moved during the snapshot; snapshot it again")
            child = self._step(frame, name)
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
        self._start(path, root_dev)

    def _start(self, path: str, root_dev: int | None) -> None:
        """Root the walk at ``path``; start the filter for a directory on device ``root_dev``."""
        if root_dev is not None and self.filter_options is not None:
            self._filter = self.filter_options.start(root_dev)
            self.stats.excluded = self._filter.stats
        self._entries = self._entry_reader(path, self._filter)

    def _entry_reader(self, path: str, filter: WalkFilter | None) -> EntryReader:
        depth = self.delegation.depth if self.delegation is not None else None
        return EntryReader(path, self.reader, stats=self.stats, referenced=self.referenced,
                           files_cache=self.files_cache, progress=self.progress, on_change=self.on_change,
                           filter=filter, delegate_depth=depth)

    def _step(self, frame: _Dir, name: bytes) -> _Dir | None:
        """Store one entry of ``frame``'s directory; a subdirectory is returned, open, to be walked."""
        found = self._entries.entry(frame, name)
        if found is None:
            return None
        if isinstance(found, Entry):
            self._add(frame, found)
            return None
        if found is DELEGATE:
            # A worker decides, walks and stores it; its entry joins this directory's later.
            assert self.delegation is not None
            self._hold(frame, self.delegation.submit(frame.rel, frame.ident, name, frame.scope))
            return None
        if isinstance(found, Subdir):
            return self._open_dir(found.fd, found.rel, found.name, found.st, frame.scope, found.included)
        assert isinstance(found, OtherFileSystem)
        self.stats.dirs += 1
        mode, mtime_ns = stat.S_IMODE(found.st.st_mode), found.st.st_mtime_ns
        self._add(frame, Entry(found.name, DIR, mode, mtime_ns, tree=self._store_tree([])))
        return None

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
                    text = read_ignore_file(fd, self._entries.display(rel))
                scope = self._filter.enter(parent, os.fsdecode(rel), included, text)
        except CasError:
            os.close(fd)
            raise
        except PermissionError:
            os.close(fd)
            raise PermissionDenied(f"cannot read directory {self._entries.display(rel)}: permission denied") from None
        except OSError as exc:
            os.close(fd)
            raise CasError(f"cannot read directory {self._entries.display(rel)}: {exc.strerror or exc}") from None
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
            fd = os.open("..", DIR_FLAGS, dir_fd=child.fd)
        except OSError as exc:
            raise CasError(f"cannot reopen {self._entries.display(parent.rel)}: {exc.strerror or exc}") from None
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != parent.ident:
            os.close(fd)
            raise Unstable(f"{self._entries.display(parent.rel)} was moved during the snapshot; snapshot it again")
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
            raise ConfigurationError(f"cannot snapshot directory {self._entries.display(frame.rel)}: {exc}") from None
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
            raise ConfigurationError(f"cannot snapshot directory {self._entries.display(frame.rel)}: {exc}") from None

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

class _Capture:
    """Stands in for a directory's encoder in :meth:`TreeBuilder.walk_delegated`: keeps the one entry."""

    entry: Entry | None = None

    def add(self, entry: Entry) -> None:
        self.entry = entry


__all__ = ["Delegation", "OnChange", "ProgressFn", "TreeBuilder", "TreeResult", "WalkStats"]
