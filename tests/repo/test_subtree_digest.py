"""Subtree digests: the compiled helper's walk of a directory (``cas.native.files.subtree_digest``)
gives the digest :func:`cas.repo.filescache.subtree_digest` computes from the identities Python's
``os.lstat`` finds, for any tree of files and directories; none for a tree holding anything else;
and another one after any change a later restore must not miss."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cas.native.files import subtree_digest as walk_subtree
from cas.repo.filescache import subtree_digest

_NAMES = st.text(st.characters(codec="utf-8", exclude_characters="/\x00"), min_size=1, max_size=10).filter(
    lambda n: n not in (".", ".."))
_TREES = st.recursive(
    st.binary(max_size=300),
    lambda children: st.dictionaries(_NAMES, children, max_size=5),
    max_leaves=25,
).filter(lambda t: isinstance(t, dict))


def _make(root: Path, tree: dict[str, object], modes: list[int]) -> None:
    root.mkdir()
    for i, (name, node) in enumerate(sorted(tree.items())):
        if isinstance(node, dict):
            _make(root / name, node, modes)
        else:
            assert isinstance(node, bytes)
            (root / name).write_bytes(node)
            os.chmod(root / name, modes[i % len(modes)])


def _identity(st_: os.stat_result, size: int) -> tuple[int, int, int, int, int]:
    return (st_.st_ino, st_.st_ctime_ns, st_.st_mtime_ns, size, stat.S_IMODE(st_.st_mode))


def _expected(root: Path, policy: int) -> tuple[bytes, int, int, int]:
    """The digest and counts from ``os.lstat``, through the recorder's function."""
    files, dirs = [], []
    counts = [0, 0, 0]
    for name in os.listdir(root):
        path = root / name
        st_ = os.lstat(path)
        if stat.S_ISDIR(st_.st_mode):
            digest, f, d, b = _expected(path, policy)
            dirs.append((os.fsencode(name), _identity(st_, 0), digest))
            counts = [counts[0] + f, counts[1] + d + 1, counts[2] + b]
        else:
            files.append((os.fsencode(name), _identity(st_, st_.st_size)))
            counts = [counts[0] + 1, counts[1], counts[2] + st_.st_size]
    return subtree_digest(policy, files, dirs), counts[0], counts[1], counts[2]


def _walk(root: Path, policy: int = 0) -> tuple[bytes, int, int, int] | None:
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return walk_subtree(fd, policy)
    finally:
        os.close(fd)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tree=_TREES, modes=st.lists(st.sampled_from([0o644, 0o600, 0o755, 0o4755, 0o2640]), min_size=1, max_size=3),
       policy=st.integers(0, 1))
def test_the_walk_digests_what_lstat_finds_as_the_recorder_does(
    tmp_path_factory: pytest.TempPathFactory, tree: dict[str, object], modes: list[int], policy: int,
) -> None:
    root = tmp_path_factory.mktemp("t") / "root"
    _make(root, tree, modes)
    assert _walk(root, policy) == _expected(root, policy)
    assert _walk(root, 1 - policy) != _expected(root, policy)  # the policy is digested


def _sample(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    _make(root, {"a": b"alpha", "sub": {"b": b"beta", "deep": {"c": b"gamma"}}, "empty": {}}, [0o644])
    return root


def _edit_keeping_size_and_mtime(root: Path) -> None:
    path = root / "sub" / "deep" / "c"
    st_ = os.stat(path)
    path.write_bytes(b"GAMMA")
    os.utime(path, ns=(st_.st_atime_ns, st_.st_mtime_ns))


def _mode_changed_and_put_back(root: Path) -> None:
    os.chmod(root / "sub" / "b", 0o600)
    os.chmod(root / "sub" / "b", 0o644)


def _renamed_and_back(root: Path) -> None:
    os.rename(root / "sub" / "deep", root / "sub" / "moved")
    os.rename(root / "sub" / "moved", root / "sub" / "deep")


def _a_file_added(root: Path) -> None:
    (root / "empty" / "new").write_bytes(b"")


def _a_directory_touched(root: Path) -> None:
    st_ = os.stat(root / "sub" / "deep")
    os.utime(root / "sub" / "deep", ns=(st_.st_atime_ns, st_.st_mtime_ns + 1))


@pytest.mark.parametrize("change", [
    _edit_keeping_size_and_mtime, _mode_changed_and_put_back, _renamed_and_back, _a_file_added, _a_directory_touched,
], ids=lambda f: f.__name__.strip("_"))
def test_any_change_below_gives_another_digest(tmp_path: Path, change: object) -> None:
    root = _sample(tmp_path)
    before = _walk(root)
    assert before is not None and before[1:] == (3, 3, 14)  # a, b, c; sub, deep, empty; 5 + 4 + 5 bytes
    assert callable(change)
    change(root)
    after = _walk(root)
    assert after is not None and after[0] != before[0]


@pytest.mark.parametrize("kind", ["symlink", "fifo"])
def test_a_tree_holding_anything_but_files_and_directories_has_no_digest(tmp_path: Path, kind: str) -> None:
    root = _sample(tmp_path)
    where = root / "sub" / "deep" / "other"
    if kind == "symlink":
        os.symlink("c", where)
    else:
        os.mkfifo(where)
    assert _walk(root) is None
    assert _walk(root / "sub" / "deep" / ".." / ".." / "empty") is not None


def test_a_tree_deeper_than_the_bound_has_no_digest(tmp_path: Path) -> None:
    root = tmp_path / "root"
    path = root
    for _ in range(130):
        path = path / "d"
    path.mkdir(parents=True)
    assert _walk(root) is None
    assert _walk(root / "d" / "d" / "d") is not None  # 127 levels below
