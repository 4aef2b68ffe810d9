"""The restore walk reads the trees of the directories it enters next and locates their contents in
one index query per level of them (``Restorer._locate_ahead``), on a real repository and file system:
few queries for many directories, the same bytes restored, and a tree that cannot be read still
reported for its own directory only."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from cas import Store
from cas.errors import PartialRestore
from cas.format.keys import pack_key
from tests.treeutil import describe


@pytest.fixture
def store(tmp_path: Path, cas_home: Path) -> Iterator[Store]:
    s = Store.open(str(tmp_path / "repo"), index=f"sqlite:///{tmp_path / 'index.sqlite'}")
    yield s
    s.close()


def _wide_and_deep(root: Path) -> int:
    """40 packages of 3 files, each with a chain of 3 nested directories holding a file: the
    directories it holds."""
    dirs = 0
    for i in range(40):
        package = root / f"pkg{i:02}"
        package.mkdir(parents=True)
        dirs += 1
        for j in range(3):
            (package / f"m{j}.py").write_bytes(os.urandom(200 + 37 * i + j))
        deep = package
        for depth in range(3):
            deep = deep / f"sub{depth}"
            deep.mkdir()
            dirs += 1
            (deep / "data.bin").write_bytes(os.urandom(1000 + i * 10 + depth))
    return dirs


def _count_locates(store: Store, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    sizes: list[int] = []
    locate = store.repo.index.locate
    monkeypatch.setattr(store.repo.index, "locate", lambda ids: sizes.append(len(ids := list(ids))) or locate(ids))
    return sizes


def test_sibling_directories_are_located_together(store: Store, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from cas.ops.restore.walk import _LOCATE_AHEAD

    src = tmp_path / "src"
    for i in range(40):
        (src / f"pkg{i:02}").mkdir(parents=True)
        for j in range(3):
            (src / f"pkg{i:02}" / f"m{j}.py").write_bytes(os.urandom(200 + 37 * i + j))
    assert 40 <= _LOCATE_AHEAD
    store.snapshot(src, "run-1")
    sizes = _count_locates(store, monkeypatch)
    dest = tmp_path / "dest"
    store.restore("run-1", dest)
    assert describe(str(dest)) == describe(str(src))
    # The root's tree, its 40 subdirectories' trees, then their 120 files in one query (a query
    # per directory before: 42 in all).
    assert sizes == [1, 40, 120]


def test_a_wide_and_deep_tree_is_restored_exactly_in_fewer_queries(store: Store, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "src"
    dirs = _wide_and_deep(src)
    store.snapshot(src, "run-1")
    sizes = _count_locates(store, monkeypatch)
    dest = tmp_path / "dest"
    report = store.restore("run-1", dest)
    assert describe(str(dest)) == describe(str(src))
    assert report.dirs >= dirs
    assert len(sizes) < dirs * 2 // 3  # one per directory and the root before


def test_a_tree_that_cannot_be_read_fails_its_own_directory_only(store: Store, tmp_path: Path) -> None:
    src = tmp_path / "src"
    _wide_and_deep(src)
    store.snapshot(src, "run-1")
    # The stored tree of pkg05/sub0/sub1 (read ahead with its neighbours) is made corrupt in its pack.
    tree = store.get("run-1").root
    for name in ("pkg05", "sub0", "sub1"):
        tree = next(e for e in store.repo.read_tree(tree) if e.name == name).tree
    location = store.repo.locate([tree])[tree]
    pack = Path(store.repo.backend.root) / pack_key(location.pack_id)
    data = bytearray(pack.read_bytes())
    data[location.offset + 2] ^= 0xFF
    pack.write_bytes(bytes(data))
    dest = tmp_path / "dest"
    with pytest.raises(PartialRestore) as failed:
        store.restore("run-1", dest)
    assert [path for path, _error in failed.value.failures] == ["pkg05/sub0/sub1"]
    assert (dest / "pkg05" / "sub0" / "data.bin").read_bytes() == (src / "pkg05" / "sub0" / "data.bin").read_bytes()
    for i in (4, 6, 39):
        assert describe(str(dest / f"pkg{i:02}")) == describe(str(src / f"pkg{i:02}"))


def _count_tree_reads(store: Store, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every tree node the restore decodes from what it read (by its tree ID), in order."""
    from cas.repo import reader

    decoded: list[str] = []
    read_trees = reader.read_trees

    def counting(repo, located, **kw):  # type: ignore[no-untyped-def]
        got = read_trees(repo, located, **kw)
        decoded.extend(got)
        return got

    monkeypatch.setattr("cas.ops.restore.walk.read_trees", counting)
    read_tree = store.repo.read_tree
    monkeypatch.setattr(store.repo, "read_tree", lambda tree, loc=None: decoded.append(tree) or read_tree(tree, loc))
    return decoded


def test_large_directories_read_ahead_are_read_once(store: Store, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Directories of many entries: the walk reads ahead only as many of their trees as its bound
    on entries allows, and keeps what it read; no tree is read twice (reading a whole level of
    them for each directory entered made a restore of 100,000 small files 2.3x slower)."""
    from cas.ops.restore.walk import _LOCATE_AHEAD_ENTRIES

    src = tmp_path / "src"
    per_dir = _LOCATE_AHEAD_ENTRIES // 3
    for i in range(12):
        (src / f"d{i:02}").mkdir(parents=True)
        for j in range(per_dir):
            (src / f"d{i:02}" / f"f{j:04}").write_bytes(b"%d %d" % (i, j))
    store.snapshot(src, "wide")
    decoded = _count_tree_reads(store, monkeypatch)
    store.restore("wide", tmp_path / "out")
    assert describe(str(tmp_path / "out")) == describe(str(src))
    subtrees = {e.tree for e in store.repo.read_tree(store.get("wide").root)}
    assert len(subtrees) == 12
    assert sorted(t for t in decoded if t in subtrees) == sorted(subtrees)  # each once
