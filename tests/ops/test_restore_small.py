"""Small files restored whole: one task per directory on the restore's few small-file threads, the
fewest calls per file, and the same promises as every other file (verified, never half-written
under its name, mode and mtime exact), on a real file system."""

from __future__ import annotations

import os
import stat
import sys
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from cas import Store
from cas.errors import PartialRestore
from cas.ops.restore import create as restore_create
from cas.ops.restore import finish as restore_finish
from cas.ops.restore import state as restore_state
from cas.ops.restore import walk as restore_walk
from cas.ops.restore import write as restore_write
from cas.ops.restore.create import FileWriter
from cas.ops.restore.temps import TMP_PREFIX
from tests.treeutil import describe

_COUNTED = {"open", "write", "utime", "link", "rename", "close", "fchmod", "ftruncate", "lseek", "pwrite", "fstat"}


class _CountingOs:
    """``os`` as :mod:`cas.ops.restore.write` and :mod:`cas.ops.restore.create` see it, recording the calls it makes and by which thread."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, tuple[object, ...]]] = []
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> object:
        real = getattr(os, name)
        if name not in _COUNTED:
            return real

        def call(*args: object, **kwargs: object) -> object:
            with self._lock:
                self.calls.append((name, threading.current_thread().name, args))
            return real(*args, **kwargs)

        return call

    def count(self) -> Counter[str]:
        return Counter(name for name, _, _ in self.calls)


@pytest.fixture
def counting_os(monkeypatch: pytest.MonkeyPatch) -> _CountingOs:
    counting = _CountingOs()
    monkeypatch.setattr(restore_write, "os", counting)
    monkeypatch.setattr(restore_create, "os", counting)
    return counting


class _Batches:
    """:meth:`FileWriter.write_whole_many` as the restore calls it: the names of each call's files,
    and the thread that made it."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[str]]] = []
        self._lock = threading.Lock()


@pytest.fixture
def batches(monkeypatch: pytest.MonkeyPatch) -> _Batches:
    counting = _Batches()
    real = FileWriter.write_whole_many

    def write_whole_many(self: FileWriter, dir_fd: int, files: list[tuple[str, bytes, int, int, bool]]) -> list[object]:
        with counting._lock:
            counting.calls.append((threading.current_thread().name, [name for name, *_ in files]))
        return real(self, dir_fd, files)

    monkeypatch.setattr(FileWriter, "write_whole_many", write_whole_many)
    return counting


def _small_tree(src: Path, dirs: int, per_dir: int, mode: Callable[[int], int] = lambda i: 0o644) -> int:
    for d in range(dirs):
        sub = src / f"d{d}"
        sub.mkdir(parents=True)
        for i in range(per_dir):
            path = sub / f"d{d}-f{i:03d}"
            path.write_bytes(os.urandom(100 + 37 * i % 3900))
            os.chmod(path, mode(i))
            os.utime(path, ns=(1_600_000_000_000_000_000 + i, 1_600_000_000_000_000_000 + d * 1000 + i))
    return dirs * per_dir


def test_small_files_are_written_by_one_helper_call_per_directory_on_the_small_file_threads(
    plain_store: Store, tmp_path: Path, batches: _Batches, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A directory's small files are written by one call of the compiled helper (its calls per file
    are counted in tests/test_native.py), on the small-file threads."""
    # In this process, as an embedded interpreter (no writer process) does: the calls are seen here.
    monkeypatch.setattr(sys, "executable", "/usr/bin/uwsgi")
    old_umask = os.umask(0o022)
    try:
        src, dest = tmp_path / "src", tmp_path / "dest"
        n = _small_tree(src, dirs=5, per_dir=restore_walk._WHOLE_INLINE + 8, mode=lambda i: (0o644, 0o755, 0o600, 0o4755)[i % 4])
        plain_store.snapshot(src, "v1")
        report = plain_store.restore("v1", dest)
    finally:
        os.umask(old_umask)
    # setuid is dropped (no --same-permissions).
    for path in src.rglob("*"):
        if path.is_file() and path.stat().st_mode & stat.S_ISUID:
            path.chmod(0o755)
    assert describe(str(dest)) == describe(str(src))
    assert report.files == n and report.written == n + 5  # and the directories
    assert len(batches.calls) == 5
    assert sorted(name for _, names in batches.calls for name in names) == sorted(p.name for p in src.rglob("*-f*"))
    assert all(len({name.split("-")[0] for name in names}) == 1 for _, names in batches.calls)  # one directory each
    threads = {thread for thread, _ in batches.calls}
    assert len(threads) <= restore_walk._WHOLE_THREADS
    assert all(t.startswith("cas-restore-whole") for t in threads)


def test_a_mode_the_umask_would_change_is_still_exact(plain_store: Store, tmp_path: Path) -> None:
    """(Given after the content: tests/test_native.py counts the ``fchmod``.)"""
    src, dest = tmp_path / "src", tmp_path / "dest"
    _small_tree(src, dirs=1, per_dir=6, mode=lambda i: 0o666 if i % 2 else 0o644)
    plain_store.snapshot(src, "v1")
    old_umask = os.umask(0o022)
    try:
        plain_store.restore("v1", dest)
    finally:
        os.umask(old_umask)
    assert describe(str(dest)) == describe(str(src))


def test_zero_and_empty_files_are_restored_exactly_zeros_as_a_hole(plain_store: Store, tmp_path: Path) -> None:
    """(No write for either: tests/test_native.py counts the calls.)"""
    src, dest = tmp_path / "src", tmp_path / "dest"
    src.mkdir()
    (src / "empty").write_bytes(b"")
    (src / "zeros").write_bytes(bytes(200_000))
    (src / "data").write_bytes(b"\0" + os.urandom(1000) + b"\0")
    plain_store.snapshot(src, "v1")
    plain_store.restore("v1", dest)
    assert describe(str(dest)) == describe(str(src))
    assert os.stat(dest / "zeros").st_blocks == 0  # a hole, where the file system has them


def test_without_unnamed_files_temporaries_are_renamed_and_none_is_left(
    plain_store: Store, tmp_path: Path, counting_os: _CountingOs, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(restore_create, "HAS_TMPFILE", [False])
    src, dest = tmp_path / "src", tmp_path / "dest"
    n = _small_tree(src, dirs=2, per_dir=10)
    plain_store.snapshot(src, "v1")
    plain_store.restore("v1", dest)
    assert describe(str(dest)) == describe(str(src))
    assert counting_os.count()["rename"] == n and counting_os.count()["link"] == 0
    assert not [p for p in dest.rglob(f"{TMP_PREFIX}*")]


def test_a_taken_name_is_left_as_it_was_until_the_whole_file_replaces_it(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"old")
    dir_fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        [tmp] = FileWriter("test").write_whole_many(dir_fd, [("f", b"new content", 0o640, 1_000_000_000, False)])
        assert isinstance(tmp, str) and tmp.startswith(TMP_PREFIX)
        assert (tmp_path / "f").read_bytes() == b"old"
        st = os.stat(tmp, dir_fd=dir_fd)
        assert (stat.S_IMODE(st.st_mode), st.st_mtime_ns, st.st_size) == (0o640, 1_000_000_000, 11)
        restore_write.place(dir_fd, tmp, "f", "f", None)
        assert (tmp_path / "f").read_bytes() == b"new content"
    finally:
        os.close(dir_fd)


def test_a_corrupt_small_file_is_reported_and_never_appears(plain_store: Store, tmp_path: Path) -> None:
    """A chunk that fails verification is left out of what the directory fetched together; its file
    is fetched alone, fails under its own path, and the other files are restored."""
    src, dest = tmp_path / "src", tmp_path / "dest"
    src.mkdir()
    for i in range(20):
        (src / f"f{i:02d}").write_bytes(os.urandom(3000))
    plain_store.snapshot(src, "v1")
    victim = (src / "f07").read_bytes()
    packs = list((tmp_path / "repo" / "data").rglob("*"))
    for pack in (p for p in packs if p.is_file()):
        data = pack.read_bytes()
        at = data.find(victim[100:200])
        if at >= 0:
            pack.chmod(0o644)
            pack.write_bytes(data[:at] + bytes(100) + data[at + 100:])
    with pytest.raises(PartialRestore, match="f07"):
        plain_store.restore("v1", dest)
    assert not (dest / "f07").exists()
    assert sorted(p.name for p in dest.iterdir()) == [f"f{i:02d}" for i in range(20) if i != 7]


def test_the_walk_waits_for_room_in_its_budget_and_never_on_itself() -> None:
    budget = restore_state.Budget(100)
    assert budget.take(60) == 60
    taken = threading.Event()

    def walk() -> None:
        budget.take(60)  # 120 > 100 while 60 are held: waits for the writers
        taken.set()

    walker = threading.Thread(target=walk)
    walker.start()
    assert not taken.wait(0.2)
    budget.give(60)
    assert taken.wait(5)
    walker.join()
    budget.give(60)
    assert budget.take(1000) == 1000  # nothing held: more than the budget still goes through


def test_small_files_fetched_ahead_stay_within_the_budget(
    plain_store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a budget of one directory's data, the walk never holds two directories' small files
    that are not written yet (it waits for the writers), and the result is whole."""
    src, dest = tmp_path / "src", tmp_path / "dest"
    _small_tree(src, dirs=6, per_dir=restore_walk._WHOLE_INLINE + 8)  # written on the writer threads
    plain_store.snapshot(src, "v1")
    per_dir = max(sum(p.stat().st_size for p in (src / f"d{d}").iterdir()) for d in range(6))
    monkeypatch.setattr(restore_walk, "_FETCHED_AHEAD", per_dir)
    most = [0]
    real_take = restore_state.Budget.take

    def take(self: restore_state.Budget, nbytes: int) -> int:
        got = real_take(self, nbytes)
        most[0] = max(most[0], self._held)
        return got

    monkeypatch.setattr(restore_state.Budget, "take", take)
    plain_store.restore("v1", dest)
    assert describe(str(dest)) == describe(str(src))
    assert 0 < most[0] <= per_dir


def test_directories_waiting_to_be_finished_hold_a_bounded_number_of_files(
    plain_store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A directory whose subdirectories are done waits to be finished (its files' outcomes kept
    until then) only while the waiting ones hold no more than ``_QUEUED_FILES`` files, the newest
    excepted; finished that early, every mode and mtime is still exact."""
    src, dest = tmp_path / "src", tmp_path / "dest"
    per_dir = restore_walk._WHOLE_INLINE + 8
    _small_tree(src, dirs=8, per_dir=per_dir)
    plain_store.snapshot(src, "v1")
    monkeypatch.setattr(restore_finish, "_QUEUED_FILES", 2 * per_dir)
    seen: list[tuple[int, int]] = []
    real_drain = restore_finish.DirectoryFinishing._drain

    def drain(self: restore_finish.DirectoryFinishing, keep: int) -> None:
        real_drain(self, keep)
        seen.append((len(self._jobs), self._queued_files))

    monkeypatch.setattr(restore_finish.DirectoryFinishing, "_drain", drain)
    plain_store.restore("v1", dest)
    assert describe(str(dest)) == describe(str(src))
    assert all(jobs <= 1 or files <= 2 * per_dir for jobs, files in seen), seen
    assert max(files for _, files in seen) >= per_dir  # the directories' files were counted
    assert max(jobs for jobs, _ in seen) <= 3  # not the 8 that the count of directories alone allows


def test_a_few_small_files_are_written_by_the_walk_itself(plain_store: Store, tmp_path: Path, batches: _Batches) -> None:
    """Directories with few small files (a package's, typically) are not handed to another thread."""
    src, dest = tmp_path / "src", tmp_path / "dest"
    n = _small_tree(src, dirs=4, per_dir=restore_walk._WHOLE_INLINE)
    plain_store.snapshot(src, "v1")
    plain_store.restore("v1", dest)
    assert describe(str(dest)) == describe(str(src))
    assert sum(len(names) for _, names in batches.calls) == n
    assert {thread for thread, _ in batches.calls} == {threading.current_thread().name}
