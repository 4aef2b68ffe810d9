"""Many directories' tree nodes read together (cas.repo.reader.read_trees): each directory's entries
exactly as read alone, with one backend read per stretch of a tree pack; what cannot be read so is
read alone, and what cannot be read at all is left out for its reader to report."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from backends.counting import CountingBackend
from backends.local import LocalBackend
from cas import Store
from cas.errors import IntegrityError
from cas.format.keys import pack_key
from cas.format.trees import DIR
from cas.repo.reader import read_trees
from cas.types import BlobLocation


@pytest.fixture
def counted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Store, CountingBackend]]:
    monkeypatch.setenv("CAS_HOME", str(tmp_path / "home"))
    backend = CountingBackend(LocalBackend(str(tmp_path / "repo")))
    store = Store.open(backend, index=f"sqlite:///{tmp_path / 'index.sqlite'}", chunk_cache=False)
    yield store, backend
    store.close()


def _subdirectories(store: Store, tmp_path: Path, count: int = 40) -> dict[str, BlobLocation]:
    """A snapshot of ``count`` directories (a file and a subdirectory each); their trees located."""
    src = tmp_path / "src"
    for i in range(count):
        (src / f"d{i:02}" / "sub").mkdir(parents=True)
        (src / f"d{i:02}" / "f").write_bytes(os.urandom(20 + i))
        (src / f"d{i:02}" / "sub" / "g").write_bytes(b"g" * i)
    store.snapshot(src, "run-1")
    trees = [e.tree for e in store.repo.read_tree(store.get("run-1").root) if e.type == DIR]
    return store.repo.locate(trees)


def test_nodes_of_one_pack_are_read_together_and_decoded_as_read_alone(
    counted: tuple[Store, CountingBackend], tmp_path: Path
) -> None:
    store, backend = counted
    located = _subdirectories(store, tmp_path)
    packs = {loc.pack_id for loc in located.values()}
    backend.reset()
    got = read_trees(store.repo, list(located.items()))
    reads = backend.calls["get"]
    assert got == {tree: store.repo.read_tree(tree, loc) for tree, loc in located.items()}
    assert reads == len(packs) < len(located)


def test_a_damaged_node_is_left_out_and_the_others_are_read(
    counted: tuple[Store, CountingBackend], tmp_path: Path
) -> None:
    store, _backend = counted
    located = _subdirectories(store, tmp_path)
    victim, loc = sorted(located.items(), key=lambda item: item[1].offset)[len(located) // 2]
    path = tmp_path / "repo" / pack_key(loc.pack_id)
    os.chmod(path, 0o644)
    with open(path, "r+b") as f:
        f.seek(loc.offset + loc.length // 2)
        byte = f.read(1)
        f.seek(loc.offset + loc.length // 2)
        f.write(bytes([byte[0] ^ 0xFF]))
    got = read_trees(store.repo, list(located.items()))
    assert set(got) == set(located) - {victim}
    with pytest.raises(IntegrityError):
        store.repo.read_tree(victim, loc)


def test_nodes_not_located_are_read_alone(counted: tuple[Store, CountingBackend], tmp_path: Path) -> None:
    store, _backend = counted
    located = _subdirectories(store, tmp_path, count=5)
    got = read_trees(store.repo, [(tree, None) for tree in located])
    assert got == {tree: store.repo.read_tree(tree) for tree in located}
