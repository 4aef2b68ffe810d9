"""Cutting a put's payload into upload parts without holding more than a part or so in memory."""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO


def read_up_to(stream: BinaryIO, size: int) -> bytes:
    """Up to ``size`` bytes of ``stream``; fewer only at its end (``read`` may return short counts)."""
    chunks: list[bytes] = []
    remaining = size
    while remaining > 0:
        chunk = stream.read(remaining)
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def read_head(stream: BinaryIO, threshold: int, part_size: int) -> list[bytes]:
    """The start of ``stream``, enough to tell whether it is longer than ``threshold``: blocks of
    at most ``part_size`` bytes, ``threshold + 1`` bytes in all unless the stream ends first."""
    head: list[bytes] = []
    buffered = 0
    while buffered <= threshold:
        block = read_up_to(stream, min(part_size, threshold + 1 - buffered))
        if not block:
            break
        head.append(block)
        buffered += len(block)
    return head


def slices(view: memoryview, part_size: int) -> Iterator[bytes]:
    """Parts of an in-memory payload, copied one part at a time."""
    for start in range(0, len(view), part_size):
        yield bytes(view[start : start + part_size])


def stream_parts(head: list[bytes], stream: BinaryIO, part_size: int) -> Iterator[bytes]:
    """Parts of exactly ``part_size`` bytes (the last may be shorter): ``head`` then the stream.

    ``head`` blocks are each at most ``part_size``; they are released as they are consumed, so
    memory stays near one part beyond what was already buffered.
    """
    pending = bytearray()
    while head:
        pending += head.pop(0)
        if len(pending) >= part_size:
            yield bytes(pending[:part_size])
            del pending[:part_size]
    while True:
        block = read_up_to(stream, part_size - len(pending))
        pending += block
        if len(pending) >= part_size or (not block and pending):
            yield bytes(pending)
            pending = bytearray()
        if not block:
            return


__all__ = ["read_head", "read_up_to", "slices", "stream_parts"]
