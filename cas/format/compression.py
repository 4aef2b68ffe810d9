"""Blob encoding: zstd, or raw when compression does not shrink the bytes.

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


def encode(data: bytes | memoryview, level: int) -> tuple[int, bytes]:
    """Return ``(codec, payload)``; raw when zstd would not make the data smaller."""
    packed = _compressor(level).compress(data)
    if len(packed) < len(data):
        return Codec.ZSTD, packed
    return Codec.RAW, bytes(data)


def decode(codec: int, payload: bytes, raw_length: int) -> bytes:
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
