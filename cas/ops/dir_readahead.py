"""A directory's files prepared ahead of their reads, for the view (:mod:`cas.ops.view`).

Readers of a view go through a directory's files one after another (``cat dir/*``, ``grep -r``, an
import of a package, a walk that then enters the subdirectories), and a directory's files are
stored side by side. So the first file opened in a directory has the chunks of the files beside it
located in the same index query, and the first read of a small file sends, in the background, for
its directory's next small files (a window that slides as they are read) and for the first small
files of the directory's first subdirectories, with one ranged read per stretch of a pack
(:class:`cas.repo.readahead.ChunksAhead` fetches and holds them; their readers verify what they
take). Nothing here returns bytes: a file not fetched ahead, or whose chunk failed, reads its own.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

from cas.errors import CasError
from cas.format.trees import DIR, FILE, Entry
from cas.ops.browse import TreeSource
from cas.repo.readahead import ChunksAhead
from cas.repo.repository import Repository
from cas.types import BlobLocation

LOCATE_AHEAD = 4096
"""Chunk IDs located in one query when a file of a directory is opened (its own, then its siblings')."""
MAX_LOCATED = 200_000
"""Chunk locations the view remembers for files it has not opened yet."""
SMALL_FILE = 1 << 20
"""Files up to this size are read ahead with their directory's next small files
(:meth:`DirReadAhead.fetch_siblings_ahead`)."""
SIBLINGS_AHEAD_BYTES = 4 << 20
"""The most file bytes one read-ahead of a directory's small files fetches."""
SUBDIRECTORIES_AHEAD = 8
"""Subdirectories whose first small files are fetched ahead when a directory's first file is read."""
SUBDIRECTORY_AHEAD_BYTES = 1 << 20
"""The most file bytes fetched ahead in each of those subdirectories."""
LOCATE_BELOW = 16384
"""Chunk IDs located in the background, at most, in a directory's further subdirectories when its
first file is read (:meth:`DirReadAhead._fetch_below_ahead`)."""
SUBDIRECTORIES_LOCATED = 256
"""Subdirectories whose stored trees are read, at most, to locate their files that way."""
SIBLING_DIRECTORIES = 16
"""Directories whose small files' read-ahead state is kept (the most recently read)."""


class DirReadAhead:
    """The read-ahead of the files of the directories a view reads. ``stored`` gives the stored
    directories by tree ID (the view's cache of them); ``ahead`` holds the chunks fetched. Safe to
    share between threads."""

    def __init__(self, repo: Repository, stored: TreeSource, ahead: ChunksAhead) -> None:
        self.repo = repo
        self._stored = stored
        self._ahead = ahead
        self._lock = threading.Lock()
        self._located: dict[str, BlobLocation] = {}  # chunk ID -> location, for files opened soon
        self._siblings: OrderedDict[str, _Siblings] = OrderedDict()  # directories read ahead, recent ones

    def fetch_siblings_ahead(self, parent: str, entry: Entry) -> None:
        """When a small file is first read: keep the small files after it in its directory (in
        name order, the order ``ls``, ``find`` and shells list them) fetched ahead, in the
        background, with one ranged read per stretch of a pack instead of one per file (a
        directory's files are stored side by side). A file not handed to the read-ahead yet
        starts a batch of up to :data:`SIBLINGS_AHEAD_BYTES` at itself; a file handed to the
        read-ahead before (whose chunks may have been dropped since, or failed: it then reads its
        own) tops the window up with the next batch once less than half of it lies ahead, so the
        reader of the next files does not wait for a whole batch. A file read later takes its
        chunks from there; one not fetched ahead (a chunk that failed verification included)
        reads its own.

        The first read in a directory also starts the first small files of its first
        subdirectories on their way (:meth:`_fetch_below_ahead`): a walk (``find | xargs cat``,
        ``grep -r``, ``cp -r``) enters them next, and finds their files fetched, not a batch to
        wait for in each directory."""
        siblings = self._siblings_of(parent)
        start = siblings.position.get(entry.name)
        if start is None:
            return
        if siblings.fetched_to <= start:  # not handed to the read-ahead yet: a batch from here
            self._fetch_batch(siblings, start, SIBLINGS_AHEAD_BYTES)
        elif (siblings.fetched_to < len(siblings.entries)  # else all handed over already
              and siblings.small_bytes[siblings.fetched_to] - siblings.small_bytes[start + 1] < SIBLINGS_AHEAD_BYTES // 2):
            self._fetch_batch(siblings, siblings.fetched_to, SIBLINGS_AHEAD_BYTES)
        if not siblings.below_started:  # after this directory's own batch: that is needed first
            siblings.below_started = True
            self.repo.background.submit(self._fetch_below_ahead, siblings)

    def _fetch_batch(self, siblings: _Siblings, begin: int, budget: int) -> None:
        """Hand the small files of ``siblings`` from place ``begin`` to the read-ahead, up to
        ``budget`` bytes (those whose chunks are located)."""
        wanted: list[BlobLocation] = []
        total = 0
        end = begin
        for sibling in siblings.entries[begin:]:
            if sibling.type == FILE and 0 < sibling.size <= SMALL_FILE:
                if total + sibling.size > budget:
                    break
                found = [loc for c in sibling.chunks if (loc := self._located.get(c)) is not None]
                if len(found) == len(sibling.chunks):
                    wanted.extend(found)
                    total += sibling.size
            end += 1
        siblings.fetched_to = max(siblings.fetched_to, end)
        cache = self.repo.chunk_cache
        self._ahead.fetch(loc for loc in wanted if cache is None or loc.id not in cache)

    def _fetch_below_ahead(self, siblings: _Siblings) -> None:
        """On a background thread: the first :data:`SUBDIRECTORY_AHEAD_BYTES` of small files of
        each of a directory's first :data:`SUBDIRECTORIES_AHEAD` subdirectories handed to the
        read-ahead (a directory already started is left as it is), and the chunks of every file
        of the further subdirectories located (up to :data:`SUBDIRECTORIES_LOCATED` of them and
        :data:`LOCATE_BELOW` IDs, :data:`LOCATE_AHEAD` a query): a walk entering them then finds
        their stored trees read and their files located,
        not an index query to wait for in each. Errors are left for the reads, which meet them on
        their own."""
        try:
            with self.repo.lookups_on_one_connection():  # a query per subdirectory: no checkout each
                self._prepare_below(siblings)
        except (CasError, OSError):
            pass

    def _prepare_below(self, siblings: _Siblings) -> None:
        """:meth:`_fetch_below_ahead`'s work."""
        subdirectories = [e for e in siblings.entries if e.type == DIR]
        for sub in subdirectories[:SUBDIRECTORIES_AHEAD]:
            below = self._siblings_of(sub.tree)
            if below.fetched_to:
                continue
            self._locate_files(below.entries)
            self._fetch_batch(below, 0, SUBDIRECTORY_AHEAD_BYTES)
        wanted: dict[str, None] = {}
        budget = LOCATE_BELOW
        for sub in subdirectories[SUBDIRECTORIES_AHEAD:SUBDIRECTORIES_LOCATED]:
            for e in self._stored.read_tree(sub.tree):
                if e.type == FILE:
                    wanted.update(dict.fromkeys(c for c in e.chunks if c not in self._located))
            if len(wanted) >= LOCATE_AHEAD or len(wanted) >= budget:
                budget -= len(wanted)
                self._remember_located(self.repo.locate(wanted))
                wanted = {}
                if budget <= 0:
                    return
        if wanted:
            self._remember_located(self.repo.locate(wanted))

    def _locate_files(self, entries: list[Entry]) -> None:
        """Locate the chunks of these files not located yet (up to :data:`LOCATE_AHEAD` IDs)."""
        wanted: dict[str, None] = {}
        for e in entries:
            if e.type == FILE:
                wanted.update(dict.fromkeys(c for c in e.chunks if c not in self._located))
                if len(wanted) >= LOCATE_AHEAD:
                    break
        if wanted:
            self._remember_located(self.repo.locate(wanted))

    def _siblings_of(self, parent: str) -> _Siblings:
        """A stored directory's entries, with each name's place and the small files' bytes before
        each place, and how far its small files have been fetched ahead (a few directories kept)."""
        with self._lock:
            siblings = self._siblings.get(parent)
            if siblings is not None:
                self._siblings.move_to_end(parent)
                return siblings
        entries = self._stored.read_tree(parent)
        small_bytes = [0]
        for e in entries:
            small_bytes.append(small_bytes[-1] + (e.size if e.type == FILE and 0 < e.size <= SMALL_FILE else 0))
        siblings = _Siblings(entries, {e.name: i for i, e in enumerate(entries)}, small_bytes)
        with self._lock:
            siblings = self._siblings.setdefault(parent, siblings)
            while len(self._siblings) > SIBLING_DIRECTORIES:
                self._siblings.popitem(last=False)
        return siblings

    def _remember_located(self, located: dict[str, BlobLocation]) -> None:
        known = self._located
        if len(known) + len(located) > MAX_LOCATED:
            known.clear()
        known.update(located)

    def chunk_locations(self, parent: str, entry: Entry) -> dict[str, BlobLocation]:
        """Where a file's chunks are. The first file opened in a stored directory has the chunks of
        the files beside it located in the same query (up to :data:`LOCATE_AHEAD` IDs), so opening
        each file of a directory in turn costs one index query, not one per file."""
        known = self._located
        found = {c: loc for c in entry.chunks if (loc := known.get(c)) is not None}  # another thread may clear it
        if len(found) == len(entry.chunks) or not (missing := [c for c in entry.chunks if c not in found]):
            return found  # all located already (the common case: located with a sibling)
        if parent:
            wanted = dict.fromkeys(missing)
            for sibling in self._stored.read_tree(parent):
                if len(wanted) >= LOCATE_AHEAD:
                    break
                if sibling.type == FILE:
                    wanted.update(dict.fromkeys(c for c in sibling.chunks if c not in known))
            located = self.repo.locate(wanted)
            self._remember_located(located)
            found.update((c, located[c]) for c in missing if c in located)
            missing = [c for c in missing if c not in found]
        if missing:  # missing from the repository (RangeReader says which)
            found.update(self.repo.locate(missing))
        return found


@dataclass
class _Siblings:
    """A directory's entries as its small files are read ahead (:meth:`DirReadAhead.fetch_siblings_ahead`)."""

    entries: list[Entry]
    position: dict[str, int]
    small_bytes: list[int]
    """Bytes of the small files before each place (``small_bytes[i]``: in ``entries[:i]``)."""
    fetched_to: int = 0
    """Entries before this place have been handed to the read-ahead (or passed over)."""
    below_started: bool = False
    """Whether the first files of the subdirectories have been sent for (:meth:`DirReadAhead._fetch_below_ahead`)."""
