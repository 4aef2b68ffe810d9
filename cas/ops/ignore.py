"""Lists of gitignore-style patterns, decided by git's rules exactly.

``pathspec`` compiles each line (wildcards, ``**``, character classes, escapes, trailing spaces,
``!`` negation, comments); this module decides which line of a list speaks for a path the way
git's ``dir.c`` does:

* a pattern is tested against the path itself, never against its parents: a walk never looks
  inside an excluded directory, so whatever a parent's exclusion implies was already decided.
  (pathspec, made to filter flat lists of files, also lets ``foo`` match ``foo/bar``; that is why
  its ``GitIgnoreSpec`` is not used to decide, only its compiled patterns);
* a pattern ending in ``/`` matches directories only; one with a ``/`` elsewhere is anchored to
  the list's directory, one without matches the name at any depth below it;
* in a list, the last pattern that matches decides: ignored, or for a ``!`` pattern, not ignored.

Between lists (:func:`decide`) the first list with a matching pattern decides, so a caller passes
them highest precedence first (for ignore files: the deepest directory's first, as git does).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence

IGNORE_FILE_NAME = ".casignore"

# The tails pathspec (1.x) ends its regular expressions with: "foo" matches "foo" or, through the
# directory marker, anything below it; "foo/" only through the marker.
_MARK = "(?P<ps_d>/)"
_MARK_OR_END = f"(?:{_MARK}|$)"

Matcher = Callable[[str, bool], bool]
"""``(path relative to the list's directory, is a directory) -> the pattern matches it itself``."""


def _matcher(line: str, regex: re.Pattern[str]) -> Matcher:
    """How one compiled pattern matches a path itself (not through one of its parents)."""
    text = regex.pattern
    if text == ".":  # "*", "**": everything
        return lambda rel, is_dir: True
    if text == _MARK:
        components = line.removeprefix("!").strip("/ ").split("/")
        if components[-1] == "**" and "*" in components:
            # "**/*/**/": directories below the first level (pathspec writes it as it writes "*/";
            # in git "*/**" needs something below the component "*" matched).
            return lambda rel, is_dir: is_dir and "/" in rel
        # "*/", "**/", "**/**/": every directory.
        return lambda rel, is_dir: is_dir
    if text == "/":  # "**/*/**": everything below the first level
        return lambda rel, is_dir: "/" in rel
    if text.endswith(_MARK_OR_END):  # no trailing slash: the whole path, a file or a directory
        return lambda rel, is_dir: regex.fullmatch(rel + "/" if is_dir else rel) is not None
    if text.endswith(_MARK):
        body = line.rstrip(" ")
        if body.endswith("/**/"):
            # "a/**/": directories strictly below a (pathspec writes it as it writes "/a/").
            return lambda rel, is_dir: is_dir and regex.search(rel) is not None
        # "a/", "a/b/": directories only.
        return lambda rel, is_dir: is_dir and regex.fullmatch(rel + "/") is not None
    if text.endswith("/"):
        # "a/**": everything strictly below a; matched on the path without a trailing slash, the
        # "/" the expression ends with can only be one inside it.
        return lambda rel, is_dir: regex.search(rel) is not None
    raise RuntimeError(f"unexpected expression {text!r} from pathspec for pattern {line!r}; "
                       "this version of pathspec is not supported")


_ANY_DIRS = "^(?:.+/)?"


def _name_expression(line: str, text: str) -> str | None:
    """For a pattern that names one component at any depth (no ``/`` but a trailing one), the
    expression matching that component (``name``, or ``name/`` for a directory) exactly; None for
    any other pattern."""
    body = line.removeprefix("!")
    if "/" in body.rstrip("/") or not text.startswith(_ANY_DIRS):
        return None
    rest = text[len(_ANY_DIRS):]
    if rest.endswith((_MARK_OR_END, _MARK)):
        return rest
    return None


def _as_git_reads(line: str, from_file: bool) -> str:
    """The pattern as git uses it. A line of a file loses a carriage return before the newline and
    trailing spaces not escaped with a backslash; a pattern given as such (``--exclude``) keeps
    them, as ``git ls-files -x`` does. pathspec strips any trailing whitespace itself, so a last
    character that is whitespace git keeps is written as a one character class, which matches the
    same and is not stripped. Three or more asterisks making up a whole component match as two do
    in git's wildmatch (pathspec takes them as one)."""
    if from_file:
        line = _trim_trailing_spaces(line.removesuffix("\r"))
    if line and line[-1].isspace() and not line.endswith("\\ "):
        body = line[:-1]
        escapes = len(body) - len(body.rstrip("\\"))
        if escapes % 2:
            body = body[:-1]  # an escaped tab is a tab
        line = f"{body}[{line[-1]}]"
    if "***" in line:
        negation = "!" if line.startswith("!") else ""
        parts = line[len(negation):].split("/")
        line = negation + "/".join("**" if len(p) > 2 and p.strip("*") == "" else p for p in parts)
    return line


def _trim_trailing_spaces(line: str) -> str:
    """git's ``trim_trailing_spaces``: drop the trailing spaces a backslash does not escape."""
    end = len(line)
    i, last_space = 0, None
    while i < end:
        ch = line[i]
        if ch == " ":
            if last_space is None:
                last_space = i
        elif ch == "\\":
            i += 1
            if i == end:
                break
            last_space = None
        else:
            last_space = None
        i += 1
    return line[:last_space] if last_space is not None else line


def _pattern_list(lines: tuple[str, ...], base: str, source: str, from_file: bool) -> PatternList:
    return PatternList(lines, base=base, source=source, from_file=from_file)


class PatternList:
    """One list of gitignore-style patterns, relative to the directory ``base`` ('' for the root
    of the walk; a path with ``/`` separators otherwise)."""

    __slots__ = ("_from_file", "_lines", "_names", "_others", "_prefix", "_rules", "base", "source")

    def __init__(self, lines: Iterable[str], *, base: str = "", source: str = "", from_file: bool = False) -> None:
        """``from_file``: the lines of a file, which lose trailing spaces and carriage returns as
        git reads them; otherwise patterns given one by one, kept as they are."""
        lines = tuple(lines)
        self._lines, self._from_file = lines, from_file  # to be pickled as what it was made from
        self.base = base
        self.source = source
        self._prefix = base + "/" if base else ""
        rules: list[tuple[bool, Matcher | re.Pattern[str]]] = []
        names: list[str] = []
        if lines:  # pathspec (and the asyncio it loads: 36 ms) only for patterns: most walks have none
            from pathspec.patterns.gitignore.base import GitIgnorePatternError
            from pathspec.patterns.gitignore.spec import GitIgnoreSpecPattern
        for line in lines:
            if from_file and line.startswith("\ufeff") and not rules:
                line = line[1:]  # git skips a UTF-8 byte order mark at the start of the file
            line = _as_git_reads(line, from_file)
            try:
                pattern = GitIgnoreSpecPattern(line)
            except GitIgnorePatternError:
                continue  # git ignores a pattern it cannot use (e.g. "!" alone)
            if pattern.include is None or pattern.regex is None:
                continue  # blank line, comment, invalid range
            name = _name_expression(line, pattern.regex.pattern)
            if name is not None:
                rules.append((pattern.include, re.compile(name)))
                names.append(name.replace(_MARK, "/"))
            else:
                rules.append((pattern.include, _matcher(line, pattern.regex)))
        rules.reverse()  # the last matching pattern decides: try them from the end
        self._rules = tuple(rules)
        self._others = tuple(rule for rule in rules if not isinstance(rule[1], re.Pattern))
        # Most patterns name one component at any depth ("*.pyc", "build/"): they are matched
        # against the last component only, first all at once (a name none of them matches, most
        # names, then costs one match for all of them).
        self._names = re.compile("|".join(f"(?:{n})" for n in names)) if names else None

    @classmethod
    def from_text(cls, text: str, *, base: str = "", source: str = "") -> PatternList:
        """The patterns of an ignore file's text: one per line (``\\n``-separated, as git reads them)."""
        return cls(text.split("\n"), base=base, source=source, from_file=True)

    def __reduce__(self) -> tuple[object, ...]:
        """Pickled as its lines (the compiled rules hold functions that do not pickle): a parallel
        snapshot hands a directory's ignore files to a worker process."""
        return _pattern_list, (self._lines, self.base, self.source, self._from_file)

    def __bool__(self) -> bool:
        return bool(self._rules)

    def __len__(self) -> int:
        return len(self._rules)

    def decide(self, path: str, is_dir: bool) -> bool | None:
        """True if the last pattern matching ``path`` (relative to the walk's root, and below
        :attr:`base`) says ignored, False if it is a ``!`` pattern, None if none matches."""
        rel = path[len(self._prefix):] if self._prefix else path
        rules = self._rules
        name = ""
        if self._names is not None:
            name = rel[rel.rfind("/") + 1:] + ("/" if is_dir else "")
            if self._names.fullmatch(name) is None:
                rules = self._others  # no pattern naming a component matches this one
        for ignored, matches in rules:
            if isinstance(matches, re.Pattern):
                if matches.fullmatch(name) is not None:
                    return ignored
            elif matches(rel, is_dir):
                return ignored
        return None


def decide(lists: Sequence[PatternList], path: str, is_dir: bool) -> tuple[bool, PatternList | None]:
    """Whether ``path`` is ignored by ``lists`` (highest precedence first), and the list that
    decided (None when no pattern matched)."""
    for patterns in lists:
        verdict = patterns.decide(path, is_dir)
        if verdict is not None:
            return verdict, patterns
    return False, None


__all__ = ["IGNORE_FILE_NAME", "PatternList", "decide"]
