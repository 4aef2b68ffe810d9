"""The compiled tree-node decoder against the Python one (``decode_node_in_python``, the
reference): for any node it accepts, the Python decoder accepts it too and gives equal entries;
every canonical node with UTF-8 names it accepts (so the restore's fast path is really taken); and
whatever it declines, ``decode_node`` still decodes, or refuses, exactly as the reference does."""

from __future__ import annotations

import json
import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cas.errors import IntegrityError
from cas.format import trees
from cas.format.trees import DIR, FILE, SYMLINK, Entry, decode_node, decode_node_in_python, encode_tree
from cas.native.files import decode_canonical_node
from tests.hostile.test_fuzz import TREE, hostile_json

_HEX = st.text("0123456789abcdef", min_size=64, max_size=64)
_NAMES = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="/\x00"), min_size=1, max_size=12).filter(
    lambda n: n not in (".", ".."))
# Names read from a file system that are not UTF-8 (surrogate escapes): the compiled decoder
# declines these nodes, and the reference decodes them.
_RAW_NAMES = st.binary(min_size=1, max_size=8).filter(lambda b: b"/" not in b and b"\x00" not in b
                                                      and b not in (b".", b"..")).map(os.fsdecode)


def _native(data: bytes) -> object:
    return decode_canonical_node(data, Entry, trees._KIND_ORDER)


def _reference(data: bytes) -> object:
    try:
        return decode_node_in_python(data)
    except IntegrityError as exc:
        return exc


@st.composite
def _entry(draw: st.DrawFn, name: str) -> Entry:
    kind = draw(st.sampled_from([FILE, DIR, SYMLINK]))
    mode = draw(st.integers(0, 0o7777))
    mtime_ns = draw(st.integers(-(1 << 63), (1 << 63) - 1))
    if kind == FILE:
        size = draw(st.integers(0, 1 << 62))
        chunks = tuple(draw(st.lists(_HEX, min_size=1 if size else 0, max_size=min(size, 4))))
        return Entry(name, FILE, mode, mtime_ns, size=size, digest=draw(_HEX), chunks=chunks)
    if kind == SYMLINK:
        target = draw(st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), min_size=1, max_size=20))
        return Entry(name, SYMLINK, mode, mtime_ns, target=target)
    return Entry(name, DIR, mode, mtime_ns, tree=draw(_HEX))


@st.composite
def _directory(draw: st.DrawFn, names: st.SearchStrategy[str]) -> list[Entry]:
    return [draw(_entry(name)) for name in draw(st.sets(names, max_size=12))]


@settings(max_examples=300, deadline=None)
@given(_directory(_NAMES))
def test_every_canonical_node_with_utf8_names_is_decoded_natively_as_python_decodes_it(entries: list[Entry]) -> None:
    data = encode_tree(entries)
    native = _native(data)
    assert native is not None
    assert native == decode_node_in_python(data) == sorted(entries, key=lambda e: os.fsencode(e.name))
    assert all(type(e.type) is type(FILE) for e in native)


@settings(max_examples=100, deadline=None)
@given(_directory(_NAMES | _RAW_NAMES))
def test_nodes_with_names_that_are_not_utf8_are_left_to_python_and_decoded_the_same(entries: list[Entry]) -> None:
    data = encode_tree(entries)
    native = _native(data)
    assert native is None or native == decode_node_in_python(data)
    assert decode_node(data) == decode_node_in_python(data)


@settings(max_examples=100, deadline=None)
@given(st.lists(_HEX, min_size=1, max_size=6, unique=True))
def test_parts_nodes_are_decoded_as_python_decodes_them(parts: list[str]) -> None:
    data = json.dumps({"parts": parts, "v": 1}, separators=(",", ":")).encode()
    assert _native(data) == decode_node_in_python(data) == tuple(parts)
    twice = json.dumps({"parts": parts + parts[:1], "v": 1}, separators=(",", ":")).encode()
    assert _native(twice) is None
    assert isinstance(_reference(twice), IntegrityError)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hostile_json(TREE))
def test_a_hostile_node_is_accepted_natively_only_where_python_accepts_it_and_decoded_the_same(data: bytes) -> None:
    native = _native(data)
    reference = _reference(data)
    if native is not None:
        assert native == reference
    outcome = _reference_or_error(decode_node, data)
    assert type(outcome) is type(reference)
    assert outcome == reference or str(outcome) == str(reference)


def _reference_or_error(decode, data: bytes) -> object:  # type: ignore[no-untyped-def]
    try:
        return decode(data)
    except IntegrityError as exc:
        return exc


def test_each_check_of_the_reference_holds_in_the_compiled_decoder() -> None:
    """One entry broken in each way the reference refuses: the compiled decoder declines them all
    (and the reference refuses them, so that this list is of real faults)."""
    good = {"chunks": ["a" * 64], "digest": "b" * 64, "mode": 0o644, "mtime_ns": 1, "name": "f", "size": 5,
            "type": "file"}
    faults = [
        {"name": ""}, {"name": "."}, {"name": ".."}, {"name": "a/b"}, {"name": "a\x00b"}, {"name": "n" * 4097},
        {"type": "fifo"}, {"mode": -1}, {"mode": 0o10000}, {"mode": True}, {"mode": 1.0},
        {"mtime_ns": 1 << 63}, {"size": -1}, {"size": (1 << 62) + 1}, {"size": 0}, {"chunks": []},
        {"size": 1, "chunks": ["a" * 64, "c" * 64]}, {"digest": "B" * 64}, {"digest": "b" * 63},
        {"chunks": ["g" * 64]}, {"chunks": "a" * 64}, {"size": None},
    ]
    symlink = {"mode": 0o777, "mtime_ns": 1, "name": "l", "target": "t", "type": "symlink"}
    directory = {"mode": 0o755, "mtime_ns": 1, "name": "d", "tree": "c" * 64, "type": "dir"}
    nodes = [[{**good, **fault}] for fault in faults]
    nodes += [[{**symlink, **fault}] for fault in ({"target": ""}, {"target": "a\x00"}, {"target": "t" * 65537})]
    nodes += [[{**directory, "tree": "C" * 64}], [good, good], [{**good, "name": "g"}, good]]
    for entries in nodes:
        data = json.dumps({"entries": entries, "v": 1}, sort_keys=True, separators=(",", ":")).encode()
        assert isinstance(_reference(data), IntegrityError), entries
        assert _native(data) is None, entries
    for doc in ({"entries": [], "v": 2}, {"entries": [], "v": True}, {"entries": [], "v": 1.0}, {"entries": None, "v": 1},
                {"parts": ["a" * 64], "entries": None, "v": 1}, {"parts": [], "v": 1}):
        data = json.dumps(doc, separators=(",", ":")).encode()
        assert isinstance(_reference(data), IntegrityError), doc
        assert _native(data) is None, doc
    assert _native(b"[" * 100_000 + b"]" * 100_000) is None
    assert _native(b"x" * (trees.MAX_NODE_BYTES + 1)) is None
