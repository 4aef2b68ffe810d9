"""Blob encoding: zstd, or raw when compression would save less than :data:`MIN_SAVING` of the bytes.

Raw storage of nearly incompressible blobs is a trade: model weights (float tensors) compress by
only 5-10% with zstd, whose entropy coding then costs about 1 ms per MiB on every read (ten times
the BLAKE3 check), so such chunks are stored as they are: every restore, mount read and range read
of them skips decompression, for a few percent more stored bytes.

zstd compressor and decompressor objects are not safe to share between threads, so each thread
keeps its own. Decompression is bounded by the recorded raw length, so a hostile blob cannot make
cas allocate more than it claims.
"""

from __future__ import annotations

import threading

import zstandard

from cas.errors import IntegrityError
from cas.types import Codec

CODECS = tuple(Codec)

_local = threading.local()


def _compressor(level: int) -> zstandard.ZstdCompressor:
    cache = getattr(_local, "compressors", None)
    if cache is None:
        cache = _local.compressors = {}
    comp = cache.get(level)
    if comp is None:
        comp = cache[level] = zstandard.ZstdCompressor(level=level)
    return comp


def _decompressor() -> zstandard.ZstdDecompressor:
    dec = getattr(_local, "decompressor", None)
    if dec is None:
        dec = _local.decompressor = zstandard.ZstdDecompressor()
    return dec


MIN_SAVING = 1 / 8
"""The least fraction of a blob's bytes zstd must save for the blob to be stored compressed."""


SAMPLED_FROM = 64 * 1024
"""Blobs this large are tried on a sample first (:func:`encode`)."""
_SAMPLE = 4 * 1024


def encode(data: bytes | memoryview, level: int) -> tuple[int, bytes]:
    """Return ``(codec, payload)``; raw when zstd would save less than :data:`MIN_SAVING`.

    A blob of :data:`SAMPLED_FROM` bytes or more is first tried on a sample (4 KiB from its
    start, middle and end): if zstd saves less than :data:`MIN_SAVING` on those, the blob is stored
    raw without compressing the rest (model weights cost about 1.7 ms per MiB to compress only to
    be stored raw). A blob that compresses unevenly may then be stored raw that would have saved a
    little more: bytes, never correctness."""
    compressor = _compressor(level)
    size = len(data)
    if size >= SAMPLED_FROM:
        middle = size // 2
        sample = b"".join((data[:_SAMPLE], data[middle : middle + _SAMPLE], data[size - _SAMPLE :]))
        if len(compressor.compress(sample)) > len(sample) * (1 - MIN_SAVING):
            return Codec.RAW, bytes(data)
    packed = compressor.compress(data)
    if len(packed) <= len(data) * (1 - MIN_SAVING):
        return Codec.ZSTD, packed
    return Codec.RAW, bytes(data)


def encode_many(blobs: list[bytes | memoryview], level: int) -> list[tuple[int, bytes]]:
    """:func:`encode` of each of ``blobs``, in order. Those below :data:`SAMPLED_FROM` are
    compressed by one call that leaves the GIL for all of them (zstd's own batch), not one call
    each: a group of small files' chunks would take and give back the GIL a thousand times, and
    every thread that waits for it (the snapshot's walk) waits each time."""
    small = [data for data in blobs if 0 < len(data) < SAMPLED_FROM]  # zstd's batch refuses empty ones
    packed = iter(_compressor(level).multi_compress_to_buffer(small) if small else ())
    out = []
    for data in blobs:
        if not 0 < len(data) < SAMPLED_FROM:
            out.append(encode(data, level))
            continue
        payload = next(packed).tobytes()
        if len(payload) <= len(data) * (1 - MIN_SAVING):
            out.append((Codec.ZSTD, payload))
        else:
            out.append((Codec.RAW, bytes(data)))
    return out


def decode(codec: int, payload: bytes | memoryview, raw_length: int) -> bytes | memoryview:
    """A blob's bytes from its payload: ``payload`` itself when stored raw (a view stays a view)."""
    if codec == Codec.RAW:
        data = payload
    elif codec == Codec.ZSTD:
        try:
            # The frame header's size wins over max_output_size, so check it before allocating.
            claimed = zstandard.frame_content_size(payload)
            if claimed > raw_length:
                raise IntegrityError(f"compressed blob claims {claimed} bytes, expected {raw_length}")
            data = _decompressor().decompress(payload, max_output_size=raw_length)
        except zstandard.ZstdError as exc:
            raise IntegrityError(f"corrupt compressed blob: {exc}") from exc
    else:
        raise IntegrityError(f"unknown codec {codec}")
    if len(data) != raw_length:
        raise IntegrityError(f"blob decodes to {len(data)} bytes, expected {raw_length}")
    return data
