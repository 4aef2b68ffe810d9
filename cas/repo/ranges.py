"""Reading a byte range of a stored file: only the chunks that cover it are fetched, each verified.

A file entry lists its chunk IDs in order; their sizes (the ``raw_length`` of their locations, from
the index or the pack trailers) give each chunk's offset in the file. The sizes must add up to the
size the tree records, and every chunk read must have the size its location claims, so an offset
table that lies is caught before or when it is used: a read returns the file's true bytes or raises
:class:`~cas.errors.ReadError` naming the file, never other bytes.

Reads that continue where the previous one ended are taken as sequential, and the chunks after them
are fetched ahead (read-ahead: as many bytes as the sequential run has read so far, from
:data:`MIN_READAHEAD` up to :data:`MAX_READAHEAD`, so a short run fetches little it will not use), on
a background thread, started before the read fetches the chunks it needs itself; a read elsewhere
fetches only its own chunks. Chunks fetched ahead for files not opened yet
(:class:`~cas.repo.readahead.ChunksAhead`) are taken before fetching. Chunks go through the
repository's chunk cache like any other read; the reader keeps the chunks it fetched last in memory,
bounded by its window. A chunk stored raw is kept as a view of the range read that fetched it (not a
copy; from a local repository, of the pack file mapped into memory), so an evicted chunk's bytes stay in memory while a chunk read with it is kept: beyond the
window, at most the range reads at its two ends (a read-ahead's range read is at most
:data:`MAX_READAHEAD` plus a chunk).

:meth:`RangeReader.read_into` copies a read into a caller's buffer (the mount's reply to the kernel)
straight from the chunks, with no copy in between.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace

from cas.errors import CasError, IntegrityError, ReadError
from cas.format.trees import FILE, Entry
from cas.repo.readahead import ChunksAhead
from cas.repo.reader import chunk_sources
from cas.repo.repository import Repository
from cas.types import BlobLocation

MIN_READAHEAD = 1 << 20
MAX_READAHEAD = 16 << 20
PARALLEL_VERIFY_BYTES = 4 << 20
"""A read needing chunks of more bytes than this has them verified on several threads."""
WINDOW_BYTES = 48 << 20
"""The most chunk bytes one reader keeps in memory (read-ahead included)."""


class RangeReader:
    """Random access to one stored file. Safe to share between threads (reads are serialised)."""

    def __init__(self, repo: Repository, entry: Entry, path: str,
                 locations: Mapping[str, BlobLocation] | None = None, ahead: ChunksAhead | None = None,
                 on_first_fetch: Callable[[], None] | None = None) -> None:
        """``locations``: where the chunks are, when the caller has looked them up already (the
        sizes are checked all the same); by default they are asked of the repository. ``ahead``:
        chunks fetched (and verified) ahead of this reader, taken from there before fetching;
        ``on_first_fetch`` is called when this reader first needs chunks (to fetch ahead there)."""
        if entry.type != FILE:
            raise IsADirectoryError(f"{path} is not a regular file")
        self.repo = repo
        self.entry = entry
        self.path = path
        self.size = entry.size
        self._fetched_ahead = ahead
        self._on_first_fetch = on_first_fetch
        if locations is None:
            self._locations = repo.locate(entry.chunks) if entry.chunks else {}
        else:
            self._locations = {c: locations[c] for c in entry.chunks if c in locations}
        self._starts = _chunk_starts(entry, self._locations, path)
        self._kept: dict[int, bytes | memoryview] = {}  # chunk index -> verified bytes
        self._kept_bytes = 0
        self._next_sequential = 0  # where a sequential read would start
        self._run_start = 0  # where the current run of sequential reads started
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)  # a chunk being verified is kept, or failed
        self._coming: set[int] = set()  # chunks read from the backend, being verified on other threads
        self._pinned: list[tuple[int, int]] = []  # chunk ranges of reads waiting for them: never evicted
        self._reading_ahead = False  # a background read-ahead is reading its runs (one at a time)

    def read(self, offset: int, length: int) -> bytes:
        """Up to ``length`` bytes from ``offset`` (fewer only at the end of the file)."""
        parts = self._pieces(offset, length)
        return bytes(parts[0]) if len(parts) == 1 else b"".join(parts)

    def read_into(self, offset: int, target: memoryview) -> int:
        """:meth:`read` of ``len(target)`` bytes into ``target`` (a writable buffer of bytes), with
        no copy made on the way; how many bytes were read."""
        done = 0
        for part in self._pieces(offset, len(target)):
            target[done : done + len(part)] = part
            done += len(part)
        return done

    def _pieces(self, offset: int, length: int) -> list[bytes | memoryview]:
        """The bytes of :meth:`read`, as slices of the chunks that hold them."""
        if offset < 0 or length < 0:
            raise ValueError("offset and length must not be negative")
        end = min(offset + length, self.size)
        if offset >= end:
            return [b""]
        first = bisect.bisect_right(self._starts, offset) - 1
        last = bisect.bisect_left(self._starts, end) - 1  # the chunk holding byte end - 1
        with self._lock:
            self._await(first, last)
            return self._read_locked(offset, end, first, last)

    def _await(self, first: int, last: int) -> None:
        """Wait (lock held, released meanwhile) until none of chunks ``first..last`` is on its way."""
        if not self._coming.isdisjoint(range(first, last + 1)):
            self._pinned.append((first, last))
            try:
                while not self._coming.isdisjoint(range(first, last + 1)):
                    self._arrived.wait()
            finally:
                self._pinned.remove((first, last))

    def _read_locked(self, offset: int, end: int, first: int, last: int) -> list[bytes | memoryview]:
        have = all(i in self._kept for i in range(first, last + 1))
        # Streaming: the read continues the last one, or starts in or right after chunks held from
        # earlier reads (a kernel's concurrent read-ahead requests arrive out of order).
        sequential = offset == self._next_sequential or first in self._kept or first - 1 in self._kept
        if not sequential:
            self._run_start = offset
            if not have:
                self._fetch(first, last, last)
        else:
            # The read-ahead window grows with the stream: as much as has been read in this run so
            # far, within its bounds (a short sequential read fetches little past its end).
            window = min(MAX_READAHEAD, max(MIN_READAHEAD, end - self._run_start))
            if not have:
                # Streaming but missing chunks: fetch them and the next window in the same range reads.
                self._fetch(first, last, self._chunk_at(end + window))
            elif not self._reading_ahead and self._ahead_of(last) < window // 2:
                # Streaming and running low: fetch the next window in the background (a whole
                # window, not one chunk per read as its far edge moves), so this read returns now.
                todo = [i for i in range(last + 1, self._chunk_at(end + window) + 1)
                        if i not in self._kept and i not in self._coming]
                if todo:
                    self._read_ahead(todo)
        self._next_sequential = end
        self._evict(first, last)
        # Views of the chunks kept (each view keeps its chunk's bytes alive once evicted).
        parts: list[bytes | memoryview] = []
        for i in range(first, last + 1):
            view = memoryview(self._kept[i])
            base = self._starts[i]
            parts.append(view[max(0, offset - base) : min(len(view), end - base)])
        return parts

    def _chunk_at(self, offset: int) -> int:
        """The index of the chunk holding byte ``offset - 1`` (the last chunk past the end)."""
        return bisect.bisect_left(self._starts, min(self.size, offset)) - 1

    def _fetch(self, first: int, last: int, fetch_last: int) -> None:
        """Make chunks ``first..last`` present in memory, with ``last+1..fetch_last`` as read-ahead
        (lock held). The read-ahead is started first, on a background thread (unless one is under
        way), so this read does not wait for it; then one range read per run of the chunks this
        read needs, on this thread, which verifies them. When they hold more than
        :data:`PARALLEL_VERIFY_BYTES`, the chunks after the first are verified on the background
        threads while this one verifies the first (decompression and hashing release the GIL: a
        large read takes the time of its longest chunk, not the sum; a small one does not queue
        behind the background threads' other work). A read-ahead chunk that fails is left for its
        own read."""
        self._note_first_fetch()
        needed = [i for i in range(first, last + 1) if i not in self._kept and i not in self._coming]
        ahead = [i for i in range(last + 1, fetch_last + 1) if i not in self._kept and i not in self._coming]
        if ahead and not self._reading_ahead:
            self._read_ahead(ahead)
        try:
            sources = list(zip(needed, self._sources(needed)))
        except IntegrityError as exc:
            raise ReadError(str(exc)) from None
        inline = sources
        if sum(self._locations[self.entry.chunks[i]].raw_length for i in needed) > PARALLEL_VERIFY_BYTES:
            inline = sources[:1]
            for i, verified in sources[1:]:
                self._coming.add(i)
                self.repo.background.submit(self._verify_ahead, i, verified)
        for i, verified in inline:
            try:
                self._keep(i, self._checked(i, verified()))
            except IntegrityError as exc:
                raise ReadError(str(exc)) from None
        self._await(first, last)
        for i in range(first, last + 1):
            if i not in self._kept:  # failed on another thread: again here, for its error
                try:
                    (verified,) = self._sources([i])
                    self._keep(i, self._checked(i, verified()))
                except IntegrityError as exc:
                    raise ReadError(str(exc)) from None

    def _read_ahead(self, indexes: list[int]) -> None:
        """Start fetching chunks ``indexes`` in the background (lock held; no read-ahead under way)."""
        self._note_first_fetch()
        self._coming.update(indexes)
        self._reading_ahead = True
        self.repo.background.submit(self._fetch_ahead, indexes)

    def _note_first_fetch(self) -> None:
        """Call ``on_first_fetch`` if this is the reader's first fetch (lock held)."""
        if self._on_first_fetch is not None:
            first_fetch, self._on_first_fetch = self._on_first_fetch, None
            first_fetch()

    def _fetch_ahead(self, indexes: list[int]) -> None:
        """Read-ahead in the background (``indexes`` are marked coming): their runs are read and
        each chunk verified here, in order, each kept as soon as it is (a read waiting for the
        first does not wait for the rest, nor for other work queued on the background threads).
        A failure is left for the read that needs the chunk, which fetches it again and reports it."""
        done: set[int] = set()
        try:
            for i, verified in zip(indexes, self._sources(indexes, wait=False)):
                self._verify_ahead(i, verified)
                done.add(i)
        except (CasError, OSError):
            pass
        finally:
            with self._lock:
                self._reading_ahead = False
                if len(done) < len(indexes):
                    self._coming.difference_update(i for i in indexes if i not in done)
                    self._arrived.notify_all()

    def _verify_ahead(self, i: int, verified: Callable[[], bytes | memoryview]) -> None:
        """Verify chunk ``i`` (marked coming) off the reading thread and keep it; a failure leaves
        it for the read that needs it."""
        try:
            data: bytes | memoryview | None = self._checked(i, verified())
        except (CasError, OSError):
            data = None
        with self._lock:
            self._coming.discard(i)
            if data is not None:
                self._keep(i, data)
                position = self._chunk_at(self._next_sequential + 1)
                self._evict(position, position)
            self._arrived.notify_all()

    def _sources(self, indexes: list[int], *, wait: bool = True) -> Iterator[Callable[[], bytes | memoryview]]:
        """For chunks by index, in order, calls giving each one's verified bytes
        (:func:`~cas.repo.reader.chunk_sources`); ``wait``: for those the view's read-ahead is
        fetching (false on a background thread, which fetches them itself instead)."""
        if not indexes:
            return iter(())
        part = replace(self.entry, chunks=tuple(self.entry.chunks[i] for i in indexes))
        ahead = self._fetched_ahead.take(part.chunks, wait=wait) if self._fetched_ahead is not None else None
        return chunk_sources(self.repo, part, self._locations, self.path, ahead, views=True)

    def _checked(self, i: int, data: bytes | memoryview) -> bytes | memoryview:
        """Chunk ``i``'s verified bytes, checked against the size its location records."""
        if len(data) != self._locations[self.entry.chunks[i]].raw_length:
            raise IntegrityError(f"{self.path}: chunk {self.entry.chunks[i][:16]} is not the size "
                                 "its location records")
        return data

    def _keep(self, i: int, data: bytes | memoryview) -> None:
        if i not in self._kept:
            self._kept[i] = data
            self._kept_bytes += len(data)

    def _evict(self, first: int, last: int) -> None:
        """Back within :data:`WINDOW_BYTES`: chunks behind ``first..last`` go first, then read-ahead
        from the far end; never ``first..last`` themselves."""
        while self._kept_bytes > WINDOW_BYTES:
            spare = [i for i in self._kept if not first <= i <= last
                     and not any(a <= i <= b for a, b in self._pinned)]
            if not spare:
                break
            behind = [i for i in spare if i < first]
            self._forget(min(behind) if behind else max(spare))

    def _ahead_of(self, last: int) -> int:
        """Bytes held in memory, or on their way, for the chunks right after ``last``."""
        total, i = 0, last + 1
        while i in self._kept or i in self._coming:
            total += self._locations[self.entry.chunks[i]].raw_length
            i += 1
        return total

    def _forget(self, i: int) -> None:
        self._kept_bytes -= len(self._kept.pop(i))


def _chunk_starts(entry: Entry, locations: dict[str, BlobLocation], path: str) -> list[int]:
    """The offset of each chunk in the file, checked against the size the tree records."""
    starts: list[int] = []
    offset = 0
    for chunk_id in entry.chunks:
        loc = locations.get(chunk_id)
        if loc is None:
            raise ReadError(f"{path}: chunk {chunk_id[:16]} is missing from the repository")
        starts.append(offset)
        offset += loc.raw_length
    if offset != entry.size:
        raise ReadError(f"{path}: its chunks hold {offset} bytes, the tree records {entry.size}")
    return starts
