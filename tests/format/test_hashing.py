"""``is_digest`` accepts exactly 64 lowercase hex digits: it is what tree decoding checks every chunk
ID, digest and tree ID of a (possibly hostile) tree node with. ``HashBeside`` hashes what it is
given, in order, on a thread of its own."""

from __future__ import annotations

import os
import re
import threading

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from cas.format.hashing import HashBeside, hexdigest, is_digest

_DEFINITION = re.compile(r"[0-9a-f]{64}")


def _near_misses(draw: st.DrawFn) -> str:
    digest = os.urandom(32).hex()
    at = draw(st.integers(0, 64))
    insert = draw(st.sampled_from([" ", "\t", "\n", "\x0b", "\x00", "A", "F", "g", "x", "\u0660", "\uff10", "0", ""]))
    cut = draw(st.integers(0, 2))
    text = digest[:at] + insert + digest[at + cut:]
    return draw(st.sampled_from([text, text.upper(), text[:64], text.strip()]))


@given(st.one_of(st.text(alphabet="0123456789abcdefABCDEF \t\n\u0660g", max_size=70),
                 st.composite(_near_misses)(), st.text()))
@example(" " + "a" * 63)
@example("a" * 62 + " 0")
@example("0" * 64)
@example("a" * 64 + "\n")
def test_is_digest_accepts_exactly_64_lowercase_hex_digits(text: str) -> None:
    assert is_digest(text) == (_DEFINITION.fullmatch(text) is not None)


@given(st.one_of(st.none(), st.integers(), st.binary(min_size=64, max_size=64), st.lists(st.text())))
def test_is_digest_refuses_what_is_not_text(value: object) -> None:
    assert not is_digest(value)
    assert not is_digest(os.urandom(32).hex().encode())


@given(st.lists(st.binary(max_size=5000), max_size=20), st.integers(1, 4))
def test_hash_beside_is_the_blake3_of_the_pieces_in_order(pieces: list[bytes], behind: int) -> None:
    hasher = HashBeside(behind)
    for piece in pieces:
        hasher.update(memoryview(piece))
    assert hasher.hexdigest() == hexdigest(b"".join(pieces))
    hasher.close()  # again: nothing left to wait for


def test_a_settled_piece_may_be_overwritten_and_close_ends_the_thread() -> None:
    buffer = bytearray(os.urandom(1 << 20))
    first = bytes(buffer)
    before = threading.active_count()
    hasher = HashBeside()
    hasher.update(memoryview(buffer))
    hasher.settle()  # hashed: the buffer is the caller's again
    buffer[:] = os.urandom(len(buffer))
    hasher.update(memoryview(buffer))
    assert hasher.hexdigest() == hexdigest(first + bytes(buffer))
    unfinished = HashBeside()
    unfinished.update(b"abandoned midway")
    unfinished.close()
    assert threading.active_count() == before


def test_a_piece_that_cannot_be_hashed_fails_the_digest_without_blocking_the_writer() -> None:
    hasher = HashBeside(behind=1)
    released = memoryview(b"gone")
    released.release()
    hasher.update(released)
    for _ in range(5):  # more than the queue holds: taken and dropped, never waited for forever
        hasher.update(b"more")
    with pytest.raises(ValueError):
        hasher.hexdigest()
