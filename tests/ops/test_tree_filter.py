"""Restore and ls selection through the API: include/exclude patterns over a stored tree.

The property: for any tree and patterns, a restore with a filter writes exactly what ``ls`` with
that filter lists, and exactly what a snapshot with the same patterns would have stored.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cas import ConfigurationError, SnapshotFilter, Store, TreeFilter
from tests.ops.test_ignore import _trees, build, everything
from tests.treeutil import describe

_ids = itertools.count()


@pytest.fixture
def taken(store: Store, tmp_path: Path) -> Store:
    build(tmp_path / "src", {"a.py": "file", "b.txt": "file", "pkg/c.py": "file", "pkg/d.bin": "file",
                             "pkg/sub/e.py": "file", "docs/f.md": "file", "empty": "dir", "link": "link"})
    store.snapshot(tmp_path / "src", "run")
    return store


def listed(store: Store, path: str = "", *, recursive: bool = True, **spec: list[str]) -> list[str]:
    return [p for p, _ in store.ls("run", path, recursive=recursive, filter=TreeFilter(**spec))]


def restored(store: Store, tmp_path: Path, path: str | None = None, **spec: list[str]) -> set[str]:
    dest = tmp_path / f"out-{next(_ids)}"
    store.restore("run", dest, path, filter=TreeFilter(**spec))
    return everything(dest)


def test_include_restores_what_matches_and_the_directories_to_it(taken: Store, tmp_path: Path) -> None:
    assert restored(taken, tmp_path, include=["*.py"]) == {"a.py", "pkg", "pkg/c.py", "pkg/sub", "pkg/sub/e.py"}
    assert listed(taken, include=["*.py"]) == ["a.py", "pkg", "pkg/c.py", "pkg/sub", "pkg/sub/e.py"]


def test_exclude_wins_and_prunes_directories(taken: Store, tmp_path: Path) -> None:
    assert restored(taken, tmp_path, include=["*.py", "docs/"], exclude=["sub/"]) == {
        "a.py", "pkg", "pkg/c.py", "docs", "docs/f.md"}
    assert restored(taken, tmp_path, exclude=["pkg/*", "!pkg/d.bin", "link"]) == {
        "a.py", "b.txt", "pkg", "pkg/d.bin", "docs", "docs/f.md", "empty"}


def test_patterns_are_relative_to_the_snapshot_root_with_path(taken: Store, tmp_path: Path) -> None:
    assert restored(taken, tmp_path, "pkg", include=["/pkg/sub/"]) == {"pkg", "pkg/sub", "pkg/sub/e.py"}
    assert restored(taken, tmp_path, "pkg", exclude=["/pkg/*.py"]) == {"pkg", "pkg/d.bin", "pkg/sub", "pkg/sub/e.py"}
    assert restored(taken, tmp_path, "pkg/c.py", include=["c.py"]) == {"c.py"}
    # What the --path names may itself be left out: nothing is restored.
    assert restored(taken, tmp_path, "pkg/sub", exclude=["pkg/"]) == set()
    assert restored(taken, tmp_path, "pkg/c.py", include=["*.md"]) == set()


def test_ls_not_recursive_shows_directories_only_if_something_in_them_is_kept(taken: Store) -> None:
    assert listed(taken, recursive=False, include=["*.py"]) == ["a.py", "pkg"]
    assert listed(taken, "pkg", recursive=False, include=["e.py"]) == ["pkg/sub"]
    assert listed(taken, "pkg", recursive=False, exclude=["sub"]) == ["pkg/c.py", "pkg/d.bin"]
    assert listed(taken, "pkg/c.py", exclude=["*.py"]) == []
    assert listed(taken, "pkg/c.py", include=["*.py"]) == ["pkg/c.py"]
    assert listed(taken, "pkg", include=["/pkg"]) == ["pkg/c.py", "pkg/d.bin", "pkg/sub", "pkg/sub/e.py"]


def test_empty_filter_is_everything(taken: Store, tmp_path: Path) -> None:
    assert listed(taken) == [p for p, _ in taken.ls("run", recursive=True)]
    assert restored(taken, tmp_path) == everything(tmp_path / "src")


@pytest.mark.parametrize("bad", [{"include": "*.py"}, {"exclude": [None]}])
def test_bad_filters_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError):
        TreeFilter(**bad)  # type: ignore[arg-type]


_SEGMENTS = ["a", "b", "foo", "*", "**", "x.py", "*.py", "f*", "y.log", "[ab]"]
_patterns = st.lists(
    st.builds(lambda neg, lead, segs, trail: ("!" if neg else "") + ("/" if lead else "") + "/".join(segs)
              + ("/" if trail else ""),
              st.booleans(), st.booleans(), st.lists(st.sampled_from(_SEGMENTS), min_size=1, max_size=3), st.booleans()),
    max_size=3,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tree=_trees(), include=_patterns, exclude=_patterns)
def test_restore_ls_and_snapshot_select_the_same(store: Store, tmp_path: Path, tree: dict[str, str],
                                                 include: list[str], exclude: list[str]) -> None:
    case = next(_ids)
    src = tmp_path / f"src-{case}"
    build(src, tree)
    full, chosen = f"full-{case}", f"chosen-{case}"
    store.snapshot(src, full, filter=SnapshotFilter(ignore_files=False))
    store.snapshot(src, chosen, filter=SnapshotFilter(include=include, exclude=exclude, ignore_files=False))
    spec = TreeFilter(include=include, exclude=exclude)
    lists = [p for p, _ in store.ls(full, recursive=True, filter=spec)]
    dest = tmp_path / f"out-{case}"
    store.restore(full, dest, filter=spec)
    assert set(lists) == everything(dest) == {p for p, _ in store.ls(chosen, recursive=True)}
    assert len(lists) == len(set(lists))
    # The restored entries are the stored ones, bytes and metadata.
    source = describe(str(src))
    assert describe(str(dest)) == {p: source[p] for p in lists}
    top = [p for p, _ in store.ls(full, recursive=False, filter=spec)]
    assert top == [p for p in lists if "/" not in p]
    for directory in sorted(p for p in lists if source[p][0] == "dir")[:2]:
        under = restored_under(store, full, tmp_path, directory, spec)
        base = directory.rpartition("/")[0]
        assert under == {p[len(base) + 1:] if base else p for p in lists if p == directory or p.startswith(directory + "/")}


def restored_under(store: Store, execution_id: str, tmp_path: Path, path: str, spec: TreeFilter) -> set[str]:
    dest = tmp_path / f"part-{next(_ids)}"
    store.restore(execution_id, dest, path, filter=spec)
    return everything(dest)


def test_restore_into_place_with_a_filter_keeps_modes_and_times(taken: Store, tmp_path: Path) -> None:
    dest = tmp_path / "out"
    taken.restore("run", dest, filter=TreeFilter(include=["pkg/"], exclude=["*.bin"]))
    src = describe(str(tmp_path / "src"))
    got = describe(str(dest))
    assert set(got) == {"pkg", "pkg/c.py", "pkg/sub", "pkg/sub/e.py"}
    assert all(got[p] == src[p] for p in got)
    assert os.listdir(dest) == ["pkg"]


def test_delete_with_a_filter_is_refused_and_changes_nothing(taken: Store, tmp_path: Path) -> None:
    """--delete removes what the execution lacks; with --include/--exclude it would also remove what
    the selection left out, so the combination is refused before anything is written or removed."""
    dest = tmp_path / "dest"
    taken.restore("run", dest)
    (dest / "mine.txt").write_text("not from the execution")
    before = describe(dest)
    with pytest.raises(ConfigurationError, match="selection"):
        taken.restore("run", dest, overwrite=True, delete=True, filter=TreeFilter(include=["*.py"]))
    assert describe(dest) == before
