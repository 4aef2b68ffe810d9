"""Turning a directory on disk into tree nodes and chunks (the writer side of a snapshot).

Directories are walked depth first; each file is cut into chunks, each chunk hashed on the calling
thread (BLAKE3 is fast and the ID is needed for the tree) and handed to the :class:`BlobWriter`,
which compresses and packs it on its thread pool. A directory's node is written after its contents,
so the root tree ID names the whole snapshot.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field

from cas.blobwriter import BlobWriter
from cas.chunking import Chunker
from cas.errors import ConfigurationError, NotFound, PermissionDenied
from cas.filescache import CachedFile, FilesCache
from cas.hashing import hexdigest, new_hasher
from cas.packs import KIND_DATA, KIND_TREE
from cas.trees import DIR, FILE, SYMLINK, Entry, TooLarge, encode_directory, name_key

log = logging.getLogger("cas")

ProgressFn = Callable[[int, int], None]


@dataclass
class WalkStats:
    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    skipped: int = 0
    logical_bytes: int = 0
    files_from_cache: int = 0
    skipped_paths: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class TreeResult:
    root: str
    root_mode: int
    root_mtime_ns: int
    stats: WalkStats


class TreeBuilder:
    def __init__(
        self,
        writer: BlobWriter,
        chunker: Chunker,
        *,
        files_cache: FilesCache | None = None,
        progress: ProgressFn | None = None,
    ) -> None:
        self.writer = writer
        self.chunker = chunker
        self.files_cache = files_cache
        self.progress = progress
        self.stats = WalkStats()
        self.referenced: set[str] = set()
        """Every blob the snapshot points at; checked under the GC fence at commit."""

    def build(self, path: str) -> TreeResult:
        """Store everything under ``path`` (a directory, or a single file as a one-entry tree)."""
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise NotFound(f"no such file or directory: {path}") from None
        except PermissionError:
            raise PermissionDenied(f"permission denied: {path}") from None
        if stat.S_ISDIR(st.st_mode):
            try:
                root = self._directory(path)
            except RecursionError:
                raise ConfigurationError(f"directory tree under {path} is too deep to snapshot") from None
        elif stat.S_ISREG(st.st_mode):
            entry = self._file(path, os.path.basename(os.path.abspath(path)), st)
            root = self._store_tree([entry])
        else:
            raise ConfigurationError(f"not a directory or regular file: {path}")
        return TreeResult(root, stat.S_IMODE(st.st_mode), st.st_mtime_ns, self.stats)

    def _directory(self, path: str) -> str:
        try:
            with os.scandir(path) as it:
                items = sorted(it, key=lambda d: name_key(d.name))
        except PermissionError:
            raise PermissionDenied(f"cannot read directory {path}: permission denied") from None
        stats: list[tuple[os.DirEntry[str], os.stat_result]] = []
        for item in items:
            try:
                stats.append((item, item.stat(follow_symlinks=False)))
            except FileNotFoundError:
                continue  # vanished while we walked: it is not part of the snapshot
        reusable = self._reusable_files(path, stats)
        entries: list[Entry] = []
        for item, st in stats:
            full = os.path.join(path, item.name)
            mode = st.st_mode
            if stat.S_ISREG(mode):
                cached = reusable.get(item.name)
                if cached is not None:
                    self.referenced.update(cached.chunks)
                    self._count_file(st.st_size, from_cache=True)
                    entries.append(Entry(item.name, FILE, stat.S_IMODE(mode), st.st_mtime_ns, size=st.st_size,
                                         digest=cached.digest, chunks=cached.chunks))
                else:
                    entries.append(self._file(full, item.name, st))
            elif stat.S_ISDIR(mode):
                tree = self._directory(full)
                self.stats.dirs += 1
                entries.append(Entry(item.name, DIR, stat.S_IMODE(mode), st.st_mtime_ns, tree=tree))
            elif stat.S_ISLNK(mode):
                try:
                    target = os.readlink(full)
                except FileNotFoundError:
                    continue
                self.stats.symlinks += 1
                entries.append(Entry(item.name, SYMLINK, stat.S_IMODE(mode), st.st_mtime_ns, target=target))
            else:
                self.stats.skipped += 1
                self.stats.skipped_paths.append(full)
                log.warning("skipping special file (device, socket or FIFO): %s", full)
        return self._store_tree(entries)

    def _reusable_files(
        self, path: str, stats: list[tuple[os.DirEntry[str], os.stat_result]]
    ) -> dict[str, CachedFile]:
        """Files of this directory the files cache vouches for (one cache query per directory)."""
        if self.files_cache is None:
            return {}
        rows = self.files_cache.load_directory(path)
        if not rows:
            return {}
        candidates: dict[str, CachedFile] = {}
        for item, st in stats:
            row = rows.get(item.name)
            if row is not None and stat.S_ISREG(st.st_mode) and FilesCache.matches(row[0], st) and row[1].chunks:
                candidates[item.name] = row[1]
        # The chunks are not checked here: the commit checks every referenced blob under the GC
        # fence anyway, and a snapshot whose cached chunks were collected is redone without the cache.
        return candidates

    def _store_tree(self, entries: list[Entry]) -> str:
        try:
            return encode_directory(entries, self._store_node)
        except TooLarge as exc:
            raise ConfigurationError(f"cannot snapshot a directory: {exc}") from None

    def _store_node(self, node_id: str, data: bytes) -> None:
        self.referenced.add(node_id)
        self.writer.add(node_id, KIND_TREE, data)

    def _file(self, path: str, name: str, st: os.stat_result) -> Entry:
        mode = stat.S_IMODE(st.st_mode)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
        except PermissionError:
            raise PermissionDenied(f"cannot read {path}: permission denied") from None
        except FileNotFoundError:
            raise NotFound(f"file vanished during snapshot: {path}") from None
        if st.st_size < self.chunker.min_size:
            small = self._small_file(fd, path)
            if small is not None:
                fst, data = small
                chunk_id = hexdigest(data)
                chunks_ = (chunk_id,) if data else ()
                if data:
                    self.referenced.add(chunk_id)
                    self.writer.add(chunk_id, KIND_DATA, data)
                if self.files_cache is not None:
                    self.files_cache.remember(path, fst, len(data), chunk_id, chunks_)
                self._count_file(len(data), from_cache=False)
                return Entry(name, FILE, mode, fst.st_mtime_ns, size=len(data), digest=chunk_id, chunks=chunks_)
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
        with os.fdopen(fd, "rb", buffering=0) as f:
            fst = os.fstat(f.fileno())
            chunks: list[str] = []
            hasher = new_hasher()
            size = 0
            for piece in self.chunker.chunks(f, fst.st_size):
                if not len(piece):
                    continue
                chunk_id = hexdigest(piece)
                hasher.update(piece)
                size += len(piece)
                chunks.append(chunk_id)
                self.referenced.add(chunk_id)
                self.writer.add(chunk_id, KIND_DATA, piece)
        digest = chunks[0] if len(chunks) == 1 else hasher.hexdigest()
        if self.files_cache is not None:
            self.files_cache.remember(path, fst, size, digest, tuple(chunks))
        self._count_file(size, from_cache=False)
        return Entry(name, FILE, mode, fst.st_mtime_ns, size=size, digest=digest, chunks=tuple(chunks))

    def _small_file(self, fd: int, path: str) -> tuple[os.stat_result, bytes] | None:
        """Read a file below the minimum chunk size in one call and close ``fd``; None (fd closed)
        if it turned out larger, so the caller reads it the general way."""
        try:
            fst = os.fstat(fd)
            limit = self.chunker.min_size
            # Ask for the size fstat reports (+1 to notice growth): a buffer of the minimum chunk
            # size per small file would be allocated and shrunk 47,000 times for a site-packages.
            data = os.read(fd, min(limit, fst.st_size + 1))
            while len(data) < limit:
                more = os.read(fd, limit - len(data))
                if not more:
                    return fst, data
                data += more
            return None if os.read(fd, 1) else (fst, data)
        finally:
            os.close(fd)

    def _count_file(self, size: int, *, from_cache: bool) -> None:
        self.stats.files += 1
        self.stats.logical_bytes += size
        if from_cache:
            self.stats.files_from_cache += 1
        if self.progress:
            self.progress(self.stats.files, self.stats.logical_bytes)


__all__ = ["TreeBuilder", "TreeResult", "WalkStats"]
