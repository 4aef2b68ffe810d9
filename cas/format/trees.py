"""Tree nodes: the canonical encoding of one directory's entries.

A directory is one *entries node*, or, when its entries would encode to more than
:data:`SPLIT_BYTES`, several entries nodes (parts, each holding a run of the sorted entries) named
by one *parts node*. Part boundaries are content-defined (after an entry whose name hashes to a
boundary, once the part holds :data:`PART_MIN_BYTES`), so adding a file to a huge directory rewrites
one part, not every part after it. Parts never nest: a parts node names entries nodes only.

A node is UTF-8 JSON with sorted keys and no insignificant whitespace, entries sorted by the bytes
of their names, so equal directories encode to equal bytes and get equal BLAKE3 IDs (a Merkle tree:
an unchanged subdirectory is the same node in every snapshot). Names that are not valid UTF-8 are
carried as Python's surrogate escapes, which JSON keeps as ``\\udcXX`` escapes and
:func:`os.fsencode` turns back into the original bytes.

:func:`decode_node` (and :func:`decode_tree`, for entries nodes) is the only way stored tree bytes
become entries, and it rejects anything a hostile writer could use: path separators, ``.``/``..``,
NUL, duplicate or unsorted names, impossible sizes, modes or chunk lists. Canonical nodes are
decoded by the compiled helper, which holds the same checks and leaves anything else to
:func:`decode_node_in_python`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from json.encoder import encode_basestring_ascii as _quote

import blake3

from cas.errors import IntegrityError
from cas.format import jsondoc
from cas.format.hashing import hexdigest, is_digest
from cas.native.files import decode_canonical_node
from cas.types import EntryType

TREE_VERSION = 1
FILE = EntryType.FILE
DIR = EntryType.DIR
SYMLINK = EntryType.SYMLINK
_KINDS = {kind.value: kind for kind in EntryType}
_KIND_ORDER = (FILE, DIR, SYMLINK)
MAX_NAME_BYTES = 4096
MAX_TARGET_BYTES = 65536
MAX_FILE_SIZE = 1 << 62
MAX_ENTRIES = 10_000_000
MAX_NODE_BYTES = 64 * 1024 * 1024
"""The largest tree node (entries or parts node) a writer produces and every reader accepts: the
pack format's blob limit (``packs.MAX_BLOB_SIZE``), which the writer enforces with a clear error."""
SPLIT_BYTES = 4 * 1024 * 1024
"""A directory whose single node would exceed this is stored as parts."""
PART_MIN_BYTES = 512 * 1024
PART_MAX_BYTES = 4 * 1024 * 1024
_BOUNDARY_MASK = 0x3FF  # about one name in 1,024 ends a part, once the part holds PART_MIN_BYTES
MAX_PARTS = MAX_ENTRIES
_ENTRIES_OPEN = b'{"entries":['
_ENTRIES_CLOSE = b'],"v":1}'
_PARTS_OPEN = b'{"parts":['
_MTIME_LIMIT = 1 << 63
_FS_ENCODING, _FS_ERRORS = sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()
_NATIVE = _FS_ENCODING == "utf-8"
"""Whether nodes are first offered to the compiled decoder, which takes names as UTF-8."""


@dataclass(frozen=True)
class Entry:
    name: str
    type: EntryType
    mode: int
    mtime_ns: int
    size: int = 0
    digest: str = ""
    chunks: tuple[str, ...] = field(default=())
    target: str = ""
    tree: str = ""

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {"name": self.name, "type": self.type, "mode": self.mode, "mtime_ns": self.mtime_ns}
        if self.type == FILE:
            out.update(size=self.size, digest=self.digest, chunks=list(self.chunks))
        elif self.type == SYMLINK:
            out["target"] = self.target
        else:
            out["tree"] = self.tree
        return out


_new_object = object.__new__
_set_attribute = object.__setattr__


def new_entry(name: str, kind: EntryType, mode: int, mtime_ns: int, size: int = 0, digest: str = "",
              chunks: tuple[str, ...] = (), target: str = "", tree: str = "") -> Entry:
    """``Entry(...)`` for the decoders (of stored trees and of the index's rows) and the snapshot's
    walk (an entry per file it stores), without the frozen
    dataclass's ``__init__`` (one ``object.__setattr__`` call per field): the same object, its
    fields set in one assignment. No check: the caller has checked the fields."""
    entry = _new_object(Entry)
    _set_attribute(entry, "__dict__", {"name": name, "type": kind, "mode": mode, "mtime_ns": mtime_ns, "size": size,
                                       "digest": digest, "chunks": chunks, "target": target, "tree": tree})
    return entry


def name_key(name: str) -> bytes:
    return os.fsencode(name)


def encode_entry(entry: Entry) -> bytes:
    """The canonical JSON of ``entry.to_json()`` (sorted keys, no spaces, ASCII with ``\\u``
    escapes), written out directly: the same bytes as ``json.dumps`` gives, about five times faster,
    which a snapshot of many small files notices (tests/ops/test_tree_ids.py checks the two agree)."""
    head = f'"mode":{entry.mode:d},"mtime_ns":{entry.mtime_ns:d},"name":{_quote(entry.name)},'
    kind = entry.type
    if kind == FILE:
        chunks = ",".join(map(_quote, entry.chunks))
        text = (f'{{"chunks":[{chunks}],"digest":{_quote(entry.digest)},{head}"size":{entry.size:d},'
                f'"type":{_quote(kind)}}}')
    elif kind == SYMLINK:
        text = f'{{{head}"target":{_quote(entry.target)},"type":{_quote(kind)}}}'
    else:
        text = f'{{{head}"tree":{_quote(entry.tree)},"type":{_quote(kind)}}}'
    return text.encode("ascii")


def encode_tree(entries: list[Entry]) -> bytes:
    """One entries node (the canonical JSON of ``{"entries": [...], "v": 1}``), whatever its size."""
    ordered = sorted(entries, key=lambda e: name_key(e.name))
    return _ENTRIES_OPEN + b",".join(encode_entry(e) for e in ordered) + _ENTRIES_CLOSE


class TooLarge(ValueError):
    """The writer cannot represent this directory within the format's limits."""


class DirectoryEncoder:
    """Encodes one directory's entries, given in name order, into tree nodes.

    ``emit(node_id, node_bytes)`` receives every node to store (parts first, then the node that
    names the directory); :meth:`finish` returns the directory's tree ID. Memory is bounded by one
    part (plus :data:`SPLIT_BYTES` while it is not yet known whether the directory needs parts),
    not by the directory's size.
    """

    def __init__(self, emit: Callable[[str, bytes], None]) -> None:
        self._emit = emit
        self._part: list[bytes] = []
        self._part_bytes = 0
        self._held: list[list[bytes]] = []  # finished parts not emitted while the whole may fit one node
        self._held_bytes = 0
        self._parts: list[str] = []
        self._count = 0
        self._last: bytes | None = None

    def add(self, entry: Entry) -> None:
        key = name_key(entry.name)
        if self._last is not None and key <= self._last:
            raise ValueError("entries must be added in strictly increasing name order")
        self._last = key
        self._count += 1
        if self._count > MAX_ENTRIES:
            raise TooLarge(f"more than {MAX_ENTRIES:,} entries in one directory")
        encoded = encode_entry(entry)
        if len(encoded) + len(_ENTRIES_OPEN) + len(_ENTRIES_CLOSE) > MAX_NODE_BYTES:
            raise TooLarge(
                f"{entry.name!r} lists {len(entry.chunks):,} chunks, more than one tree node can hold "
                f"({MAX_NODE_BYTES // (1024 * 1024)} MiB)"
            )
        if self._part_bytes + len(encoded) + 1 > PART_MAX_BYTES and self._part:
            self._end_part()
        self._part.append(encoded)
        self._part_bytes += len(encoded) + 1
        if self._part_bytes >= PART_MIN_BYTES and _is_boundary(key):
            self._end_part()

    def _end_part(self) -> None:
        part, self._part, self._part_bytes = self._part, [], 0
        if self._held is not None:
            self._held.append(part)
            self._held_bytes += sum(len(e) + 1 for e in part)
            if self._held_bytes <= SPLIT_BYTES:
                return
            held, self._held = self._held, None  # type: ignore[assignment]
            for earlier in held:
                self._store_part(earlier)
            return
        self._store_part(part)

    def _store_part(self, entries: list[bytes]) -> None:
        data = _ENTRIES_OPEN + b",".join(entries) + _ENTRIES_CLOSE
        part_id = hexdigest(data)
        self._emit(part_id, data)
        self._parts.append(part_id)

    def finish(self) -> str:
        if self._held is not None:
            everything = [e for part in self._held for e in part] + self._part
            if sum(len(e) + 1 for e in everything) <= SPLIT_BYTES:
                data = _ENTRIES_OPEN + b",".join(everything) + _ENTRIES_CLOSE
                tree_id = hexdigest(data)
                self._emit(tree_id, data)
                return tree_id
            held, self._held = self._held, None  # type: ignore[assignment]
            for part in held:
                self._store_part(part)
        if self._part:
            self._store_part(self._part)
            self._part = []
        data = _PARTS_OPEN + b",".join(b'"' + p.encode("ascii") + b'"' for p in self._parts) + _ENTRIES_CLOSE
        if len(data) > MAX_NODE_BYTES:
            raise TooLarge(f"directory needs {len(self._parts):,} tree parts, more than one node can name")
        tree_id = hexdigest(data)
        self._emit(tree_id, data)
        return tree_id


def _is_boundary(key: bytes) -> bool:
    return not (int.from_bytes(blake3.blake3(key).digest(2), "little") & _BOUNDARY_MASK)


def encode_directory(entries: list[Entry], emit: Callable[[str, bytes], None]) -> str:
    """Encode a whole directory (any order) with :class:`DirectoryEncoder`; returns its tree ID."""
    encoder = DirectoryEncoder(emit)
    for entry in sorted(entries, key=lambda e: name_key(e.name)):
        encoder.add(entry)
    return encoder.finish()


def decode_node(data: bytes) -> list[Entry] | tuple[str, ...]:
    """An entries node as its entries, or a parts node as the IDs of its parts (in order).

    A node in canonical form with UTF-8 names is decoded by the compiled helper
    (:func:`cas.native.files.decode_canonical_node`: the same checks and the same entries, in
    about a third of the time); anything it does not take is decoded by
    :func:`decode_node_in_python`, which accepts it or says what is wrong with it."""
    if _NATIVE:
        node = decode_canonical_node(data, Entry, _KIND_ORDER)
        if node is not None:
            return node
    return decode_node_in_python(data)


def decode_node_in_python(data: bytes) -> list[Entry] | tuple[str, ...]:
    """:func:`decode_node` without the compiled helper: the reference it is tested against."""
    doc = _load_node(data)
    if set(doc) == {"parts", "v"}:
        parts = doc["parts"]
        if not isinstance(parts, list) or not parts or len(parts) > MAX_PARTS or not all(is_digest(p) for p in parts):
            raise IntegrityError("tree parts node is malformed")
        if len(set(parts)) != len(parts):
            raise IntegrityError("tree parts node names a part twice")
        return tuple(parts)
    return _entries_of(doc)


def join_parts(parts: list[list[Entry]]) -> list[Entry]:
    """The entries of a split directory, checking that its parts are non-empty and in order."""
    out: list[Entry] = []
    last: bytes | None = None
    for entries in parts:
        if not entries:
            raise IntegrityError("tree part is empty")
        first = name_key(entries[0].name)
        if last is not None and first <= last:
            raise IntegrityError("tree parts overlap or are out of order")
        last = name_key(entries[-1].name)
        out.extend(entries)
        if len(out) > MAX_ENTRIES:
            raise IntegrityError("tree node has too many entries")
    return out


def decode_tree(data: bytes) -> list[Entry]:
    """An entries node's entries (a parts node is refused here: see :func:`decode_node`)."""
    node = decode_node(data)
    if isinstance(node, list):
        return node
    raise IntegrityError("tree node has an unknown version or shape")


def _load_node(data: bytes) -> dict:  # type: ignore[type-arg]
    """The JSON object of a tree node of this version, or IntegrityError."""
    if len(data) > MAX_NODE_BYTES:
        raise IntegrityError("tree node is larger than the format allows")
    try:
        doc = jsondoc.loads(data)
    except ValueError as exc:
        raise IntegrityError("tree node is not valid JSON") from exc
    # ``type(...) is int``: JSON ``true`` and ``1.0`` compare equal to 1 but are not version 1.
    if not isinstance(doc, dict) or type(doc.get("v")) is not int or doc["v"] != TREE_VERSION:
        raise IntegrityError("tree node has an unknown version or shape")
    return doc


def _entries_of(doc: dict) -> list[Entry]:  # type: ignore[type-arg]
    if not isinstance(doc.get("entries"), list):
        raise IntegrityError("tree node has an unknown version or shape")
    raw_entries = doc["entries"]
    if len(raw_entries) > MAX_ENTRIES:
        raise IntegrityError("tree node has too many entries")
    entries: list[Entry] = []
    previous = b""
    for raw in raw_entries:
        key, entry = _decode_entry(raw)
        if key <= previous and entries:
            if key == previous:
                raise IntegrityError(f"tree node lists {entry.name!r} twice")
            raise IntegrityError("tree node entries are not sorted")
        entries.append(entry)
        previous = key
    return entries


def check_name(name: object) -> str:
    """A single path component that is safe to create inside a directory, or IntegrityError."""
    _name_key(name)
    return name  # type: ignore[return-value]


def _name_key(name: object) -> bytes:
    """:func:`check_name`, giving the name as the file system's bytes (its sort key)."""
    if not isinstance(name, str) or name in ("", ".", ".."):
        raise IntegrityError(f"invalid entry name {name!r}")
    if "/" in name or "\x00" in name:
        raise IntegrityError(f"entry name {name!r} contains '/' or NUL")
    try:
        encoded = name.encode(_FS_ENCODING, _FS_ERRORS)  # os.fsencode's bytes, without its checks
    except UnicodeError as exc:
        raise IntegrityError(f"entry name {name!r} cannot be encoded") from exc
    if len(encoded) > MAX_NAME_BYTES:
        raise IntegrityError("entry name is too long")
    return encoded


def _decode_entry(raw: object) -> tuple[bytes, Entry]:
    """An entry of a tree node, checked, with its name's sort key. (Every entry of every tree a
    restore walks comes through here: written for few calls per entry.)"""
    if not isinstance(raw, dict):
        raise IntegrityError("tree entry is not an object")
    get = raw.get
    name = get("name")
    key = _name_key(name)
    assert isinstance(name, str)
    kind = get("type")
    kind = _KINDS.get(kind) if type(kind) is str else None
    if kind is None:
        raise IntegrityError(f"entry {name!r} has unknown type {get('type')!r}")
    mode = get("mode")
    if type(mode) is not int or not 0 <= mode <= 0o7777:
        raise IntegrityError(f"entry {name!r} has an invalid mode")
    mtime_ns = get("mtime_ns")
    if type(mtime_ns) is not int or not -_MTIME_LIMIT <= mtime_ns < _MTIME_LIMIT:
        raise IntegrityError(f"entry {name!r} has an invalid mtime_ns")
    if kind is FILE:
        size = get("size")
        if type(size) is not int or not 0 <= size <= MAX_FILE_SIZE:
            raise IntegrityError(f"entry {name!r} has an invalid size")
        digest = get("digest")
        chunks = get("chunks")
        if not is_digest(digest):
            raise IntegrityError(f"entry {name!r} has an invalid digest")
        if not isinstance(chunks, list):
            raise IntegrityError(f"entry {name!r} has an invalid chunk list")
        for chunk_id in chunks:
            if not is_digest(chunk_id):
                raise IntegrityError(f"entry {name!r} has an invalid chunk list")
        if len(chunks) > size or (size > 0 and not chunks):
            raise IntegrityError(f"entry {name!r} has a chunk list that cannot add up to its size")
        return key, new_entry(name, FILE, mode, mtime_ns, size, digest, tuple(chunks))  # type: ignore[arg-type]
    if kind is SYMLINK:
        target = raw.get("target")
        if not isinstance(target, str) or not target or "\x00" in target:
            raise IntegrityError(f"symlink {name!r} has an invalid target")
        try:
            if len(os.fsencode(target)) > MAX_TARGET_BYTES:
                raise IntegrityError(f"symlink {name!r} target is too long")
        except UnicodeError as exc:
            raise IntegrityError(f"symlink {name!r} target cannot be encoded") from exc
        return key, new_entry(name, SYMLINK, mode, mtime_ns, target=target)
    tree = raw.get("tree")
    if not is_digest(tree):
        raise IntegrityError(f"directory {name!r} has an invalid tree id")
    return key, new_entry(name, DIR, mode, mtime_ns, tree=tree)  # type: ignore[arg-type]
