from __future__ import annotations

import itertools
import os
import threading
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


def test_put_from_a_pipe_is_copied_through_memory(tmp_path: Path) -> None:
    # Not a regular file: copy_file_range does not apply, the blocks are read and written.
    backend = LocalBackend(tmp_path / "repo")
    payload = os.urandom(1_000_003)
    read_end, write_end = os.pipe()

    def feed() -> None:
        with os.fdopen(write_end, "wb") as w:
            w.write(payload)

    with os.fdopen(read_end, "rb") as reader:
        writer = threading.Thread(target=feed)
        writer.start()
        backend.put("piped", reader)
        writer.join()
    assert (tmp_path / "repo" / "piped").read_bytes() == payload
