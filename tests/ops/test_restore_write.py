"""cas.ops.restore.write: one file written from chunk bytes and ranges of the file it replaces,
checked whole, on a real file system."""

from __future__ import annotations

import errno
import os
import stat
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from cas.errors import IntegrityError
from cas.format.hashing import hexdigest
from cas.format.trees import FILE, Entry
from cas.ops.restore import local as restore_local
from cas.ops.restore import write as restore_write
from cas.ops.restore.create import FileWriter
from cas.ops.restore.local import Span, examine_file, identity
from cas.ops.restore.write import write_content
from tests.oswrap import CountingPread


def _entry(parts: list[bytes]) -> Entry:
    whole = b"".join(parts)
    return Entry("f", FILE, 0o644, 0, len(whole), hexdigest(whole), tuple(hexdigest(p) for p in parts))


def _write(tmp_path: Path, entry: Entry, pieces: list[bytes | Span] | Iterator[bytes]) -> bytes:
    dir_fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fd, tmp, _ = FileWriter("test").create(dir_fd, 0o600)
        try:
            write_content(fd, entry, pieces, "f", preallocate=False)
            return os.pread(fd, entry.size + 1, 0)
        finally:
            os.close(fd)
            if tmp is not None:
                os.unlink(tmp, dir_fd=dir_fd)
    finally:
        os.close(dir_fd)


def test_ranges_of_the_old_file_are_copied_and_the_whole_checked(tmp_path: Path) -> None:
    a, b, c = os.urandom(300_000), bytes(200_000), os.urandom(100_000)
    old = tmp_path / "old"
    old.write_bytes(b"xx" + c + a)
    fd = os.open(old, os.O_RDONLY)
    try:
        entry = _entry([a, b, c])
        assert _write(tmp_path, entry, [Span(fd, 2 + len(c), len(a)), b, Span(fd, 2, len(c))]) == a + b + c
        # The old file no longer holds what was hashed in it: the check after copying says so.
        os.pwrite(os.open(old, os.O_WRONLY), b"!", 2)
        with pytest.raises(IntegrityError, match="BLAKE3"):
            _write(tmp_path, entry, [Span(fd, 2 + len(c), len(a)), b, Span(fd, 2, len(c))])
    finally:
        os.close(fd)


def test_a_one_chunk_file_is_checked_by_its_chunk_id(tmp_path: Path) -> None:
    data = os.urandom(5000)
    assert _write(tmp_path, _entry([data]), [data]) == data
    wrong = _entry([data])
    wrong = Entry(wrong.name, FILE, 0o644, 0, wrong.size, hexdigest(b"other"), wrong.chunks)
    with pytest.raises(IntegrityError):
        _write(tmp_path, wrong, [data])
    with pytest.raises(IntegrityError, match="restored"):
        _write(tmp_path, _entry([data]), [data[:-1]])


def test_a_large_file_is_hashed_on_a_thread_beside_its_writes_and_checked_whole(tmp_path: Path) -> None:
    parts = [os.urandom(restore_write.HASH_BESIDE_FROM // 4) for _ in range(4)] + [b"tail"]
    entry = _entry(parts)
    threads_seen: list[str] = []

    def pieces(fail: bool = False) -> Iterator[bytes]:
        yield parts[0]
        threads_seen.extend(t.name for t in threading.enumerate())
        if fail:
            raise OSError(errno.EIO, "the repository could not be read")
        yield from parts[1:]

    before = threading.active_count()
    assert _write(tmp_path, entry, pieces()) == b"".join(parts)
    assert "cas-hash-beside" in threads_seen
    with pytest.raises(IntegrityError, match="BLAKE3"):
        _write(tmp_path, replace(entry, digest=hexdigest(b"other")), pieces())
    with pytest.raises(OSError, match="could not be read"):
        _write(tmp_path, entry, pieces(fail=True))
    assert threading.active_count() == before  # no hashing thread is left behind, whatever happened


@pytest.mark.parametrize("mode", [0o644, 0o755, 0o600, 0o4755, 0o666])
def test_mode_given_at_creation_only_when_the_umask_keeps_it(tmp_path: Path, mode: int) -> None:
    old_umask = os.umask(0o022)
    try:
        writer = FileWriter("test")
        dir_fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
        fd, tmp, at_create = writer.create(dir_fd, mode)
        try:
            assert at_create == (mode in (0o644, 0o755, 0o600))
            if at_create:
                assert stat.S_IMODE(os.fstat(fd).st_mode) == mode
        finally:
            os.close(fd)
            if tmp is not None:
                os.unlink(tmp, dir_fd=dir_fd)
            os.close(dir_fd)
    finally:
        os.umask(old_umask)


def _spans_of(tmp_path: Path, a: bytes, c: bytes) -> tuple[int, os.stat_result]:
    old = tmp_path / "old"
    old.write_bytes(c + a)
    fd = os.open(old, os.O_RDONLY)
    return fd, os.fstat(fd)


def test_copied_ranges_of_an_unchanged_file_are_not_read_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a, b, c = os.urandom(300_000), os.urandom(1000), os.urandom(100_000)
    fd, st = _spans_of(tmp_path, a, c)
    counting = CountingPread()
    monkeypatch.setattr(restore_write, "os", counting)
    try:
        entry = _entry([a, b, c])
        spans = [Span(fd, len(c), len(a), identity(st)), b, Span(fd, 0, len(c), identity(st))]
        assert _write(tmp_path, entry, spans) == a + b + c  # (the test's own pread, not the module's)
        assert counting.read == 0
        # Without an identity (the file had not settled when it was hashed), it is read back whole.
        assert _write(tmp_path, entry, [Span(fd, len(c), len(a)), b, Span(fd, 0, len(c))]) == a + b + c
        assert counting.read == entry.size
    finally:
        os.close(fd)


def test_a_file_changed_after_it_was_hashed_is_read_back_and_caught(tmp_path: Path) -> None:
    a, b, c = os.urandom(300_000), os.urandom(1000), os.urandom(100_000)
    fd, st = _spans_of(tmp_path, a, c)
    try:
        entry = _entry([a, b, c])
        spans = [Span(fd, len(c), len(a), identity(st)), b, Span(fd, 0, len(c), identity(st))]
        time.sleep(0.05)  # past a tick of the kernel's coarse clock, where timestamps are coarse
        wfd = os.open(tmp_path / "old", os.O_WRONLY)
        os.pwrite(wfd, b"!", 5)  # after the hash, before the copy: its ctime moves on
        os.close(wfd)
        with pytest.raises(IntegrityError, match="BLAKE3"):
            _write(tmp_path, entry, spans)
    finally:
        os.close(fd)


def test_only_a_file_that_had_settled_when_hashed_gets_an_identity(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    parts = [os.urandom(1000), os.urandom(1000), os.urandom(1000)]
    entry = replace(_entry(parts), name="f")
    (tmp_path / "f").write_bytes(parts[0] + os.urandom(1000) + parts[2])  # just written: not settled
    dir_fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fresh = examine_file(dir_fd, entry, 0o644, trust_mtime=False, config=None, lengths=[1000, 1000, 1000])
        assert fresh.old is not None and fresh.old.identity is None
        fresh.old.close()
        monkeypatch.setattr(restore_local, "SETTLED_NS", 0)
        settled = examine_file(dir_fd, entry, 0o644, trust_mtime=False, config=None, lengths=[1000, 1000, 1000])
        assert settled.old is not None
        try:
            assert settled.old.identity == identity(os.stat(tmp_path / "f"))
            span = settled.old.span(entry.chunks[0])
            assert span is not None and span.identity == settled.old.identity
        finally:
            settled.old.close()
    finally:
        os.close(dir_fd)
