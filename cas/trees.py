"""Tree nodes: the canonical encoding of one directory's entries.

A node is UTF-8 JSON with sorted keys and no insignificant whitespace, entries sorted by the bytes
of their names, so equal directories encode to equal bytes and get equal BLAKE3 IDs (a Merkle tree:
an unchanged subdirectory is the same node in every snapshot). Names that are not valid UTF-8 are
carried as Python's surrogate escapes, which JSON keeps as ``\\udcXX`` escapes and
:func:`os.fsencode` turns back into the original bytes.

:func:`decode_tree` is the only way stored tree bytes become entries, and it rejects anything a
hostile writer could use: path separators, ``.``/``..``, NUL, duplicate or unsorted names,
impossible sizes, modes or chunk lists.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from cas.errors import IntegrityError
from cas.hashing import is_digest

TREE_VERSION = 1
FILE = "file"
DIR = "dir"
SYMLINK = "symlink"
_TYPES = (FILE, DIR, SYMLINK)
MAX_NAME_BYTES = 4096
MAX_TARGET_BYTES = 65536
MAX_FILE_SIZE = 1 << 62
MAX_ENTRIES = 10_000_000
_MTIME_LIMIT = 1 << 63


@dataclass(frozen=True)
class Entry:
    name: str
    type: str
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


def name_key(name: str) -> bytes:
    return os.fsencode(name)


def encode_tree(entries: list[Entry]) -> bytes:
    ordered = sorted(entries, key=lambda e: name_key(e.name))
    doc = {"v": TREE_VERSION, "entries": [e.to_json() for e in ordered]}
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def decode_tree(data: bytes) -> list[Entry]:
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise IntegrityError("tree node is not valid JSON") from exc
    # ``type(...) is int``: JSON ``true`` and ``1.0`` compare equal to 1 but are not version 1.
    if not isinstance(doc, dict) or type(doc.get("v")) is not int or doc["v"] != TREE_VERSION:
        raise IntegrityError("tree node has an unknown version or shape")
    if not isinstance(doc.get("entries"), list):
        raise IntegrityError("tree node has an unknown version or shape")
    raw_entries = doc["entries"]
    if len(raw_entries) > MAX_ENTRIES:
        raise IntegrityError("tree node has too many entries")
    entries = [_decode_entry(raw) for raw in raw_entries]
    keys = [name_key(e.name) for e in entries]
    for a, b in zip(keys, keys[1:]):
        if a == b:
            raise IntegrityError(f"tree node lists {os.fsdecode(a)!r} twice")
        if a > b:
            raise IntegrityError("tree node entries are not sorted")
    return entries


def check_name(name: object) -> str:
    """A single path component that is safe to create inside a directory, or IntegrityError."""
    if not isinstance(name, str) or name in ("", ".", ".."):
        raise IntegrityError(f"invalid entry name {name!r}")
    if "/" in name or "\x00" in name:
        raise IntegrityError(f"entry name {name!r} contains '/' or NUL")
    try:
        encoded = os.fsencode(name)
    except UnicodeError as exc:
        raise IntegrityError(f"entry name {name!r} cannot be encoded") from exc
    if len(encoded) > MAX_NAME_BYTES:
        raise IntegrityError("entry name is too long")
    return name


def _int(raw: dict[str, object], key: str, low: int, high: int, name: str) -> int:
    value = raw.get(key)
    if type(value) is not int or not (low <= value <= high):
        raise IntegrityError(f"entry {name!r} has an invalid {key}")
    return value


def _decode_entry(raw: object) -> Entry:
    if not isinstance(raw, dict):
        raise IntegrityError("tree entry is not an object")
    name = check_name(raw.get("name"))
    kind = raw.get("type")
    if kind not in _TYPES:
        raise IntegrityError(f"entry {name!r} has unknown type {kind!r}")
    mode = _int(raw, "mode", 0, 0o7777, name)
    mtime_ns = _int(raw, "mtime_ns", -_MTIME_LIMIT, _MTIME_LIMIT - 1, name)
    if kind == FILE:
        size = _int(raw, "size", 0, MAX_FILE_SIZE, name)
        digest = raw.get("digest")
        chunks = raw.get("chunks")
        if not is_digest(digest):
            raise IntegrityError(f"entry {name!r} has an invalid digest")
        if not isinstance(chunks, list) or not all(is_digest(c) for c in chunks):
            raise IntegrityError(f"entry {name!r} has an invalid chunk list")
        if len(chunks) > size or (size > 0 and not chunks):
            raise IntegrityError(f"entry {name!r} has a chunk list that cannot add up to its size")
        return Entry(name, FILE, mode, mtime_ns, size=size, digest=digest, chunks=tuple(chunks))  # type: ignore[arg-type]
    if kind == SYMLINK:
        target = raw.get("target")
        if not isinstance(target, str) or not target or "\x00" in target:
            raise IntegrityError(f"symlink {name!r} has an invalid target")
        try:
            if len(os.fsencode(target)) > MAX_TARGET_BYTES:
                raise IntegrityError(f"symlink {name!r} target is too long")
        except UnicodeError as exc:
            raise IntegrityError(f"symlink {name!r} target cannot be encoded") from exc
        return Entry(name, SYMLINK, mode, mtime_ns, target=target)
    tree = raw.get("tree")
    if not is_digest(tree):
        raise IntegrityError(f"directory {name!r} has an invalid tree id")
    return Entry(name, DIR, mode, mtime_ns, tree=tree)  # type: ignore[arg-type]
