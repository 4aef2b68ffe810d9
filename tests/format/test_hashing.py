"""``is_digest`` accepts exactly 64 lowercase hex digits: it is what tree decoding checks every chunk
ID, digest and tree ID of a (possibly hostile) tree node with."""

from __future__ import annotations

import os
import re

from hypothesis import example, given
from hypothesis import strategies as st

from cas.format.hashing import is_digest

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
