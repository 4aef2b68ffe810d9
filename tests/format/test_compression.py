"""Blob encoding: what is stored compressed and what raw, and that either decodes to the bytes."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from cas.format.compression import MIN_SAVING, SAMPLED_FROM, decode, encode, encode_many
from cas.types import Codec


def _saving(fraction: float, size: int = 1 << 20) -> bytes:
    """Random bytes with about ``fraction`` of them in one run of zeros (what zstd can save)."""
    rng = random.Random(size)
    zeros = int(size * fraction)
    return rng.randbytes(size - zeros) + bytes(zeros)


def test_blobs_zstd_saves_little_on_are_stored_raw() -> None:
    for fraction in (0.0, 0.03, MIN_SAVING * 0.6):
        data = _saving(fraction)
        codec, payload = encode(data, 3)
        assert (codec, payload) == (Codec.RAW, data), fraction


def test_blobs_zstd_saves_enough_on_are_stored_compressed() -> None:
    for data in (_saving(MIN_SAVING * 1.5), _saving(0.5), b"a line of text\n" * 5000):
        codec, payload = encode(data, 3)
        assert codec == Codec.ZSTD
        assert len(payload) <= len(data) * (1 - MIN_SAVING)


@given(st.binary(max_size=20_000) | st.text(max_size=5000).map(lambda t: t.encode() * 3))
def test_what_is_encoded_decodes_to_the_same_bytes(data: bytes) -> None:
    codec, payload = encode(data, 3)
    assert decode(codec, payload, len(data)) == data


def test_a_large_blob_is_judged_by_a_sample_first() -> None:
    """Start, middle and end that zstd cannot shrink: stored raw without compressing the rest,
    even though a run of zeros elsewhere would have saved more than MIN_SAVING (the trade the
    sample makes: a few bytes, for not compressing model weights only to store them raw)."""
    rng = random.Random(5)
    size = 1 << 20
    zeros = int(size * MIN_SAVING * 2)
    data = bytearray(rng.randbytes(size))
    data[size // 8 : size // 8 + zeros] = bytes(zeros)  # away from the three sampled places
    assert encode(bytes(data), 3)[0] == Codec.RAW
    start = size // 8 - SAMPLED_FROM // 2
    small = bytes(data[start : start + SAMPLED_FROM - 1])  # under the sampling size: compressed whole
    assert encode(small, 3)[0] == Codec.ZSTD


_BLOB = (st.binary(max_size=3000) | st.text(max_size=2000).map(lambda t: t.encode() * 3)
         | st.integers(0, 255).map(lambda b: bytes([b]) * (SAMPLED_FROM + 7)))


@given(st.lists(_BLOB, max_size=12), st.booleans())
def test_blobs_encoded_together_are_encoded_as_each_alone(blobs: list[bytes], views: bool) -> None:
    given_blobs = [memoryview(b"." + b)[1:] if views else b for b in blobs]
    assert encode_many(given_blobs, 3) == [encode(b, 3) for b in blobs]
