"""The format's JSON documents are parsed with a fixed bound on their nesting, so that whether a
hostile document is refused, and with which message, depends on its bytes and not on how deep
the caller's stack happens to be (``json.loads`` recurses once per level)."""

from __future__ import annotations

import functools
import json
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cas.errors import IntegrityError
from cas.format import jsondoc
from cas.format.config import RepoConfig
from cas.format.records import SnapshotRecord
from cas.format.trees import decode_node_in_python

# Strings full of what a naive count would take for nesting: brackets, quotes, backslashes.
_TEXT = st.text(st.sampled_from('[]{}"\\ax\u00e9'), max_size=6)
_DOCS = st.recursive(
    st.none() | st.booleans() | st.integers() | _TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_TEXT, inner, max_size=3),
    max_leaves=30,
)


def _depth(doc: object) -> int:
    if isinstance(doc, list):
        return 1 + max(map(_depth, doc), default=0)
    if isinstance(doc, dict):
        return 1 + max(map(_depth, doc.values()), default=0)
    return 0


@given(_DOCS, st.sampled_from([None, 1]))
def test_nesting_counts_the_levels_of_arrays_and_objects_outside_strings(doc: object, indent: int | None) -> None:
    data = json.dumps(doc, indent=indent, ensure_ascii=False).encode()
    assert jsondoc.nesting(data) == _depth(doc)
    assert jsondoc.loads(data) == doc


def _at_depth(frames: int, call):  # type: ignore[no-untyped-def]
    """``call()`` from ``frames`` frames deeper than here."""
    return call() if frames <= 0 else _at_depth(frames - 1, call)


def _outcome(call) -> str:  # type: ignore[no-untyped-def]
    try:
        call()
    except IntegrityError as exc:
        return str(exc)
    return "accepted"


@pytest.mark.parametrize(("decode", "refusal"), [
    (decode_node_in_python, "tree node is not valid JSON"),
    (SnapshotRecord.from_json, "snapshot record is not valid JSON"),
    (RepoConfig.from_json, "repository config is not valid JSON"),
])
def test_a_document_nested_too_deep_is_refused_alike_from_any_depth_of_stack(decode, refusal: str) -> None:  # type: ignore[no-untyped-def]
    """Nested past the bound but well within what ``json.loads`` parses from a shallow stack: the
    same refusal from there and from a stack near Python's limit (where ``json.loads`` itself
    would run out of it)."""
    depth = jsondoc.MAX_DEPTH + 100
    near_limit = sys.getrecursionlimit() - len(_frames()) - 80
    for data in (b"[" * depth + b"]" * depth, b'{"a":' * depth + b"1" + b"}" * depth):
        call = functools.partial(decode, data)
        assert _outcome(call) == refusal
        assert _outcome(functools.partial(_at_depth, near_limit, call)) == refusal
    with pytest.raises(ValueError, match="nested more than"):
        jsondoc.loads(b"[" * depth + b"]" * depth)


def test_a_document_at_the_bound_is_parsed() -> None:
    depth = jsondoc.MAX_DEPTH
    assert _depth(jsondoc.loads(b"[" * depth + b"]" * depth)) == depth


def test_strings_never_closed_are_scanned_in_one_pass() -> None:
    """A string left open made the scan start again at every later quote: a megabyte of escaped
    quotes took minutes (quadratic). Run in a child process, so that a scan stuck in the regular
    expression engine (which no alarm interrupts) fails the test by its timeout."""
    code = (
        "from cas.format import jsondoc\n"
        "for data in (b'[' * 70 + b'\"' + b'\\\\\"' * 500_000, b'[' * 70 + b'\"\\\\' * 500_000):\n"
        "    assert jsondoc.nesting(data) == 70, jsondoc.nesting(data)\n"
        "    try:\n"
        "        jsondoc.loads(data)\n"
        "    except ValueError:\n"
        "        pass\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def _frames() -> list[object]:
    frame, out = sys._getframe(), []
    while frame is not None:
        out.append(frame)
        frame = frame.f_back
    return out
