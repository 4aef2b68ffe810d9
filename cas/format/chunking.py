"""Content-defined chunking with FastCDC (pyfastcdc's Cython implementation).

A file smaller than the minimum chunk size is one chunk without running CDC. Larger files are read
as a stream through a bounded buffer, so memory does not grow with file size. Boundaries depend
only on content, so an edit moves at most the chunks around it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO

from pyfastcdc import FastCDC

from cas.format.config import RepoConfig

_READ_BLOCK = 8 * 1024 * 1024


class Chunker:
    """Cuts byte streams into chunks; one instance per thread (FastCDC objects are not shareable)."""

    def __init__(self, config: RepoConfig) -> None:
        self.min_size = config.chunk_min
        # pyfastcdc's mean chunk is avg_size + min_size (cut-point skipping), so subtract the minimum
        # to make the configured average the real one.
        self._cdc = FastCDC(
            max(256, config.chunk_avg - config.chunk_min),
            min_size=config.chunk_min,
            max_size=config.chunk_max,
        )

    def chunks(self, stream: BinaryIO, size_hint: int) -> Iterator[memoryview]:
        """Yield the chunks of ``stream`` in order, each a read-only view valid indefinitely.

        The stream is read in blocks of :data:`_READ_BLOCK`; the last chunk of a block is carried
        into the next one unless the stream ended, so boundaries are exactly those of cutting the
        whole content at once (a block is always larger than the maximum chunk).
        """
        if size_hint < self.min_size:
            data = stream.read(self.min_size)
            rest = stream.read(1)
            if not rest:
                yield memoryview(data)
                return
            carry = data + rest
        else:
            carry = b""
        # Read what the file is said to hold (+1 to see its end) rather than a whole block: a short
        # bytes object shrunk from 8 MiB fragments the heap, once per file.
        want = min(_READ_BLOCK, max(size_hint, 0) + 1)
        while True:
            block = stream.read(want)
            want = _READ_BLOCK
            data = carry + block if carry else block
            at_end = not block
            if not data:
                return
            if at_end or len(data) < self.min_size:
                if at_end:
                    yield from self.chunk_buffer(data)
                    return
            view = memoryview(data)
            pieces = list(self._cdc.cut_buf(view))
            for chunk in pieces[:-1]:
                yield view[chunk.offset : chunk.offset + chunk.length]
            last = pieces[-1]
            carry = bytes(view[last.offset :])

    def chunk_buffer(self, data: bytes | memoryview) -> Iterator[memoryview]:
        """Chunks of an in-memory buffer, as views into it (no copy)."""
        if len(data) < self.min_size:
            yield memoryview(data)
            return
        view = memoryview(data)
        for chunk in self._cdc.cut_buf(view):
            yield view[chunk.offset : chunk.offset + chunk.length]
