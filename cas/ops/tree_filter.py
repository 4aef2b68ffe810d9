"""Choosing part of a stored tree: ``restore --include/--exclude`` and ``ls --include/--exclude``.

    store.restore("run-42", "out", filter=TreeFilter(include=["*.py"], exclude=["tests/"]))

The patterns are gitignore-style (matched as :mod:`cas.ops.ignore` says) and relative to the
snapshot's root, whatever part of it is listed or restored: a path as ``cas ls -r`` prints it.
The rules are the snapshot's (:mod:`cas.ops.snapshot.filter`), without ignore files:

* an entry is **excluded** when the last ``--exclude`` pattern matching it is not a ``!`` one; an
  excluded directory is not entered, so nothing below it comes back;
* with ``--include`` patterns, an entry is **included** when the last include pattern matching it
  is not a ``!`` one or, when none matches it, its directory was included. A file or symlink that
  is not included is left out; a directory that is not included is kept only if something in it
  is (so the directories leading to what was chosen are restored, and listed).

Exclusion wins over inclusion. ``ls`` with a filter lists exactly what ``restore`` with the same
filter writes.
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

from cas.errors import ConfigurationError
from cas.format.trees import DIR, Entry
from cas.ops.browse import TreeSource


class _Verdict(enum.Enum):
    EXCLUDED = "excluded"
    INCLUDED = "included"
    PENDING = "pending"
    """A directory no include pattern chose: kept only if something in it is."""


@dataclass(frozen=True)
class TreeFilter:
    """Which entries of a stored tree a restore writes or a listing shows (module docstring)."""

    include: Sequence[str] = ()
    exclude: Sequence[str] = ()

    def __post_init__(self) -> None:
        for name in ("include", "exclude"):
            value = getattr(self, name)
            if isinstance(value, (str, bytes)) or not all(isinstance(v, str) for v in value):
                raise ConfigurationError(f"{name} must be a list of strings, not {value!r}")
            object.__setattr__(self, name, tuple(value))

    def __bool__(self) -> bool:
        return bool(self.include or self.exclude)

    def rules(self) -> TreeRules:
        return TreeRules(self)


class TreeRules:
    """A :class:`TreeFilter`'s patterns, compiled."""

    def __init__(self, spec: TreeFilter) -> None:
        # Here, not at the top: pathspec's import is a restore's largest after the engine's, and a
        # restore without patterns never compiles one.
        from cas.ops.ignore import PatternList

        self._exclude = PatternList(spec.exclude, source="--exclude")
        self._include = PatternList(spec.include, source="--include") if spec.include else None

    @property
    def includes(self) -> bool:
        return self._include is not None

    def verdict(self, path: str, is_dir: bool, parent_included: bool) -> _Verdict:
        if self._exclude.decide(path, is_dir):
            return _Verdict.EXCLUDED
        if self._include is None:
            return _Verdict.INCLUDED
        own = self._include.decide(path, is_dir)
        if (parent_included if own is None else own):
            return _Verdict.INCLUDED
        return _Verdict.PENDING if is_dir else _Verdict.EXCLUDED

    def inside(self, dirs: Sequence[str]) -> bool | None:
        """For the directory reached through ``dirs`` (its path's components): whether it was
        included (what its entries inherit), or None if it or a directory above it is excluded."""
        included = self._include is None
        path = ""
        for name in dirs:
            path = f"{path}/{name}" if path else name
            verdict = self.verdict(path, True, included)
            if verdict is _Verdict.EXCLUDED:
                return None
            included = verdict is _Verdict.INCLUDED
        return included

    def walk(
        self, repo: TreeSource, entries: Iterable[Entry], prefix: str, included: bool, *, recursive: bool = True
    ) -> Iterator[tuple[str, Entry]]:
        """``(path, entry)`` of what the filter keeps of ``entries`` (a directory's, their paths
        starting with ``prefix``, inheriting ``included``) and, ``recursive``, below them: depth
        first in name order, a directory before its contents. Not ``recursive``, only ``entries``
        themselves; a directory nothing chose is then searched until something kept is found in it."""
        stack = [_Frame(iter(entries), prefix, included, None, True)]
        while stack:
            top = stack[-1]
            e = next(top.entries, None)
            if e is None:
                stack.pop()
                continue
            path = top.prefix + e.name
            is_dir = e.type == DIR
            verdict = self.verdict(path, is_dir, top.included)
            if verdict is _Verdict.EXCLUDED:
                continue
            if verdict is _Verdict.PENDING:
                # Kept only once something inside is: held as the header of its frame until then.
                stack.append(_Frame(iter(repo.read_tree(e.tree)), path + "/", False, (path, e),
                                    top.shown and recursive))
                continue
            # Kept: so are the directories above it that were waiting, shown if their level is.
            for parent, frame in itertools.pairwise(stack):
                if frame.header is not None:
                    if parent.shown:
                        yield frame.header
                    frame.header = None
            if not top.shown:
                # Searching a directory nothing chose (not recursive): it is kept, stop looking.
                while not stack[-1].shown:
                    stack.pop()
                continue
            yield path, e
            if is_dir and recursive:
                stack.append(_Frame(iter(repo.read_tree(e.tree)), path + "/", True, None, True))

    def predicate(self, repo: TreeSource, top: Sequence[Entry], base: str, base_included: bool
                  ) -> Callable[[str, Entry], bool]:
        """For :class:`~cas.ops.restore.walk.Restorer`: whether to restore an entry, given its path
        relative to the destination. ``top`` are the entries restored into the destination and
        ``base`` (``''`` or ending in ``/``) their directory's path in the snapshot, which
        ``base_included`` says was included. The restorer asks about a directory's entries when it
        enters the directory, so a path's parent was always asked about before it."""
        kept_dirs: set[str] | None = None
        if self._include is not None:
            # Directories nothing chose are kept if something inside them is: known only by
            # looking ahead, one walk of the trees first (exclusion alone needs none).
            kept_dirs = {path for path, e in self.walk(repo, top, base, base_included) if e.type == DIR}
        included: dict[str, bool] = {base[:-1]: base_included}

        def keep(rel: str, entry: Entry) -> bool:
            path = base + rel
            verdict = self.verdict(path, entry.type == DIR, included.get(path.rpartition("/")[0], base_included))
            if verdict is _Verdict.EXCLUDED:
                return False
            if entry.type == DIR:
                if kept_dirs is not None and path not in kept_dirs:
                    return False
                included[path] = verdict is _Verdict.INCLUDED
            return True

        return keep


@dataclass(eq=False)
class _Frame:
    """A directory :meth:`TreeRules.walk` is in."""

    entries: Iterator[Entry]
    prefix: str
    included: bool
    header: tuple[str, Entry] | None
    """The directory's own entry while it waits for something kept inside it (not yet yielded)."""
    shown: bool
    """Whether kept entries at this depth are yielded (not while only searching, not recursive)."""


__all__ = ["TreeFilter", "TreeRules"]
