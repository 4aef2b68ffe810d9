"""Cutting files into chunks: FastCDC (pyfastcdc's Cython implementation), at archive members.

A file smaller than the minimum chunk size is one chunk without running CDC. Larger files are read
as a stream through a bounded buffer, so memory does not grow with file size. Boundaries depend
only on content, so an edit moves at most the chunks around it.

Under the ``fastcdc-archives-1`` chunker (:class:`~cas.format.config.ChunkerName`), a file that
:func:`~cas.format.archives.read_layout` recognises as a zip, an uncompressed tar or a safetensors
file is first cut at its members (docs/FORMAT.md, Chunks, gives the rules):

* the archive's directory or header, and every member of at least :data:`SMALL_MEMBER` bytes, is a
  piece of its own, cut further by FastCDC when it is longer than the maximum chunk;
* runs of smaller members are grouped: a group ends after a member whose name hashes to a group end
  (one name in four) once it holds :data:`SMALL_MEMBER` bytes, and before it would pass
  :data:`GROUP_MAX` bytes. Group ends depend on the names near them, not on a running total, so
  after an edit the groups fall back into step within a few groups (a running total would shift
  every group after the edit).

An edited member therefore changes only its own chunks (or its group and a few next to it) and the
directory's, wherever it lies in the archive. Anything else, and any archive that does not parse cleanly, is cut
by plain FastCDC, exactly as under the ``fastcdc`` chunker.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import BinaryIO

from pyfastcdc import FastCDC

from cas.format.archives import DIRECTORY, Member, read_layout
from cas.format.config import ChunkerName, RepoConfig

_READ_BLOCK = 8 * 1024 * 1024

SMALL_MEMBER = 4 * 1024
"""Members below this share a chunk with their neighbours. Each chunk costs about 440 bytes
wherever it is recorded (measured: 320 in a SQLite index, 50 in its pack's trailer, 67 for its ID in
the file's tree node), so a chunk per 300-byte ``__init__.py`` would cost more than the file; from
4 KiB on it is about 10%."""
GROUP_MAX = 16 * 1024
"""A group of small members stops before passing this. An edit to a small member re-stores its
group and, until the group ends fall back into step, the next few (measured: 1 to 3 groups, 4-13 KiB
beside the member), a fraction of a typical project zip's directory, not megabytes."""
_GROUP_END_MASK = 3
"""A small member whose name tag has these bits clear may end its group: one name in four."""


class Chunker:
    """Cuts byte streams into chunks; one instance per thread (FastCDC objects are not shareable)."""

    def __init__(self, config: RepoConfig, chunker: ChunkerName | str | None = None) -> None:
        self.name = ChunkerName(chunker or config.chunker)
        self.min_size = config.chunk_min
        self.max_size = config.chunk_max
        self._small = min(SMALL_MEMBER, config.chunk_max // 4)
        self._group_max = min(GROUP_MAX, config.chunk_max)
        # pyfastcdc's mean chunk is avg_size + min_size (cut-point skipping), so subtract the minimum
        # to make the configured average the real one.
        self._cdc = FastCDC(
            max(256, config.chunk_avg - config.chunk_min),
            min_size=config.chunk_min,
            max_size=config.chunk_max,
        )

    def chunks(self, stream: BinaryIO, size_hint: int) -> Iterator[memoryview]:
        """Yield the non-empty chunks of ``stream`` in order, each a read-only view valid until the
        next chunk is asked for (the buffer it views is then read into again: copy it to keep it).

        ``size_hint`` is the size the file had when it was stat'ed; the chunks are those of what is
        actually read, whatever its length. Under ``fastcdc-archives-1`` a seekable stream of at
        least the minimum chunk size is probed for an archive's layout first (headers only, then
        the stream is returned to where it was); a stream that cannot seek is cut plainly.
        """
        if self.name is ChunkerName.ARCHIVES and size_hint >= self.min_size and _seekable(stream):
            layout = read_layout(stream, size_hint)
            if layout is not None:
                yield from self._cut_members(stream, layout)
                return
        yield from self._cut_plain(stream, size_hint)

    def chunk_buffer(self, data: bytes | memoryview) -> Iterator[memoryview]:
        """Plain FastCDC chunks of an in-memory buffer, as views into it (no copy)."""
        if len(data) < self.min_size:
            yield memoryview(data)
            return
        view = memoryview(data)
        for chunk in self._cdc.cut_buf(view):
            yield view[chunk.offset : chunk.offset + chunk.length]

    # -- plain FastCDC --------------------------------------------------------------------------------

    def _cut_plain(self, stream: BinaryIO, size_hint: int) -> Iterator[memoryview]:
        """FastCDC over the rest of ``stream``.

        The stream is read in blocks of :data:`_READ_BLOCK`; the last chunk of a block is carried
        into the next one unless the stream ended, so boundaries are exactly those of cutting the
        whole content at once (a block is always larger than the maximum chunk).
        """
        if size_hint < self.min_size:
            data = stream.read(self.min_size)
            rest = stream.read(1)
            if not rest:
                if data:
                    yield memoryview(data)
                return
            carry = data + rest
        else:
            carry = b""
        # Read what the file is said to hold (+1 to see its end) rather than a whole block: a short
        # bytes object shrunk from 8 MiB fragments the heap, once per file.
        want = min(_READ_BLOCK, max(size_hint, 0) + 1)
        blocks = _Blocks(stream, self.max_size)
        while True:
            data, at_end = blocks.read(carry, want)
            want = _READ_BLOCK
            if not data:
                return
            if at_end:
                yield from self.chunk_buffer(data)
                return
            if len(data) < self.min_size:
                carry = bytes(data)
                continue
            view = memoryview(data)
            pieces = list(self._cdc.cut_buf(view))
            for chunk in pieces[:-1]:
                yield view[chunk.offset : chunk.offset + chunk.length]
            last = pieces[-1]
            carry = bytes(view[last.offset :])

    # -- archives -------------------------------------------------------------------------------------

    def _cut_members(self, stream: BinaryIO, layout: list[Member]) -> Iterator[memoryview]:
        """Chunks of an archive laid out as ``layout`` (read just before: the file may since have
        changed, which only makes the cuts poorer; every byte read is still in exactly one chunk)."""
        for start, end in self._pieces(layout):
            length = end - start
            if length <= self.max_size:
                data = _read_up_to(stream, length)
                if data:
                    yield memoryview(data)
                if len(data) < length:
                    return  # the file shrank
            else:
                part = _Limited(stream, length)
                yield from self._cut_plain(part, length)
                if part.remaining:
                    return
        yield from self._cut_plain(stream, 0)  # what the file grew by since its layout was read

    def _pieces(self, layout: list[Member]) -> Iterator[tuple[int, int]]:
        """``(start, end)`` of each piece: a member or directory alone, or a group of small members."""
        group_at = -1
        for m in layout:
            if m.tag == DIRECTORY or m.end - m.start >= self._small:
                if group_at >= 0:
                    yield group_at, m.start
                    group_at = -1
                yield m.start, m.end
                continue
            if group_at >= 0 and m.end - group_at > self._group_max:
                yield group_at, m.start
                group_at = -1
            if group_at < 0:
                group_at = m.start
            if m.end - group_at >= self._small and not m.tag & _GROUP_END_MASK:
                yield group_at, m.end
                group_at = -1
        if group_at >= 0:
            yield group_at, layout[-1].end


class _Limited:
    """The next ``remaining`` bytes of a stream, as a stream."""

    def __init__(self, stream: BinaryIO, remaining: int) -> None:
        self._stream = stream
        self.remaining = remaining

    def read(self, n: int) -> bytes:
        data = self._stream.read(min(n, self.remaining))
        self.remaining -= len(data)
        return data


def _read_up_to(stream: BinaryIO, n: int) -> bytes:
    """``n`` bytes, or fewer only at the end of the stream."""
    data = stream.read(n)
    if len(data) == n or not data:
        return data
    parts = [data]
    got = len(data)
    while got < n:
        more = stream.read(n - got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


_READS_INTO = (io.FileIO, io.BufferedReader, io.BytesIO)
"""Streams read into a buffer given (any other stream is read with ``read``)."""


class _Blocks:
    """The blocks of one stream, each after the carry of the one before.

    A file is read straight into one buffer, reused from block to block: no block is allocated,
    faulted in and copied again to be joined to its carry, and a file's reading holds one block's
    memory however large the file. So a chunk of a file is valid only until the next one is asked
    for (see :meth:`Chunker.chunks`). Other streams are read with ``read`` and joined.
    """

    def __init__(self, stream: BinaryIO, max_carry: int) -> None:
        self._stream = stream
        self._into = isinstance(stream, _READS_INTO)
        self._max_carry = max_carry
        self._buffer: bytearray | None = None

    def read(self, carry: bytes, want: int) -> tuple[bytes | memoryview, bool]:
        """``carry`` followed by one read of up to ``want`` bytes, and whether the read found the end."""
        if not self._into:
            block = self._stream.read(want)
            return (carry + block if carry else block), not block
        need = len(carry) + want
        if self._buffer is None or len(self._buffer) < need:
            # Sized to a small file, or else once for any block and its carry.
            self._buffer = bytearray(need if want < _READ_BLOCK else _READ_BLOCK + max(len(carry), self._max_carry))
        view = memoryview(self._buffer)
        view[: len(carry)] = carry
        got = self._stream.readinto(view[len(carry) : need]) or 0  # type: ignore[attr-defined]
        return view[: len(carry) + got].toreadonly(), not got


def _seekable(stream: BinaryIO) -> bool:
    try:
        return bool(stream.seekable())
    except (AttributeError, OSError, ValueError):
        return False
