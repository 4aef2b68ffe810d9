"""A fresh restore's small files written by a child process (cas/ops/restore/write_process.py): real
child processes, real directories."""

from __future__ import annotations

import gc
import os
import signal
import stat
import weakref
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

from cas import Store
from cas.ops.restore import walk as restore_walk
from cas.ops.restore import write_process
from cas.ops.restore.create import FileWriter
from cas.ops.restore.temps import TMP_PREFIX, temporary_tag
from cas.ops.restore.write_process import File, ProcessWriter, write_batch
from tests.treeutil import describe

MTIME = 1_600_000_000_123_456_789


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(2) as p:
        yield p


def _writer(pool: ThreadPoolExecutor, fallbacks: list[int] | None = None) -> ProcessWriter:
    here = FileWriter(temporary_tag())

    def fallback(dir_fd: int, files: list[File]) -> Future[list[object]]:
        if fallbacks is None:
            raise AssertionError("the child process should have written these")
        fallbacks.append(len(files))
        return pool.submit(write_batch, here, dir_fd, files)

    return ProcessWriter(temporary_tag(), fallback)


def _files(n: int, prefix: str = "f") -> list[File]:
    """Every fourth asks for its identity once named."""
    return [(f"{prefix}{i:03d}", os.urandom(i * 37 % 3000), (0o644, 0o600, 0o755)[i % 3], MTIME + i, i % 4 == 1)
            for i in range(n)]


def _named(directory: Path, files: list[File]) -> list[object]:
    """The answers of ``files`` all named: None, or the inode and ctime each has if it asked."""
    return [((directory / f[0]).lstat().st_ino, (directory / f[0]).lstat().st_ctime_ns) if f[4] else None
            for f in files]


def _check(directory: Path, files: list[File]) -> None:
    for name, data, mode, mtime, _ in files:
        st = (directory / name).lstat()
        assert (directory / name).read_bytes() == data
        assert stat.S_IMODE(st.st_mode) == mode & ~_umask() and st.st_mtime_ns == mtime


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_batch_is_written_whole_by_another_process(
    tmp_path: Path, pool: ThreadPoolExecutor, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(write_process, "MESSAGE_BYTES", 10_000)  # the first batch in several messages
    writer = _writer(pool)
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        first, second = _files(50), _files(30, "g")
        answers = [writer.submit(fd, first), writer.submit(fd, second)]
        assert [a.result(timeout=60) for a in answers] == [_named(tmp_path, first), _named(tmp_path, second)]
        assert writer.pid is not None and writer.pid != os.getpid()
    finally:
        writer.close()
        os.close(fd)
    _check(tmp_path, first + second)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f[0] for f in first + second)  # no temporaries


class _Held:
    """What a batch's answer keeps while it is awaited (the restore: the batch's entries)."""


def test_a_batch_in_several_messages_is_freed_when_answered_without_the_collector(
    tmp_path: Path, pool: ThreadPoolExecutor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a batch's answer holds goes as soon as nothing holds the answer: no reference cycle
    among its messages' futures leaves it to the cyclic collector (a fresh restore of 100,000
    small files left 69,000 entries to it, with their batches)."""
    monkeypatch.setattr(write_process, "MESSAGE_BYTES", 10_000)  # the batch in several messages
    writer = _writer(pool)
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    gc.disable()
    try:
        first, second = _files(50), _files(3, "g")
        answer = writer.submit(fd, first)
        held = _Held()
        answer.add_done_callback(lambda _, held=held: None)
        freed = weakref.ref(held)
        del held
        assert answer.result(timeout=60) == _named(tmp_path, first)
        del answer
        # The thread receiving answers holds the last future it answered until the next one.
        assert writer.submit(fd, second).result(timeout=60) == _named(tmp_path, second)
        assert freed() is None
    finally:
        gc.enable()
        writer.close()
        os.close(fd)
    _check(tmp_path, first + second)


def test_many_batches_in_flight_to_many_directories_are_each_answered_and_written_whole(
    tmp_path: Path, pool: ThreadPoolExecutor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """More batches sent at once than the child holds and writes at a time (its writing threads
    take them in any order): each answered with its own files' answers, nothing left over."""
    monkeypatch.setattr(write_process, "MESSAGE_BYTES", 4_000)
    writer = _writer(pool)
    directories = [tmp_path / f"d{i}" for i in range(4)]
    fds = []
    for directory in directories:
        directory.mkdir()
        fds.append(os.open(directory, os.O_RDONLY | os.O_DIRECTORY))
    batches = [(i % 4, _files(5 + i, f"b{i}-")) for i in range(3 * (write_process._QUEUED + write_process._WRITERS))]
    try:
        answers = [writer.submit(fds[d], files) for d, files in batches]
        assert [a.result(timeout=60) for a in answers] == [_named(directories[d], files) for d, files in batches]
    finally:
        writer.close()
        for fd in fds:
            os.close(fd)
    for d, directory in enumerate(directories):
        mine = [f for i, files in batches if i == d for f in files]
        _check(directory, mine)
        assert sorted(p.name for p in directory.iterdir()) == sorted(f[0] for f in mine)


def test_a_taken_name_gets_a_temporary_and_an_error_is_its_files_own(tmp_path: Path, pool: ThreadPoolExecutor) -> None:
    (tmp_path / "f001").write_bytes(b"already here")
    writer = _writer(pool)
    files = _files(3)
    files.insert(2, ("x" * 300, b"name too long", 0o644, MTIME, True))
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        answers = writer.submit(fd, files).result(timeout=60)
    finally:
        writer.close()
        os.close(fd)
    assert answers[0] is None and answers[3] is None
    tmp = answers[1]
    assert isinstance(tmp, str) and tmp.startswith(TMP_PREFIX)  # for the restore to place
    assert (tmp_path / "f001").read_bytes() == b"already here"
    assert (tmp_path / tmp).read_bytes() == files[1][1]
    failed = answers[2]
    assert isinstance(failed, OSError) and failed.errno == 36 and failed.strerror  # ENAMETOOLONG, for that file alone
    _check(tmp_path, [files[0], files[3]])


def test_batches_a_dead_child_did_not_answer_are_written_here(tmp_path: Path, pool: ThreadPoolExecutor) -> None:
    fallbacks: list[int] = []
    writer = _writer(pool, fallbacks)
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        first = _files(10)
        assert writer.submit(fd, first).result(timeout=60) == _named(tmp_path, first)
        assert writer.pid is not None
        os.kill(writer.pid, signal.SIGKILL)
        more = [_files(10, f"g{i}-") for i in range(5)]
        later = [writer.submit(fd, files) for files in more]
        for answer, files in zip(later, more):
            assert answer.result(timeout=60) == _named(tmp_path, files)
    finally:
        writer.close()
        os.close(fd)
    assert fallbacks  # the batches after the kill went to the fallback
    _check(tmp_path, first + [f for files in more for f in files])


def test_a_fresh_restore_hands_many_small_files_to_the_child_past_a_threshold(
    tmp_path: Path, cas_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    batches: list[int] = []
    submit = ProcessWriter.submit

    def counted(self: ProcessWriter, dir_fd: int, files: list[File]) -> Future[list[object]]:
        batches.append(len(files))
        return submit(self, dir_fd, files)

    monkeypatch.setattr(ProcessWriter, "submit", counted)
    src, dest = tmp_path / "src", tmp_path / "dest"
    per_dir = restore_walk._WHOLE_INLINE + 20
    monkeypatch.setattr(restore_walk, "_PROCESS_AFTER", per_dir)  # the first directory on threads
    for d in range(3):
        (src / f"d{d}").mkdir(parents=True)
        for i in range(per_dir):
            path = src / f"d{d}" / f"f{i:03d}"
            path.write_bytes(os.urandom(50 + i * 31))
            os.utime(path, ns=(MTIME, MTIME + i))
    with Store.open(str(tmp_path / "repo"), index=f"sqlite:///{tmp_path / 'index.sqlite'}") as store:
        store.snapshot(src, "v1")
        report = store.restore("v1", dest)
    assert describe(str(dest)) == describe(str(src))
    assert report.files == 3 * per_dir
    assert batches == [per_dir] * 2  # the other two by the writer process
    assert not list(dest.rglob(f"{TMP_PREFIX}*"))
