from __future__ import annotations

import itertools
import os
import threading
from pathlib import Path
from typing import BinaryIO

import pytest

from backends.counting import CountingBackend
from backends.errors import AlreadyExists, NotFound
from backends.local import MAPS_KEPT, LocalBackend
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


def test_a_view_keeps_the_bytes_it_was_given_when_its_object_is_replaced_or_deleted(tmp_path: Path) -> None:
    # Views of a local object are of its file mapped into memory: what a reader holds stays the
    # bytes it read, whatever happens under the name afterwards.
    backend = LocalBackend(tmp_path / "repo")
    first, second = os.urandom(200_000), os.urandom(200_000)
    backend.put("data/p", first)
    held = backend.get_view("data/p", 1000, 150_000)
    backend.put("data/p", second)
    assert bytes(backend.get_view("data/p", 1000, 150_000)) == second[1000:151_000]
    backend.delete("data/p")
    assert bytes(held) == first[1000:151_000]
    with pytest.raises(NotFound):
        backend.get_view("data/p", 1000, 150_000)


def test_objects_kept_mapped_are_bounded(tmp_path: Path) -> None:
    # Each mapping holds a descriptor: reading many objects keeps at most MAPS_KEPT of them.
    backend = LocalBackend(tmp_path / "repo")
    for i in range(MAPS_KEPT * 3):
        backend.put(f"data/{i:03d}", bytes([i]) * 100_000)
    before = len(os.listdir("/proc/self/fd"))
    for i in range(MAPS_KEPT * 3):
        assert backend.get_view(f"data/{i:03d}", 0, 100_000)[99_999] == i
    assert len(os.listdir("/proc/self/fd")) - before <= MAPS_KEPT
    backend.close()
    assert len(os.listdir("/proc/self/fd")) <= before


def _unnamed_in(directory: str, data: bytes) -> BinaryIO:
    """A file without a name in ``directory``, holding ``data``, positioned at its start (as a
    writer builds a pack in the backend's staging directory)."""
    fd = os.open(directory, os.O_TMPFILE | os.O_RDWR, 0o600)
    f = open(fd, "w+b", buffering=0)  # noqa: SIM115 - closed by the caller
    f.write(data)
    f.seek(0)
    return f


def test_an_unnamed_file_from_the_staging_directory_is_named_not_copied(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path / "repo")
    directory = backend.staging_directory()
    assert directory is not None
    payload = os.urandom(200_001)
    with _unnamed_in(directory, payload) as f:
        backend.put("data/ab/pack", f, overwrite=False)
        st = os.fstat(f.fileno())
    stored = tmp_path / "repo" / "data" / "ab" / "pack"
    assert stored.read_bytes() == payload
    assert (st.st_nlink, st.st_ino) == (1, os.stat(stored).st_ino)  # the file itself, now named
    assert sorted(p.name for p in stored.parent.iterdir()) == ["pack"]


def test_an_unnamed_file_is_left_unnamed_when_its_key_is_taken(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path / "repo")
    backend.put("k", b"first", overwrite=False)
    directory = backend.staging_directory()
    assert directory is not None
    with _unnamed_in(directory, b"second") as f:
        with pytest.raises(AlreadyExists):
            backend.put("k", f, overwrite=False)
        assert os.fstat(f.fileno()).st_nlink == 0
    assert (tmp_path / "repo" / "k").read_bytes() == b"first"
    assert sorted(p.name for p in (tmp_path / "repo").iterdir()) == ["k"]


def test_a_named_file_is_copied_and_keeps_its_name(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path / "repo")
    source = tmp_path / "source"
    source.write_bytes(b"named bytes")
    with open(source, "rb") as f:
        backend.put("k", f)
    assert (tmp_path / "repo" / "k").read_bytes() == b"named bytes"
    assert os.stat(source).st_ino != os.stat(tmp_path / "repo" / "k").st_ino
    assert source.read_bytes() == b"named bytes"


def test_a_wrapper_offers_no_staging_directory(tmp_path: Path) -> None:
    # A wrapper may change the bytes on their way (encryption): the writer must not build the
    # object where the inner backend would take it as it is.
    assert CountingBackend(LocalBackend(tmp_path / "repo")).staging_directory() is None
