""".casignore behaves as .gitignore: what a snapshot stores is exactly what git does not ignore.

Every case builds a tree on disk, snapshots it through the Store and lists what was stored, then
asks git itself (``git check-ignore`` on a copy of the tree where each ``.casignore`` is named
``.gitignore``, and ``--ignore-file`` is ``core.excludesFile``) which paths it ignores.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from cas import SnapshotFilter, Store
from cas.ops.ignore import PatternList

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
_ids = itertools.count()

Tree = Mapping[str, str]
"""Path -> "dir", "file", "link" (to "target"), or the text of an ignore file (a path ending in
.casignore). Parent directories are made as needed."""


def build(root: Path, tree: Tree) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for path, what in tree.items():
        full = root / path
        if what == "dir":
            full.mkdir(parents=True, exist_ok=True)
            continue
        full.parent.mkdir(parents=True, exist_ok=True)
        if what == "link":
            os.symlink("target", full)
        elif path.endswith(".casignore"):
            full.write_text(what)
        else:
            full.write_text(path)


def everything(root: Path) -> set[str]:
    out = set()
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            out.add(os.path.relpath(os.path.join(dirpath, name), root))
    return out


def git_kept(root: Path, extra: Path | None = None) -> set[str]:
    """The paths under ``root`` git does not ignore, with ``.casignore`` files read as ``.gitignore``
    and ``extra`` as ``core.excludesFile``."""
    with tempfile.TemporaryDirectory() as work:
        mirror = Path(work) / "tree"
        shutil.copytree(root, mirror, symlinks=True)
        for dirpath, _dirs, files in os.walk(mirror):
            if ".casignore" in files:
                os.rename(os.path.join(dirpath, ".casignore"), os.path.join(dirpath, ".gitignore"))
        git_dir = Path(work) / "git"
        subprocess.run(["git", "init", "-q", "--bare", str(git_dir)], check=True)
        paths = sorted(everything(mirror))
        config = ["-c", f"core.excludesFile={extra if extra is not None else os.devnull}"]
        proc = subprocess.run(
            ["git", *config, f"--git-dir={git_dir}", f"--work-tree={mirror}", "check-ignore", "--no-index",
             "--stdin", "-z"],
            input="".join(p + "\0" for p in paths), capture_output=True, text=True, cwd=mirror,
            env={**os.environ, "GIT_CONFIG_NOSYSTEM": "1", "HOME": work}, check=False,  # 1: none ignored
        )
        assert proc.returncode in (0, 1), proc.stderr
        ignored = {p for p in proc.stdout.split("\0") if p}
    return {_cas_name(p) for p in paths if p not in ignored}


def _cas_name(path: str) -> str:
    head, _, name = path.rpartition("/")
    return f"{head}/.casignore" if head and name == ".gitignore" else ".casignore" if name == ".gitignore" else path


def cas_kept(store: Store, root: Path, **options: object) -> set[str]:
    execution_id = f"run-{next(_ids)}"
    store.snapshot(root, execution_id, filter=SnapshotFilter(**options), use_files_cache=False)  # type: ignore[arg-type]
    return {path for path, _entry in store.ls(execution_id, recursive=True)}


def check(store: Store, tmp_path: Path, tree: Tree, extra: str | None = None) -> set[str]:
    """Snapshot ``tree`` and compare with git; returns what was stored."""
    return check_all(store, tmp_path, tree, extra)[0]


def check_all(store: Store, tmp_path: Path, tree: Tree, extra: str | None = None) -> tuple[set[str], set[str]]:
    """Snapshot ``tree`` and compare with git; returns what was stored and every path of the tree."""
    root = tmp_path / f"tree-{next(_ids)}"
    build(root, tree)
    extra_path = None
    if extra is not None:
        extra_path = tmp_path / f"extra-{next(_ids)}"
        extra_path.write_text(extra)
    stored = cas_kept(store, root, extra_ignore_files=[str(extra_path)] if extra_path else [])
    assert stored == git_kept(root, extra_path)
    return stored, everything(root)


class Only(frozenset[str]):
    """In DOC_EXAMPLES: the paths stored (when that is shorter to write than those ignored)."""


# -- every example in git's gitignore(5): PATTERN FORMAT and EXAMPLES ------------------------------

_FILES = ["hello.txt", "hello.c", "a/hello.java", "foo/test.json", "foo/bar/hello.c", "doc/frotz/x",
          "a/doc/frotz/y", "frotz/z", "a/frotz/w", "abc/f", "abc/d/e/g", "a/b", "a/x/b", "a/x/y/b", "x/a/b",
          "#file", "!important!.txt", "trail", "trail ", "q/foo/bar", "foo/baz/bar", "bar", "d/foo.o",
          "d/lib.a", "Documentation/foo.html", "Documentation/gitignore.html", "Documentation/x/y.html"]

# (patterns in the root's .casignore, or {dir: patterns}, paths git's documentation says are
# ignored among _FILES and their directories, with a "/" after each directory, or Only(those stored)).
DOC_EXAMPLES: list[tuple[str | dict[str, str], set[str]]] = [
    # "A blank line matches no files"; "A line starting with # serves as a comment."
    ("\n# hello.txt\n\n", set()),
    # "Put a backslash in front of the first hash for patterns that begin with a hash."
    ("\\#file", {"#file"}),
    # "Trailing spaces are ignored unless they are quoted with backslash."
    ("trail   ", {"trail"}),
    ("trail\\ ", {"trail "}),
    # "An optional prefix "!" which negates the pattern; any matching file excluded by a previous
    # pattern will become included again."
    ("hello.*\n!hello.c", {"hello.txt", "a/hello.java"}),
    # "It is not possible to re-include a file if a parent directory of that file is excluded."
    ("foo/\n!foo/test.json", {"foo/", "foo/test.json", "foo/bar/", "foo/bar/hello.c", "foo/baz/", "foo/baz/bar",
                             "q/foo/", "q/foo/bar"}),
    # "Put a backslash in front of the first "!" for patterns that begin with a literal "!"."
    ("\\!important!.txt", {"!important!.txt"}),
    # "If there is a separator at the beginning or middle ... relative to the directory level of the
    # particular .gitignore file itself. Otherwise the pattern may also match at any level below."
    ({"a": "/hello.java"}, {"a/hello.java"}),
    ({"a": "b"}, {"a/b", "a/x/b", "a/x/y/b"}),
    # "a pattern doc/frotz/ matches doc/frotz directory, but not a/doc/frotz directory; however
    # frotz/ matches frotz and a/frotz that is a directory."
    ("doc/frotz/", {"doc/frotz/", "doc/frotz/x"}),
    ("frotz/", {"doc/frotz/", "doc/frotz/x", "a/doc/frotz/", "a/doc/frotz/y", "frotz/", "frotz/z", "a/frotz/",
                "a/frotz/w"}),
    # "An asterisk "*" matches anything except a slash. The character "?" matches any one character
    # except "/". The range notation, e.g. [a-zA-Z], can be used to match one of the characters in a range."
    ("hell?.[c-d]", {"hello.c", "foo/bar/hello.c"}),
    ("a/*", {"a/hello.java", "a/doc/", "a/doc/frotz/", "a/doc/frotz/y", "a/frotz/", "a/frotz/w", "a/b", "a/x/",
             "a/x/b", "a/x/y/", "a/x/y/b"}),
    # ""**/foo" matches file or directory "foo" anywhere, the same as pattern "foo". "**/foo/bar"
    # matches file or directory "bar" anywhere that is directly under directory "foo"."
    ("**/frotz", {"doc/frotz/", "doc/frotz/x", "a/doc/frotz/", "a/doc/frotz/y", "frotz/", "frotz/z", "a/frotz/",
                  "a/frotz/w"}),
    ("**/foo/bar", {"foo/bar/", "foo/bar/hello.c", "q/foo/bar"}),
    # ""abc/**" matches all files inside directory "abc" ... with infinite depth."
    ("abc/**", {"abc/f", "abc/d/", "abc/d/e/", "abc/d/e/g"}),
    # ""a/**/b" matches "a/b", "a/x/b", "a/x/y/b" and so on."
    ("a/**/b", {"a/b", "a/x/b", "a/x/y/b"}),
    # "Other consecutive asterisks are considered regular asterisks."
    ("hel***.txt", {"hello.txt"}),
    # EXAMPLES: "hello.*" matches any file or directory whose name begins with hello.; "/hello.*"
    # matches hello.txt, hello.c but not a/hello.java.
    ("hello.*", {"hello.txt", "hello.c", "a/hello.java", "foo/bar/hello.c"}),
    ("/hello.*", {"hello.txt", "hello.c"}),
    # "The pattern foo/ will match a directory foo and paths underneath it, but will not match a
    # regular file or a symbolic link foo" (see test_directory_patterns_skip_files_and_symlinks).
    ("foo/", {"foo/", "foo/test.json", "foo/bar/", "foo/bar/hello.c", "foo/baz/", "foo/baz/bar", "q/foo/",
              "q/foo/bar"}),
    # "The pattern doc/frotz and /doc/frotz have the same effect in any .gitignore file."
    ("doc/frotz", {"doc/frotz/", "doc/frotz/x"}),
    ("/doc/frotz", {"doc/frotz/", "doc/frotz/x"}),
    # "The pattern "foo/*", matches "foo/test.json" (a regular file), "foo/bar" (a directory), but it
    # does not match "foo/bar/hello.c"" (ignored all the same: its directory is).
    ("foo/*", {"foo/test.json", "foo/bar/", "foo/bar/hello.c", "foo/baz/", "foo/baz/bar"}),
    # "exclude everything except directory foo/bar"
    ("/*\n!/foo\n/foo/*\n!/foo/bar", Only({"foo/", "foo/bar/", "foo/bar/hello.c"})),
    # The earlier example: objects and archives anywhere, html files in Documentation but foo.html.
    ({"": "*.[oa]", "Documentation": "*.html\n!foo.html"}, {"d/foo.o", "d/lib.a", "Documentation/gitignore.html",
                                                         "Documentation/x/y.html"}),
]


def _doc_tree(patterns: str | dict[str, str]) -> dict[str, str]:
    tree = {path: "file" for path in _FILES}
    files = patterns if isinstance(patterns, dict) else {"": patterns}
    for where, text in files.items():
        tree[f"{where}/.casignore" if where else ".casignore"] = text
    return tree


@pytest.mark.parametrize("patterns, ignored", DOC_EXAMPLES, ids=[repr(p)[:40] for p, _ in DOC_EXAMPLES])
def test_gitignore_documentation_examples(store: Store, tmp_path: Path, patterns: str | dict[str, str],
                                          ignored: set[str]) -> None:
    stored, all_paths = check_all(store, tmp_path, _doc_tree(patterns))
    if isinstance(ignored, Only):
        assert stored == {p.rstrip("/") for p in ignored}
    else:
        assert all_paths - stored == {p.rstrip("/") for p in ignored}


def test_directory_patterns_skip_files_and_symlinks(store: Store, tmp_path: Path) -> None:
    stored = check(store, tmp_path, {"foo": "link", "x/foo": "file", "y/foo": "dir", "y/foo/z": "file",
                                     ".casignore": "foo/"})
    assert stored == {".casignore", "foo", "x", "x/foo", "y"}


def test_nested_files_override_outer_ones(store: Store, tmp_path: Path) -> None:
    stored = check(store, tmp_path, {
        ".casignore": "*.log\nbuild/\n", "keep/.casignore": "!*.log\n", "keep/a.log": "file", "b.log": "file",
        "keep/deep/c.log": "file", "keep/deep/.casignore": "c.log\n", "keep/build/x": "file",
        "other/.casignore": "!build/\n", "other/build/y": "file",
    })
    assert stored == {".casignore", "keep", "keep/.casignore", "keep/a.log", "keep/deep", "keep/deep/.casignore",
                      "other", "other/.casignore", "other/build", "other/build/y"}


@pytest.mark.parametrize("stars", [1, 2, 3])
def test_directory_patterns_of_wildcards_alone(store: Store, tmp_path: Path, stars: int) -> None:
    # Every directory pattern made of "*" and "**" components (pathspec writes "**/*/**/", which
    # needs a directory below the first level, as it writes "*/"), against git.
    tree = {"f": "file", "b/f": "file", "b/c/f": "file", "b/c/d/f": "file"}
    for parts in itertools.product(["*", "**"], repeat=stars):
        check(store, tmp_path, {**tree, ".casignore": "/".join(parts) + "/"})


def test_an_ignore_file_can_ignore_itself(store: Store, tmp_path: Path) -> None:
    assert check(store, tmp_path, {"sub/.casignore": ".*ignore\nx", "sub/x": "file", "sub/y": "file"}) == {
        "sub", "sub/y"}


def test_extra_ignore_file_ranks_below_the_trees_own(store: Store, tmp_path: Path) -> None:
    stored = check(store, tmp_path, {"a.tmp": "file", "b.tmp": "file", "sub/c.tmp": "file", "sub/.casignore":
                                     "!c.tmp"}, extra="*.tmp\n/sub/c.tmp")
    assert stored == {"sub", "sub/.casignore", "sub/c.tmp"}


def test_no_ignore_files_stores_everything(store: Store, tmp_path: Path) -> None:
    root = tmp_path / "t"
    build(root, {".casignore": "*", "a": "file", "d/b": "file"})
    assert cas_kept(store, root, ignore_files=False) == {".casignore", "a", "d", "d/b"}


def test_an_ignore_file_that_is_a_symlink_is_not_followed(store: Store, tmp_path: Path) -> None:
    root = tmp_path / "t"
    build(root, {"a": "file", "patterns": "file"})
    (root / "patterns").write_text("a\n")
    os.symlink("patterns", root / ".casignore")
    assert cas_kept(store, root) == {".casignore", "a", "patterns"}


def test_byte_order_mark_carriage_returns_and_tabs_as_git_reads_them(store: Store, tmp_path: Path) -> None:
    # git skips a UTF-8 BOM and a carriage return before the newline, and keeps a trailing tab.
    stored = check(store, tmp_path, {".casignore": "\ufeffa\r\nb \r\nc\t\nd\\\t\n", "a": "file", "b": "file",
                                     "c": "file", "c\t": "file", "d": "file", "d\t": "file"})
    assert stored == {".casignore", "c", "d"}
    assert PatternList.from_text("\ufeffa").decide("a", False) is True


# -- random trees and random pattern files, against git ----------------------------------------------

_NAMES = ["a", "b", "foo", "x.py", "y.log", "#c", "!d", "sp ", ".h", "ab", "[x]", "t\t", "*", "a b"]
_SEGMENTS = ["a", "b", "foo", "*", "**", "?", "*.py", "f*", "[ab]", "[!a]*", "x.py", "y.log", "\\#c", "\\!d", "sp\\ ",
             "sp", ".*", "a*b", "***", "\\[x]", "[a-c]*", "t\t", "t\\\t", "\\*", "a?b", "a\\ b", "[!.]*"]


@st.composite
def _trees(draw: st.DrawFn, prefix: str = "", depth: int = 0) -> dict[str, str]:
    tree: dict[str, str] = {}
    for name in draw(st.lists(st.sampled_from(_NAMES), max_size=4 if depth < 2 else 2, unique=True)):
        kind = draw(st.sampled_from(["file", "file", "link", "dir", "dir"] if depth < 3 else ["file", "link"]))
        path = prefix + name
        if kind == "dir":
            tree[path] = "dir"
            tree.update(draw(_trees(path + "/", depth + 1)))
        else:
            tree[path] = kind
    return tree


_lines = st.one_of(
    st.builds(
        lambda neg, lead, segs, trail, spaces: ("!" if neg else "") + ("/" if lead else "") + "/".join(segs)
        + ("/" if trail else "") + " " * spaces,
        st.booleans(), st.booleans(), st.lists(st.sampled_from(_SEGMENTS), min_size=1, max_size=3),
        st.booleans(), st.sampled_from([0, 0, 0, 1, 2]),
    ),
    st.sampled_from(["", "# comment", "!", "/", "*", "**", "**/", "*/", "!*/", "!**/"]),
)
_pattern_files = st.builds(lambda lines, newline: newline.join(lines), st.lists(_lines, min_size=1, max_size=5),
                           st.sampled_from(["\n", "\n", "\r\n"]))


@st.composite
def _trees_with_ignore_files(draw: st.DrawFn) -> tuple[dict[str, str], str | None]:
    tree = draw(_trees())
    dirs = [""] + sorted(p for p, kind in tree.items() if kind == "dir")
    for where in draw(st.lists(st.sampled_from(dirs), max_size=3, unique=True)):
        tree[f"{where}/.casignore" if where else ".casignore"] = draw(_pattern_files)
    extra = draw(st.one_of(st.none(), _pattern_files))
    return tree, extra


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=_trees_with_ignore_files())
def test_random_trees_and_patterns_match_git(store: Store, tmp_path: Path, case: tuple[dict[str, str], str | None]
                                             ) -> None:
    tree, extra = case
    check(store, tmp_path, tree, extra)


def git_files_kept(root: Path, extra: Path | None, excludes: list[str]) -> set[str]:
    """The files and symlinks under ``root`` that ``git ls-files --others`` lists with
    ``.casignore`` as the per-directory file, ``extra`` as ``--exclude-from`` and each of
    ``excludes`` as ``-x`` (git's order of precedence for those three is the one cas uses)."""
    with tempfile.TemporaryDirectory() as work:
        git_dir = Path(work) / "git"
        subprocess.run(["git", "init", "-q", "--bare", str(git_dir)], check=True)
        args = ["--exclude-per-directory=.casignore"] + ([f"--exclude-from={extra}"] if extra else [])
        args += [f"--exclude={pattern}" for pattern in excludes]
        proc = subprocess.run(
            ["git", f"--git-dir={git_dir}", f"--work-tree={root}", "ls-files", "--others", "-z", *args],
            capture_output=True, text=True, cwd=root, env={**os.environ, "GIT_CONFIG_NOSYSTEM": "1", "HOME": work},
            check=True,
        )
    return {p for p in proc.stdout.split("\0") if p}


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=_trees_with_ignore_files(), excludes=st.lists(_lines, max_size=3))
@example(case=({"a": "file", "b": "dir", ".casignore": "a", "b/.casignore": ""}, None), excludes=["a", "**/*/**/"])
def test_exclude_options_rank_above_ignore_files_as_in_git(store: Store, tmp_path: Path,
                                                          case: tuple[dict[str, str], str | None],
                                                          excludes: list[str]) -> None:
    tree, extra = case
    root = tmp_path / f"tree-{next(_ids)}"
    build(root, tree)
    extra_path = None
    if extra is not None:
        extra_path = tmp_path / f"extra-{next(_ids)}"
        extra_path.write_text(extra)
    execution_id = f"run-{next(_ids)}"
    store.snapshot(root, execution_id, use_files_cache=False, filter=SnapshotFilter(
        exclude=excludes, extra_ignore_files=[str(extra_path)] if extra_path else []))
    files = {path for path, entry in store.ls(execution_id, recursive=True) if entry.type != "dir"}
    assert files == git_files_kept(root, extra_path, excludes)
