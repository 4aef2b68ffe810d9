from __future__ import annotations

import itertools
import os
from pathlib import Path

import pytest

from backends.local import LocalBackend
from backends.testing import BackendContract, check_against_model


class _FilesystemAccess:
    def __init__(self, root: Path) -> None:
        self.root = root

    def read(self, key: str) -> bytes:
        return (self.root / key).read_bytes()

    def write(self, key: str, data: bytes) -> None:
        path = self.root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


class TestLocalBackend(BackendContract):
    @pytest.fixture
    def backend(self, tmp_path: Path) -> LocalBackend:
        return LocalBackend(tmp_path / "repo")

    @pytest.fixture
    def raw(self, tmp_path: Path) -> _FilesystemAccess:
        return _FilesystemAccess(tmp_path / "repo")


def test_repository_directory_is_private(tmp_path: Path) -> None:
    LocalBackend(tmp_path / "private")
    assert os.stat(tmp_path / "private").st_mode & 0o077 == 0


def test_no_temporary_files_left_after_put(tmp_path: Path) -> None:
    be = LocalBackend(tmp_path / "r")
    be.put("a/b", b"x" * 1000, overwrite=False)
    assert sorted(p.name for p in (tmp_path / "r" / "a").iterdir()) == ["b"]


def test_local_backend_matches_a_dict_model(tmp_path: Path) -> None:
    runs = itertools.count()
    check_against_model(lambda: LocalBackend(tmp_path / f"run-{next(runs)}"))
