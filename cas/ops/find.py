"""Finding files across executions: which executions hold a path matching a pattern, or given content.

Answered from the index's tree entries (docs/INDEX.md, "tree_entries"), never from the backend:

1. one recursive query walks every directory reachable from the selected snapshots' roots, each
   directory once however many snapshots share it, and returns their subdirectory edges and their
   files, the files filtered in SQL by content digest and by a literal name suffix (``*.py``) where
   the pattern has one (``find_entries``);
2. here, the directory graph is walked from the roots level by level, each ``(directory, path)``
   once, carrying the set of snapshots that reach it as a bit mask (one bit per snapshot), so 200
   snapshots of one tree cost about what one does;
3. the matches come out as *runs*: stretches of files that follow one another in the answer of
   every snapshot holding them (a directory's files between two of its subdirectories, joined with
   the neighbouring stretches the same snapshots hold). Each snapshot's answer is its runs in order,
   and a run is one list shared by all the snapshots holding it, so the work is that of the distinct
   matches, not of the rows of the answer; ``cas find`` makes the text of each run once.

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

import gc
import os
import re
import sys
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from itertools import chain, starmap
from operator import itemgetter
from typing import TYPE_CHECKING, NamedTuple, Protocol

from cas.errors import ConfigurationError
from cas.format.hashing import is_digest
from cas.format.trees import FILE
from cas.ops.browse import TreeSource, walk
from cas.ops.select import Selection

if TYPE_CHECKING:
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
    suffix_decides: bool = False
    """A name matches exactly when its bytes end with ``suffix``'s (``*`` and an ASCII literal)."""

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
    regex = "".join(out)
    # ASCII only: the index compares bytes, and an ASCII byte is the same character in any name.
    suffix_decides = suffix.isascii() and bool(suffix) and regex == "[^/]*" + "".join(map(re.escape, suffix))
    return PathPattern(pattern, re.compile(regex, re.DOTALL), basename, suffix, suffix_decides)


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

    def find_entries(
        self, roots: Sequence[str], *, digest: str | None = None, name_suffix: bytes = b""
    ) -> Sequence[tuple[str, bytes, int, str | None, str | None]]: ...


Match = tuple[str, int, str]
"""``(path, size, digest)`` of one matching file; the same tuple for every execution holding it."""

Run = list[Match]
"""Matches that follow one another, in path order, in the answer of every execution holding them."""


class FindResult:
    """What :func:`find` answers, produced as it is consumed (once). Iterating gives :class:`Found`
    rows; :meth:`by_execution` gives ``(execution_id, [Match, ...])`` per execution; :meth:`runs`
    gives ``(execution_id, [Run, ...])``, where a run held by many executions is one list object
    shared by all of them: the cheap form when there are millions of rows (``cas find`` makes the
    text of each run once)."""

    def __init__(self, groups: Iterator[tuple[str, list[Run]]]) -> None:
        self._groups = groups

    def __iter__(self) -> Iterator[Found]:
        for execution_id, runs in self._groups:
            for run in runs:
                yield from starmap(partial(Found, execution_id), run)

    def by_execution(self) -> Iterator[tuple[str, list[Match]]]:
        for execution_id, runs in self._groups:
            yield execution_id, list(chain.from_iterable(runs))

    def runs(self) -> Iterator[tuple[str, list[Run]]]:
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
) -> Iterator[tuple[str, list[Run]]]:
    indexed = [t for t in targets if t.indexed]
    with _collector_paused():
        runs = _from_index(index, indexed, pattern, digest) if indexed else []
    # Hand each run to the executions in its mask (each distinct mask decoded once).
    per_target: list[list[Run]] = [[] for _ in indexed]
    decoded: dict[int, list[list[Run]]] = {}
    for mask, run in runs:
        into = decoded.get(mask)
        if into is None:
            into = decoded[mask] = [per_target[i] for i in range(mask.bit_length()) if mask >> i & 1]
        for target_runs in into:
            target_runs.append(run)
    position = {t.execution_id: i for i, t in enumerate(indexed)}
    for target in targets:
        if target.indexed:
            eid = target.execution_id
            yield eid, per_target[position[eid]]
            per_target[position[eid]] = []
        else:
            run = [(f.path, f.size, f.digest) for f in _by_reading(trees, target, pattern, digest)]
            yield target.execution_id, [run] if run else []


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Python's cycle collector paused: the walk makes some 10^5 rows, tuples and lists, none in a
    cycle, and the collector would otherwise pass over all of them again and again as they pile up
    (about a third of the walk's time)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _from_index(
    index: FileIndex, targets: Sequence[Target], pattern: PathPattern | None, digest: str | None
) -> list[tuple[int, Run]]:
    """The matches as ``(mask, run)`` in path order: bit i of ``mask`` is set for each of
    ``targets[i]`` whose answer holds the run; each target's runs, in this order, are its answer."""
    roots = list(dict.fromkeys(t.root for t in targets))
    suffix = os.fsencode(pattern.suffix) if pattern is not None and pattern.suffix else b""
    name_filter = pattern.regex.fullmatch if pattern is not None and pattern.basename and not pattern.suffix_decides else None
    encoding = sys.getfilesystemencoding()
    # Each tree's entries in name order: (name as bytes, as text, size, digest, subdirectory's tree).
    # A name pattern is decided here, once per distinct directory, not once per path.
    listing: dict[str, list[tuple[bytes, str, int, str | None, str | None]]] = defaultdict(list)
    for tree, name, size, dg, child in index.find_entries(roots, digest=digest, name_suffix=suffix):
        text = name.decode(encoding, "surrogateescape")
        if child is None and name_filter is not None and name_filter(text) is None:
            continue
        listing[tree].append((name, text, size, dg, child))
    for entries in listing.values():
        entries.sort()
    path_filter = pattern.regex.fullmatch if pattern is not None and not pattern.basename else None

    # Walk (directory, path) pairs level by level, each once; ``mask`` has bit i set when targets[i]
    # reaches it, ``key`` is the path's components as bytes (the order a walk of the tree lists).
    # A directory's files between two of its subdirectories are one segment: nothing else of any
    # execution holding it comes between them, so segments sorted by their first path are each
    # execution's answer in path order (two versions of a directory never meet in one execution).
    level: dict[tuple[str, str], int] = defaultdict(int)
    keys: dict[tuple[str, str], tuple[bytes, ...]] = {}
    for i, target in enumerate(targets):
        level[(target.root, "")] |= 1 << i
        keys[(target.root, "")] = ()
    segments: list[tuple[tuple[bytes, ...], int, Run]] = []
    while level:
        below: dict[tuple[str, str], int] = defaultdict(int)
        below_keys: dict[tuple[str, str], tuple[bytes, ...]] = {}
        for node, mask in level.items():
            tree, prefix = node
            key = keys[node]
            segment: Run = []
            first = key
            for name, text, size, dg, child in listing.get(tree, ()):
                if child is not None:
                    if segment:
                        segments.append((first, mask, segment))
                        segment = []
                    down = (child, prefix + text + "/")
                    below[down] |= mask
                    below_keys[down] = key + (name,)
                    continue
                path = prefix + text
                if path_filter is not None and path_filter(path) is None:
                    continue
                if not segment:
                    first = key + (name,)
                segment.append((path, size, dg))  # type: ignore[arg-type]
            if segment:
                segments.append((first, mask, segment))
        level, keys = below, below_keys
    segments.sort(key=itemgetter(0))
    # Neighbouring segments held by the same executions make one run.
    runs: list[tuple[int, Run]] = []
    for _, mask, segment in segments:
        if runs and runs[-1][0] == mask:
            runs[-1][1].extend(segment)
        else:
            runs.append((mask, segment))
    return runs


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


__all__ = ["FindResult", "Found", "Match", "PathPattern", "Run", "Target", "check_digest", "compile_pattern", "find", "select_targets"]
