"""Finding files across executions: which executions hold a path matching a pattern, or given content.

Answered from the index's tree entries (docs/INDEX.md, "tree_entries"), never from the backend:

1. one recursive query walks every directory reachable from the selected snapshots' roots, each
   directory once however many snapshots share it (``directory_edges``), and one more returns the
   files of those directories, filtered in SQL by content digest and by a literal name suffix
   (``*.py``) where the pattern has one (``files_under``);
2. here, the directory graph is walked from the roots level by level, each ``(directory, path)``
   once, carrying the set of snapshots that reach it as a bit mask (one bit per snapshot), so 200
   snapshots of one tree cost about what one does, plus the rows of the answer.

Snapshots whose trees are not in the table yet (``trees_indexed`` false: written before migration
0005 and not filled, or another host's snapshot read from its record) are walked by reading their
trees, the slow way, so the answer is complete either way.

Pattern semantics (``cas find``): a glob on the file's path inside the snapshot. ``*`` and ``?``
never match ``/``; ``**`` matches any run of directories (``a/**/b``, ``**/b``, ``a/**``); ``[...]``
is a character class (``[!...]`` negated); ``\\`` quotes the next character. A pattern without
``/`` is matched against the file's name alone, at any depth, like ``find -name`` (``*.py``,
``model.safetensors``); one with ``/`` against the whole path from the root, a leading ``/``
optional (``code/*.py`` is ``code``'s own files only). Files only: directories and symlinks are not
listed. Matching is case-sensitive.
"""

from __future__ import annotations

import os
import re
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from itertools import starmap
from typing import NamedTuple, Protocol

from cas.errors import ConfigurationError
from cas.format.hashing import is_digest
from cas.format.trees import FILE
from cas.ops.browse import TreeSource, walk
from cas.ops.select import Selection
from manifests.index import Index


class Found(NamedTuple):
    """One file of one execution that matched."""

    execution_id: str
    path: str
    size: int
    digest: str


class Target(NamedTuple):
    """A snapshot to search: its root tree, and whether the index holds its tree entries."""

    execution_id: str
    root: str
    indexed: bool


@dataclass(frozen=True)
class PathPattern:
    """A compiled ``cas find`` pattern (see the module's docstring)."""

    text: str
    regex: re.Pattern[str]
    basename: bool
    """Matched against the name alone (the pattern has no ``/``)."""
    suffix: str
    """A literal ending every match has (``.py`` of ``*.py``), for the index to filter on; or ''."""

    def matches(self, path: str) -> bool:
        return self.regex.fullmatch(path.rsplit("/", 1)[-1] if self.basename else path) is not None


def compile_pattern(pattern: str) -> PathPattern:
    """Compile a glob; an empty pattern, a NUL or an unclosed ``\\`` is a ConfigurationError."""
    if not pattern or "\x00" in pattern:
        raise ConfigurationError(f"invalid find pattern {pattern!r}")
    basename = "/" not in pattern
    body = pattern if basename else pattern.lstrip("/")
    if not body:
        raise ConfigurationError(f"invalid find pattern {pattern!r}")
    out: list[str] = []
    i = 0
    literal_tail = ""  # the literal characters since the last wildcard
    while i < len(body):
        c = body[i]
        if c == "*":
            if body.startswith("**", i):
                after = i + 2
                at_start = i == 0 or body[i - 1] == "/"
                if at_start and body.startswith("/", after):
                    out.append("(?:.*/)?")  # "**/": any run of directories, or none
                    i = after + 1
                elif at_start and after == len(body) and i > 0:
                    out.append(".*")  # "dir/**": everything below
                    i = after
                else:
                    out.append("[^/]*")  # "**" inside a name is "*"
                    i = after
            else:
                out.append("[^/]*")
                i += 1
            literal_tail = ""
        elif c == "?":
            out.append("[^/]")
            literal_tail = ""
            i += 1
        elif c == "[":
            end, cls = _char_class(body, i)
            if cls is None:
                out.append(re.escape(c))
                literal_tail += c
                i += 1
            else:
                out.append(cls)
                literal_tail = ""
                i = end
        elif c == "\\":
            if i + 1 == len(body):
                raise ConfigurationError(f"find pattern {pattern!r} ends with a lone '\\'")
            out.append(re.escape(body[i + 1]))
            literal_tail += body[i + 1]
            i += 2
        else:
            out.append(re.escape(c))
            literal_tail += c
            i += 1
    suffix = literal_tail if basename else ""
    return PathPattern(pattern, re.compile("".join(out), re.DOTALL), basename, suffix)


def _char_class(body: str, start: int) -> tuple[int, str | None]:
    """The regex of the ``[...]`` at ``start`` and where it ends; None if it is not closed."""
    i = start + 1
    negate = i < len(body) and body[i] in "!^"
    if negate:
        i += 1
    first = i
    while i < len(body) and (body[i] != "]" or i == first):
        if body[i] == "/":
            return start, None  # a class never spans a separator: take "[" literally
        i += 1
    if i >= len(body):
        return start, None
    inner = "".join("\\" + c if c in "\\^[]" else c for c in body[first:i])
    return i + 1, ("[^/" if negate else "[") + inner + "]"


class Recorded(Protocol):
    """What searching needs of a snapshot known only from its record."""

    root: str
    labels: dict[str, str]
    time_ns: int


def select_targets(
    index: Index, selection: Selection, execution_ids: Sequence[str] | None, from_record: Callable[[str], Recorded]
) -> list[Target]:
    """The snapshots to search, newest first: those ``selection`` admits, among ``execution_ids`` if
    given. A named execution the index lacks (another host's, not synced) is taken from its record
    (``from_record``, which raises NotFound for an unknown ID) and searched by reading its trees."""
    if execution_ids is None:
        return [Target(r.execution_id, r.root_tree, r.trees_indexed) for r in selection.rows(index)]
    chosen: list[tuple[int, Target]] = []
    for execution_id in dict.fromkeys(execution_ids):
        row = index.snapshot(execution_id)
        if row is not None:
            target = Target(execution_id, row.root_tree, row.trees_indexed)
            labels, time_ns = row.labels, row.time_ns
        else:
            snap = from_record(execution_id)
            target = Target(execution_id, snap.root, False)
            labels, time_ns = snap.labels, snap.time_ns
        if selection.admits(labels, time_ns):
            chosen.append((time_ns, target))
    chosen.sort(key=lambda t: (-t[0], t[1].execution_id))
    return [t for _, t in chosen]


def check_digest(digest: str) -> str:
    """A BLAKE3 hex digest as the index stores it (lowercase), or ConfigurationError."""
    lowered = digest.strip().lower()
    if not is_digest(lowered):
        raise ConfigurationError(f"--digest wants 64 hex digits (a BLAKE3), not {digest!r}")
    return lowered


class FileIndex(Protocol):
    """What finding needs of the index (``manifests.trees.TreeIndex``)."""

    def directory_edges(self, roots: Sequence[str]) -> list[tuple[str, bytes, str]]: ...
    def files_under(
        self, roots: Sequence[str], *, digest: str | None = None, name_suffix: bytes = b""
    ) -> list[tuple[str, bytes, int, str]]: ...


Match = tuple[str, int, str]
"""``(path, size, digest)`` of one matching file; the same tuple for every execution holding it."""


class FindResult:
    """What :func:`find` answers, produced as it is consumed (once). Iterating gives
    :class:`Found` rows; :meth:`by_execution` gives ``(execution_id, [Match, ...])`` per execution,
    the cheaper form when there are millions of rows (``cas find`` prints from it)."""

    def __init__(self, groups: Iterator[tuple[str, list[Match]]]) -> None:
        self._groups = groups

    def __iter__(self) -> Iterator[Found]:
        for execution_id, matches in self._groups:
            yield from starmap(partial(Found, execution_id), matches)

    def by_execution(self) -> Iterator[tuple[str, list[Match]]]:
        return self._groups


def find(
    index: FileIndex,
    trees: TreeSource,
    targets: Sequence[Target],
    pattern: PathPattern | None,
    digest: str | None,
) -> FindResult:
    """Files of ``targets`` (in their order) matching ``pattern`` and ``digest`` (None: any), each
    execution's in path order. Indexed targets are answered from ``index``; the others by reading
    their trees from ``trees``."""
    return FindResult(_groups(index, trees, targets, pattern, digest))


def _groups(
    index: FileIndex, trees: TreeSource, targets: Sequence[Target], pattern: PathPattern | None, digest: str | None
) -> Iterator[tuple[str, list[Match]]]:
    indexed = [t for t in targets if t.indexed]
    found = _from_index(index, indexed, pattern, digest) if indexed else []
    # Hand each match to the executions in its mask (masks are shared by whole directories, so
    # each distinct one is decoded once): the work is the size of the answer.
    per_target: list[list[tuple[str, int, str]]] = [[] for _ in indexed]
    decoded: dict[int, list[list[tuple[str, int, str]]]] = {}
    for path, size, dg, mask in found:
        into = decoded.get(mask)
        if into is None:
            into = decoded[mask] = [per_target[i] for i in range(mask.bit_length()) if mask >> i & 1]
        item = (path, size, dg)
        for matches in into:
            matches.append(item)
    position = {t.execution_id: i for i, t in enumerate(indexed)}
    for target in targets:
        if target.indexed:
            eid = target.execution_id
            matches = per_target[position[eid]]
            per_target[position[eid]] = []
            yield eid, matches
        else:
            yield target.execution_id, [(f.path, f.size, f.digest) for f in _by_reading(trees, target, pattern, digest)]


def _from_index(
    index: FileIndex, targets: Sequence[Target], pattern: PathPattern | None, digest: str | None
) -> list[tuple[str, int, str, int]]:
    """The matches ``(path, size, digest, mask)`` in path order, bit i of ``mask`` set for each of
    ``targets[i]`` that holds it."""
    roots = list(dict.fromkeys(t.root for t in targets))
    children: dict[str, list[tuple[str, bytes, str]]] = defaultdict(list)
    for tree, name, child in index.directory_edges(roots):
        children[tree].append((os.fsdecode(name), name, child))
    suffix = os.fsencode(pattern.suffix) if pattern is not None and pattern.suffix else b""
    files: dict[str, list[tuple[str, bytes, int, str]]] = defaultdict(list)
    for tree, name, size, dg in index.files_under(roots, digest=digest, name_suffix=suffix):
        text = os.fsdecode(name)
        if pattern is not None and pattern.basename and pattern.regex.fullmatch(text) is None:
            continue  # a name pattern is decided once per distinct directory, not once per path
        files[tree].append((text, name, size, dg))
    whole_path = pattern is not None and not pattern.basename

    # Walk (directory, path) pairs level by level, each once; ``mask`` has bit i set when targets[i]
    # reaches it, ``key`` is the path's components as bytes (the order a walk of the tree lists).
    level: dict[tuple[str, str], int] = defaultdict(int)
    keys: dict[tuple[str, str], tuple[bytes, ...]] = {}
    for i, target in enumerate(targets):
        level[(target.root, "")] |= 1 << i
        keys[(target.root, "")] = ()
    found: list[tuple[tuple[bytes, ...], str, int, str, int]] = []
    while level:
        below: dict[tuple[str, str], int] = defaultdict(int)
        below_keys: dict[tuple[str, str], tuple[bytes, ...]] = {}
        for node, mask in level.items():
            tree, prefix = node
            key = keys[node]
            for text, name, size, dg in files.get(tree, ()):
                path = prefix + text
                if whole_path and pattern.regex.fullmatch(path) is None:  # type: ignore[union-attr]
                    continue
                found.append((key + (name,), path, size, dg, mask))
            for text, name, child in children.get(tree, ()):
                down = (child, prefix + text + "/")
                below[down] |= mask
                below_keys[down] = key + (name,)
        level, keys = below, below_keys
    found.sort(key=lambda f: f[0])
    return [(path, size, dg, mask) for _, path, size, dg, mask in found]


def _by_reading(
    trees: TreeSource, target: Target, pattern: PathPattern | None, digest: str | None
) -> Iterator[Found]:
    for path, entry in walk(trees, target.root, "", recursive=True):
        if entry.type != FILE:
            continue
        if digest is not None and entry.digest != digest:
            continue
        if pattern is not None and not pattern.matches(path):
            continue
        yield Found(target.execution_id, path, entry.size, entry.digest)


__all__ = ["FindResult", "Found", "Match", "PathPattern", "Target", "check_digest", "compile_pattern", "find", "select_targets"]
