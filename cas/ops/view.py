"""Executions as one read-only directory tree, for the file interfaces (fsspec and the mount).

Paths are ``EXECUTION_ID/path/in/tree``; the top level ('') lists the executions. A path is split
on '/' and looked up name by name in the stored trees, so a name can never climb out of its
execution ('..' is not found; stored names cannot hold '/' or be '.' or '..', see
:func:`cas.format.trees.decode_tree`). Symlinks are entries like any other: the view reports their
target and never follows one.

Directories come from a :class:`~cas.ops.browse.TreeSource` (entries by tree ID). Trees are
content-addressed, so what was read for an ID is true forever; :class:`CachedTrees` keeps the most
recent directories in memory. An index table of tree entries can stand in for reading trees
(``listings``): it lists directories, and a file's chunk list is read from its stored tree when the
file is opened. What is done ahead of a directory's reads (its files' chunks located together, its
small files fetched) is :mod:`cas.ops.dir_readahead`'s.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from typing import Protocol

from cas.errors import ConfigurationError, IntegrityError, NotFound, ReadError
from cas.format.trees import DIR, FILE, SYMLINK, Entry
from cas.ops.browse import TreeSource
from cas.ops.dir_readahead import SMALL_FILE, DirReadAhead
from cas.repo.ranges import RangeReader
from cas.repo.readahead import ChunksAhead
from cas.repo.reader import verified_content
from cas.repo.repository import Repository
from cas.types import BlobLocation, EntryType

TOP_MODE = 0o555
MAX_DIRECTORY_NODES = 8192
"""Directory nodes remembered by path, so looking up an entry does not walk from the root again."""
PREFETCH_BATCH = 256
"""Trees asked for in one query when directories are read ahead."""
SNAPSHOT_TTL_S = 5.0
"""How long the list of executions (and each execution's root) is reused before asking again."""


class SnapshotLike(Protocol):
    """The fields of a snapshot the view shows (``cas.Snapshot`` has them)."""

    @property
    def execution_id(self) -> str: ...
    @property
    def root(self) -> str: ...
    @property
    def time_ns(self) -> int: ...
    @property
    def root_mode(self) -> int: ...
    @property
    def root_mtime_ns(self) -> int: ...


class SnapshotSource(Protocol):
    """Where the view finds executions (``cas.Store`` is one)."""

    def list(self) -> Iterable[SnapshotLike]: ...

    def get(self, execution_id: str) -> SnapshotLike: ...


@dataclass(frozen=True)
class Node:
    """One path of the view: the top level, an execution's root, or an entry inside one."""

    path: str
    type: EntryType
    mode: int
    mtime_ns: int
    size: int = 0
    entry: Entry | None = None
    """The tree entry (None for the top level and for an execution's root)."""
    tree: str = ""
    """A directory's tree ID ('' for the top level)."""
    parent: str = ""
    """The tree ID of the directory holding the entry ('' for the top level and execution roots)."""

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    @property
    def target(self) -> str:
        return self.entry.target if self.entry is not None else ""

    @property
    def digest(self) -> str:
        return self.entry.digest if self.entry is not None else ""


class RepositoryTrees:
    """A :class:`TreeSource` reading tree nodes from a repository. Reading a directory locates all
    its subdirectories' nodes in one index query, ready for when they are read (a walk down the
    tree then costs one query per directory that has subdirectories, not one per directory)."""

    MAX_KNOWN = 100_000

    def __init__(self, repo: Repository) -> None:
        self._repo = repo
        self._known: dict[str, BlobLocation] = {}
        self._lock = threading.Lock()

    def read_tree(self, tree_id: str) -> list[Entry]:
        with self._lock:
            location = self._known.pop(tree_id, None)
        entries = self._repo.read_tree(tree_id, location)
        subtrees = [e.tree for e in entries if e.type == DIR]
        if subtrees:
            found = self._repo.locate(subtrees)
            with self._lock:
                if len(self._known) + len(found) > self.MAX_KNOWN:
                    self._known.clear()
                self._known.update(found)
        return entries


class CachedTrees:
    """A :class:`TreeSource` keeping the most recent directories read (by tree ID) in memory, with
    their entries by name, up to ``capacity`` entries in all.

    A source that can read many trees at once (``read_trees(tree_ids) -> {tree ID: entries}``, as
    the index's table of tree entries can) is read ahead: a miss reads the directory and then the
    directories below it, breadth first, one batched query per level, until about
    ``prefetch`` entries are held (a walk down the tree then costs a few queries, not one per
    directory)."""

    def __init__(self, source: TreeSource, capacity: int = 200_000, prefetch: int = 20_000) -> None:
        self._source = source
        self._capacity = capacity
        self._prefetch = prefetch
        self._cache: OrderedDict[str, tuple[list[Entry], dict[str, Entry]]] = OrderedDict()
        self._held = 0
        self._lock = threading.Lock()

    def read_tree(self, tree_id: str, source: TreeSource | None = None) -> list[Entry]:
        """A directory's entries; on a miss they are read from ``source`` (default: this cache's).
        Any source gives the same entries for a tree ID (chunk lists aside), so one cache serves all."""
        return self._directory(tree_id, source)[0]

    def entry(self, tree_id: str, name: str, source: TreeSource | None = None) -> Entry | None:
        return self._directory(tree_id, source)[1].get(name)

    def _directory(self, tree_id: str, source: TreeSource | None) -> tuple[list[Entry], dict[str, Entry]]:
        with self._lock:
            found = self._cache.get(tree_id)
            if found is not None:
                self._cache.move_to_end(tree_id)
                return found
        source = source or self._source
        read_trees: Callable[[list[str]], dict[str, list[Entry]]] | None = getattr(source, "read_trees", None)
        if read_trees is None:
            return self._keep(tree_id, source.read_tree(tree_id))
        found = self._keep(tree_id, read_trees([tree_id]).get(tree_id, []))
        held, level = len(found[0]), [e.tree for e in found[0] if e.type == DIR]
        while level and held < self._prefetch:
            below: list[str] = []
            for start in range(0, len(level), PREFETCH_BATCH):
                with self._lock:
                    wanted = [t for t in level[start : start + PREFETCH_BATCH] if t not in self._cache]
                for tree, entries in (read_trees(wanted) if wanted else {}).items():
                    self._keep(tree, entries)
                    held += len(entries) + 1
                    below.extend(e.tree for e in entries if e.type == DIR)
                if held >= self._prefetch:
                    break
            level = below
        return found

    def _keep(self, tree_id: str, entries: list[Entry]) -> tuple[list[Entry], dict[str, Entry]]:
        found = (entries, {e.name: e for e in entries})
        with self._lock:
            if tree_id not in self._cache:
                self._cache[tree_id] = found
                self._held += len(entries) + 1
            while self._held > self._capacity and len(self._cache) > 1:
                self._held -= len(self._cache.popitem(last=False)[1][0]) + 1
        return found


class SnapshotView:
    """Look up, list and open paths across executions. Safe to share between threads.

    ``executions`` limits the view to those IDs (each must exist); None shows every execution.
    ``listings`` says where an execution's directories are listed from (for example the index's
    table of tree entries, for the executions it holds), asked once per execution every
    :data:`SNAPSHOT_TTL_S`; None, or a None answer, reads the stored trees. A listing source may
    leave out chunk lists: opening a file then reads its entry from the stored tree.
    """

    def __init__(
        self,
        repo: Repository,
        snapshots: SnapshotSource,
        executions: Iterable[str] | None = None,
        listings: Callable[[str], TreeSource | None] | None = None,
    ) -> None:
        self.repo = repo
        self._snapshots = snapshots
        self._stored = CachedTrees(RepositoryTrees(repo))
        self._listings = listings
        self._trees = self._stored if listings is None else CachedTrees(self._stored)
        self._sources: dict[str, TreeSource | None] = {}
        self._only = None if executions is None else list(dict.fromkeys(executions))
        for execution_id in self._only or ():
            snapshots.get(execution_id)  # an unknown ID is an error now, not an empty directory later
        self._lock = threading.Lock()
        self._roots: dict[str, SnapshotLike] = {}
        self._roots_at = -SNAPSHOT_TTL_S
        self._dirs: dict[tuple[str, str], Node] = {}  # (root tree, path) -> directory node, recent ones
        self._ahead = ChunksAhead(repo)  # chunks of small files fetched before they are read
        self._read_ahead = DirReadAhead(repo, self._stored, self._ahead)  # chunks located and fetched ahead

    # -- executions ---------------------------------------------------------------------------

    def _executions(self) -> dict[str, SnapshotLike]:
        with self._lock:
            if time.monotonic() - self._roots_at < SNAPSHOT_TTL_S:
                return self._roots
        if self._only is None:
            roots = {s.execution_id: s for s in self._snapshots.list()}
        else:
            roots = {}
            for execution_id in self._only:
                try:
                    roots[execution_id] = self._snapshots.get(execution_id)
                except NotFound:
                    continue  # forgotten since the view was made
        with self._lock:
            self._roots, self._roots_at = roots, time.monotonic()
            self._sources.clear()
        return roots

    def _source(self, execution_id: str) -> TreeSource | None:
        """Where this execution's directories are listed from (None: the stored trees)."""
        if self._listings is None:
            return None
        with self._lock:
            if execution_id in self._sources:
                return self._sources[execution_id]
        source = self._listings(execution_id)
        with self._lock:
            self._sources[execution_id] = source
        return source

    def _execution(self, execution_id: str) -> SnapshotLike:
        snap = self._executions().get(execution_id)
        if snap is None and self._only is None:
            try:  # not in this host's index (yet): its record on the backend
                snap = self._snapshots.get(execution_id)
            except (NotFound, ConfigurationError):
                snap = None
        if snap is None:
            raise NotFound(f"no execution {execution_id!r}")
        return snap

    # -- paths --------------------------------------------------------------------------------

    def lookup(self, path: str) -> Node:
        """The node at ``path``; :class:`NotFound` (a FileNotFoundError) when there is none."""
        parts = split(path)
        if not parts:
            snaps = self._executions().values()
            newest = max((s.time_ns for s in snaps), default=0)
            return Node("", DIR, TOP_MODE, newest)
        snap = self._execution(parts[0])
        source = self._source(parts[0])
        # Most lookups name an entry of a directory looked up just before: start from it.
        node = self._dirs.get((snap.root, "/".join(parts[:-1]))) if len(parts) > 2 else None
        if node is None:
            node, rest = Node(parts[0], DIR, snap.root_mode, snap.root_mtime_ns, tree=snap.root), parts[1:]
        else:
            rest = parts[-1:]
        for name in rest:
            if node.type != DIR:
                raise NotFound(f"{'/'.join(parts)}: {node.path} is not a directory")
            entry = self._trees.entry(node.tree, name, source)
            if entry is None:
                raise NotFound(f"{'/'.join(parts)} does not exist")
            node = _node(node.path + "/" + name, entry, node.tree)
            if node.type == DIR:
                if len(self._dirs) >= MAX_DIRECTORY_NODES:
                    self._dirs.clear()
                self._dirs[(snap.root, node.path)] = node
        return node

    def children(self, node: Node) -> list[Node]:
        """The nodes in a directory, in name order; NotADirectoryError for anything else."""
        if node.type != DIR:
            raise NotADirectoryError(f"{node.path} is not a directory")
        if node.path == "":
            return [Node(s.execution_id, DIR, s.root_mode, s.root_mtime_ns, tree=s.root)
                    for _, s in sorted(self._executions().items())]
        source = self._source(node.path.split("/", 1)[0])
        return [_node(node.path + "/" + e.name, e, node.tree) for e in self._trees.read_tree(node.tree, source)]

    def entries(self, node: Node) -> list[Entry]:
        """The tree entries of a directory inside an execution, in name order (what :meth:`children`
        makes nodes of; for callers that need only names and types)."""
        if node.type != DIR or not node.tree:
            raise NotADirectoryError(f"{node.path or '/'} is not a directory inside an execution")
        return self._trees.read_tree(node.tree, self._source(node.path.split("/", 1)[0]))

    def open(self, node: Node) -> RangeReader:
        """Random access to a file node's content; each chunk read is verified."""
        with self.repo.lookups_on_one_connection():  # its stored directory, its chunks: one checkout
            entry = self._file_entry(node)
            locations = self._read_ahead.chunk_locations(node.parent, entry)
        small = 0 < entry.size <= SMALL_FILE and node.parent
        return RangeReader(self.repo, entry, node.path, locations, self._ahead,
                           partial(self._read_ahead.fetch_siblings_ahead, node.parent, entry) if small else None)

    def read_whole(self, node: Node) -> bytes:
        """A small file's whole content (up to :data:`SMALL_FILE`), verified chunk by chunk and
        then as a whole (size and digest): what a reader of the whole file gets from :meth:`open`,
        without making one (the common read of a small file is one read from its start). Its
        directory's next small files are fetched ahead as :meth:`open` does."""
        entry = self._file_entry(node)
        if entry.size > SMALL_FILE:
            raise ValueError(f"{node.path} is not a small file")
        if not entry.size:
            return b""
        locations = self._read_ahead.chunk_locations(node.parent, entry)
        if node.parent:
            self._read_ahead.fetch_siblings_ahead(node.parent, entry)
        taken = self._ahead.take(entry.chunks)
        if (len(entry.chunks) == 1 and entry.chunks[0] == entry.digest
                and len(data := taken.get(entry.digest, b"")) == entry.size):
            return data  # one chunk, verified as it was taken, whose ID is the file's digest
        try:
            return b"".join(verified_content(self.repo, entry, locations, node.path, taken))
        except IntegrityError as exc:
            raise ReadError(str(exc)) from None

    def _file_entry(self, node: Node) -> Entry:
        """A file node's entry with its chunk list."""
        if node.type == DIR:
            raise IsADirectoryError(f"{node.path or '/'} is a directory")
        if node.type == SYMLINK:
            raise ConfigurationError(f"{node.path} is a symlink to {node.target!r}; cas does not follow links")
        entry = node.entry
        assert entry is not None
        if entry.size and not entry.chunks:
            # Listed by a source without chunk lists: the stored tree has them (and is verified).
            stored = self._stored.entry(node.parent, entry.name)
            if stored is None or stored.type != FILE or (stored.size, stored.digest) != (entry.size, entry.digest):
                raise ReadError(f"{node.path}: the stored tree does not hold the file its listing shows")
            entry = stored
        return entry


def split(path: str) -> list[str]:
    """The names in a view path ('' and '.' components dropped). '..' names nothing: stored trees
    cannot hold it, so it is reported as not found rather than resolved."""
    parts = [p for p in path.strip("/").split("/") if p and p != "."]
    if ".." in parts:
        raise NotFound(f"{path}: '..' is not resolved in a snapshot path")
    return parts


def _node(path: str, entry: Entry, parent: str) -> Node:
    if entry.type == FILE:
        return Node(path, FILE, entry.mode, entry.mtime_ns, entry.size, entry, parent=parent)
    if entry.type == SYMLINK:
        size = len(entry.target.encode("utf-8", "surrogateescape"))
        return Node(path, SYMLINK, entry.mode, entry.mtime_ns, size, entry, parent=parent)
    return Node(path, DIR, entry.mode, entry.mtime_ns, 0, entry, entry.tree, parent)
