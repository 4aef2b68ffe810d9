"""Reading a byte range of a stored file: only the chunks that cover it are fetched, each verified.

A file entry lists its chunk IDs in order; their sizes (the ``raw_length`` of their locations, from
the index or the pack trailers) give each chunk's offset in the file. The sizes must add up to the
size the tree records, and every chunk read must have the size its location claims, so an offset
table that lies is caught before or when it is used: a read returns the file's true bytes or raises
:class:`~cas.errors.ReadError` naming the file, never other bytes.

Reads that continue where the previous one ended are taken as sequential, and the chunks after them
are fetched in the same range read (read-ahead, doubling up to :data:`MAX_READAHEAD`); a read
elsewhere fetches only its own chunks. Chunks go through the repository's chunk cache like any
other read; the reader keeps the chunks it fetched last in memory, bounded by its window.
"""

from __future__ import annotations

import bisect
import threading
from dataclasses import replace

from cas.errors import IntegrityError, ReadError
from cas.format.trees import FILE, Entry
from cas.repo.reader import file_chunks
from cas.repo.repository import Repository
from cas.types import BlobLocation

MIN_READAHEAD = 1 << 20
MAX_READAHEAD = 16 << 20
WINDOW_BYTES = 48 << 20
"""The most chunk bytes one reader keeps in memory (read-ahead included)."""


class RangeReader:
    """Random access to one stored file. Safe to share between threads (reads are serialised)."""

    def __init__(self, repo: Repository, entry: Entry, path: str) -> None:
        if entry.type != FILE:
            raise IsADirectoryError(f"{path} is not a regular file")
        self.repo = repo
        self.entry = entry
        self.path = path
        self.size = entry.size
        self._locations = repo.locate(entry.chunks) if entry.chunks else {}
        self._starts = _chunk_starts(entry, self._locations, path)
        self._kept: dict[int, bytes] = {}  # chunk index -> verified bytes
        self._kept_bytes = 0
        self._next_sequential = 0  # where a sequential read would start
        self._readahead = MIN_READAHEAD
        self._lock = threading.Lock()

    def read(self, offset: int, length: int) -> bytes:
        """Up to ``length`` bytes from ``offset`` (fewer only at the end of the file)."""
        if offset < 0 or length < 0:
            raise ValueError("offset and length must not be negative")
        end = min(offset + length, self.size)
        if offset >= end:
            return b""
        with self._lock:
            first = bisect.bisect_right(self._starts, offset) - 1
            last = bisect.bisect_left(self._starts, end) - 1  # the chunk holding byte end - 1
            have = all(i in self._kept for i in range(first, last + 1))
            # Streaming: the read continues the last one, or starts in or right after chunks held
            # from earlier reads (a kernel's concurrent read-ahead requests arrive out of order).
            sequential = offset == self._next_sequential or first in self._kept or first - 1 in self._kept
            if not sequential:
                self._readahead = MIN_READAHEAD
                if not have:
                    self._fetch(first, last, last)
            elif not have or self._kept_after(last) < self._readahead // 2:
                # Sequential and running out of read-ahead: fetch the next window in one go (not
                # one chunk per read as the window's far edge moves), and widen it next time.
                want_end = min(self.size, end + self._readahead)
                self._readahead = min(MAX_READAHEAD, self._readahead * 2)
                self._fetch(first, last, bisect.bisect_left(self._starts, want_end) - 1)
            self._next_sequential = end
            if first == last:  # the common case: one slice of one chunk, one copy
                base = self._starts[first]
                return self._kept[first][offset - base : end - base]
            parts = []
            for i in range(first, last + 1):
                view = memoryview(self._kept[i])
                base = self._starts[i]
                parts.append(view[max(0, offset - base) : min(len(view), end - base)])
            return b"".join(parts)

    def _fetch(self, first: int, last: int, fetch_last: int) -> None:
        """Make chunks ``first..last`` present in memory, with ``last+1..fetch_last`` as read-ahead
        (fetched in the same range reads; a read-ahead chunk that fails is left for its own read),
        then bring what is held back within :data:`WINDOW_BYTES`."""
        missing = [i for i in range(first, fetch_last + 1) if i not in self._kept]
        if missing:
            part = replace(self.entry, chunks=tuple(self.entry.chunks[i] for i in missing))
            try:
                for i, data in zip(missing, file_chunks(self.repo, part, self._locations, self.path)):
                    if len(data) != self._locations[self.entry.chunks[i]].raw_length:
                        raise IntegrityError(f"{self.path}: chunk {self.entry.chunks[i][:16]} is not the size "
                                             "its location records")
                    self._kept[i] = data
                    self._kept_bytes += len(data)
            except IntegrityError as exc:
                if any(i not in self._kept for i in range(first, last + 1)):
                    raise ReadError(str(exc)) from None
        # Over the window: drop chunks behind this read first, then read-ahead from its far end;
        # never the chunks this read returns.
        while self._kept_bytes > WINDOW_BYTES:
            spare = [i for i in self._kept if not first <= i <= last]
            if not spare:
                break
            behind = [i for i in spare if i < first]
            self._forget(min(behind) if behind else max(spare))

    def _kept_after(self, last: int) -> int:
        """Bytes held in memory for the chunks right after ``last``."""
        total, i = 0, last + 1
        while i in self._kept:
            total += len(self._kept[i])
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
