"""Corrupt or missing stored data is reported with the paths it affects and never restored as good."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cas import IntegrityError, NotFound, Store
from cas.errors import ConfigurationError
from cas.format.keys import pack_key


def _two_file_snapshot(store: Store, tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    (src / "victim.bin").write_bytes(os.urandom(3000))
    store.snapshot(src, "base")
    # Written later, so it lands in a different pack from victim.bin.
    (src / "bystander.txt").write_bytes(b"fine " * 500)
    store.snapshot(src, "run")
    return src


def _pack_of(store: Store, execution_id: str, path: str) -> str:
    entry = store.entry(execution_id, path)
    assert entry is not None
    return store.repo.locate(entry.chunks)[entry.chunks[0]].pack_id


def _flip_byte(store: Store, pack_id: str, offset: int) -> None:
    path = os.path.join(store.repo.backend.root, *pack_key(pack_id).split("/"))  # type: ignore[attr-defined]
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))


def test_corrupt_pack_fails_files_that_use_it_and_restores_the_rest(store: Store, tmp_path: Path) -> None:
    src = _two_file_snapshot(store, tmp_path)
    victim_pack = _pack_of(store, "run", "victim.bin")
    assert victim_pack != _pack_of(store, "run", "bystander.txt")
    _flip_byte(store, victim_pack, 100)

    dest = tmp_path / "out"
    with pytest.raises(IntegrityError, match="victim.bin") as info:
        store.restore("run", dest)
    assert [p for p, _ in info.value.failures] == ["victim.bin"]  # type: ignore[attr-defined]
    assert (dest / "bystander.txt").read_bytes() == (src / "bystander.txt").read_bytes()
    assert not (dest / "victim.bin").exists()
    assert [n for n in os.listdir(dest) if n.startswith(".cas-tmp")] == []


def test_open_file_raises_on_corruption(store: Store, tmp_path: Path) -> None:
    _two_file_snapshot(store, tmp_path)
    _flip_byte(store, _pack_of(store, "run", "victim.bin"), 5)
    with pytest.raises(IntegrityError):
        store.open_file("run", "victim.bin").read()


def test_deleted_pack_is_reported_by_path(store: Store, tmp_path: Path) -> None:
    _two_file_snapshot(store, tmp_path)
    store.repo.backend.delete(pack_key(_pack_of(store, "run", "victim.bin")))
    with pytest.raises(IntegrityError, match="victim.bin.*missing"):
        store.restore("run", tmp_path / "out")


def test_unknown_ids_and_paths_are_clean_errors(store: Store, tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="unknown execution ID"):
        store.restore("nope", tmp_path / "out")
    with pytest.raises(NotFound):
        store.get("../../etc")
    _two_file_snapshot(store, tmp_path)
    with pytest.raises(NotFound, match="missing/path"):
        store.restore("run", tmp_path / "o2", path="missing/path")
    with pytest.raises(ConfigurationError):
        store.restore("run", tmp_path / "o3", path="../victim.bin")
    with pytest.raises(NotFound):
        store.snapshot(tmp_path / "does-not-exist", "x")


def test_restore_refuses_non_empty_destination_unless_overwrite(store: Store, tmp_path: Path) -> None:
    src = _two_file_snapshot(store, tmp_path)
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "victim.bin").write_text("old")
    from cas import AlreadyExists

    with pytest.raises(AlreadyExists, match="not empty"):
        store.restore("run", dest)
    assert (dest / "victim.bin").read_text() == "old"
    store.restore("run", dest, overwrite=True)
    assert (dest / "victim.bin").read_bytes() == (src / "victim.bin").read_bytes()
