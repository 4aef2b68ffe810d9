"""The compiled helper (``cas.native.files``) against what Python finds for the same files: its
records and digests are what ``os.lstat`` and BLAKE3 say, for any mix of files, sizes, names and
ranges, and it never follows a symlink; the files it writes hold their content, mode and mtime,
under their name only when it was free, in the fewest calls."""

from __future__ import annotations

import errno
import os
import re
import shutil
import stat
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import blake3
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from cas.native.files import hash_files, range_digests, read_files, scan_dir, stat_names, write_whole_files

_FAR = 1 << 62  # a ctime bound no file reaches
_NAMES = st.text(st.characters(codec="utf-8", exclude_characters="/\x00"), min_size=1, max_size=12).filter(
    lambda n: n not in (".", ".."))
_KINDS = st.sampled_from(["file", "symlink", "dir", "fifo"])


def _expected(dir_fd: int, name: str, max_size: int, ctime_before: int) -> tuple | None:
    try:
        st_ = os.lstat(name, dir_fd=dir_fd)
    except OSError:
        return None
    if not stat.S_ISREG(st_.st_mode) or st_.st_size > max_size or st_.st_ctime_ns > ctime_before:
        return None
    fd = os.open(name, os.O_RDONLY, dir_fd=dir_fd)
    try:
        content = os.read(fd, st_.st_size + 1)
    finally:
        os.close(fd)
    return (st_.st_ino, st_.st_size, st_.st_mtime_ns, st_.st_ctime_ns, blake3.blake3(content).hexdigest(),
            stat.S_IMODE(st_.st_mode))


def _make(root: Path, entries: dict[str, tuple[str, int]]) -> None:
    """``entries`` (name: kind and size) under ``root``: a symlink points at a regular file beside
    them (never to be followed), a FIFO is to be opened without blocking."""
    (root / ".target").write_bytes(b"outside the names asked for")
    for name, (kind, size) in entries.items():
        path = root / name
        if kind == "file":
            path.write_bytes(os.urandom(size))
        elif kind == "symlink":
            path.symlink_to(".target")
        elif kind == "dir":
            path.mkdir()
        else:
            os.mkfifo(path)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(entries=st.dictionaries(_NAMES, st.tuples(_KINDS, st.integers(0, 300_000)), max_size=12),
       absent=st.lists(_NAMES, max_size=3), max_size=st.integers(0, 200_000), nowait=st.booleans())
def test_each_regular_file_within_the_size_is_hashed_as_python_finds_it(
    tmp_path_factory: pytest.TempPathFactory, entries: dict[str, tuple[str, int]], absent: list[str],
    max_size: int, nowait: bool,
) -> None:
    root = tmp_path_factory.mktemp("dir")
    _make(root, entries)
    names = [*entries, *(n for n in absent if n not in entries)]
    dir_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        found = hash_files(dir_fd, [os.fsencode(n) for n in names], max_size, _FAR, nowait)
        # Written just now, so in memory: reads that do not wait find everything (where refused,
        # the helper raises instead, and this file system is not one the restore hashes ahead on).
        assert found == [_expected(dir_fd, n, max_size, _FAR) for n in names]
    finally:
        os.close(dir_fd)


def test_files_changed_after_the_bound_and_names_with_nul_are_not_hashed(tmp_path: Path) -> None:
    (tmp_path / "old").write_bytes(b"a")
    bound = time.time_ns()
    time.sleep(0.01)
    (tmp_path / "new").write_bytes(b"b")
    os.utime(tmp_path / "new", ns=(0, 0))  # an old mtime does not make it old: its ctime is now
    dir_fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        old, new, nul = hash_files(dir_fd, [b"old", b"new", b"old\x00new"], 10, bound, False)
    finally:
        os.close(dir_fd)
    assert old is not None and old[4] == blake3.blake3(b"a").hexdigest()
    assert new is None and nul is None


def test_a_file_not_in_memory_is_not_read_when_reads_must_not_wait(tmp_path: Path) -> None:
    path = tmp_path / "cold"
    path.write_bytes(os.urandom(1 << 20))
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # clean pages: dropped from the cache
        try:
            os.preadv(fd, [bytearray(4096)], 0, os.RWF_NOWAIT)
            pytest.skip("this file system kept the file in memory (or ignores the advice)")
        except BlockingIOError:
            pass
        except OSError as exc:
            if exc.errno in (errno.EOPNOTSUPP, errno.EINVAL):
                pytest.skip("this file system refuses reads that do not wait")
            raise
    finally:
        os.close(fd)
    dir_fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert hash_files(dir_fd, [b"cold"], 1 << 21, _FAR, True) == [None]
        found = hash_files(dir_fd, [b"cold"], 1 << 21, _FAR, False)  # waiting is allowed: hashed
    finally:
        os.close(dir_fd)
    assert found[0] is not None and found[0][4] == blake3.blake3(path.read_bytes()).hexdigest()


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=st.binary(max_size=40_000), lengths=st.lists(st.integers(0, 9_000), max_size=12),
       threads=st.integers(1, 6))
@example(content=b"", lengths=[], threads=4)
@example(content=b"x" * 10, lengths=[0, 10, 0, 1], threads=3)
def test_ranges_are_hashed_in_order_and_those_past_the_end_are_none(
    tmp_path_factory: pytest.TempPathFactory, content: bytes, lengths: list[int], threads: int,
) -> None:
    path = tmp_path_factory.mktemp("ranges") / "f"
    path.write_bytes(content)
    expected, offset = [], 0
    for length in lengths:
        part = content[offset:offset + length]
        expected.append(blake3.blake3(part).hexdigest() if len(part) == length else None)
        offset += length
    fd = os.open(path, os.O_RDONLY)
    try:
        os.lseek(fd, 3, os.SEEK_SET)
        assert range_digests(fd, lengths, threads) == expected
        assert os.lseek(fd, 0, os.SEEK_CUR) == 3  # read at offsets: the position is the caller's
    finally:
        os.close(fd)


def test_a_large_file_is_hashed_the_same_on_any_number_of_threads(tmp_path: Path) -> None:
    content = os.urandom(24 << 20)
    (tmp_path / "big").write_bytes(content)
    lengths = [1 << 20] * 23 + [(1 << 20) - 5, 5]
    expected = [blake3.blake3(content[i << 20:(i << 20) + n]).hexdigest() for i, n in enumerate(lengths[:-1])]
    expected.append(blake3.blake3(content[-5:]).hexdigest())
    fd = os.open(tmp_path / "big", os.O_RDONLY)
    try:
        assert {tuple(range_digests(fd, lengths, t)) for t in (1, 2, 4, 64)} == {tuple(expected)}
    finally:
        os.close(fd)


def test_a_read_that_fails_raises_os_error(tmp_path: Path) -> None:
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)  # a directory: every read is EISDIR
    try:
        with pytest.raises(IsADirectoryError):
            range_digests(fd, [10], 2)
    finally:
        os.close(fd)


def _seen(st_: os.stat_result) -> tuple[int, int, int, int, int]:
    return (st_.st_ino, st_.st_dev, st_.st_size, st_.st_mtime_ns, st_.st_ctime_ns)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(entries=st.dictionaries(_NAMES, st.tuples(_KINDS, st.integers(0, 70_000)), max_size=12),
       absent=st.lists(_NAMES, max_size=3))
def test_names_are_stat_ed_as_lstat_finds_them_and_read_only_while_the_regular_file_seen(
    tmp_path_factory: pytest.TempPathFactory, entries: dict[str, tuple[str, int]], absent: list[str],
) -> None:
    root = tmp_path_factory.mktemp("dir")
    _make(root, entries)
    names = [os.fsencode(n) for n in [*entries, *(n for n in absent if n not in entries)]]
    dir_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        found = stat_names(dir_fd, names)
        expected = []
        for name in names:
            try:
                expected.append(os.lstat(name, dir_fd=dir_fd))
            except FileNotFoundError:
                expected.append(None)
        assert [None if f is None else f[:10] for f in found] == [None if e is None else e[:10] for e in expected]
        fields = ("st_atime", "st_mtime", "st_ctime", "st_atime_ns", "st_mtime_ns", "st_ctime_ns")
        assert all(getattr(f, a) == getattr(e, a) for f, e in zip(found, expected) if e is not None for a in fields)
        # Read with what lstat saw: the regular files whole; anything else (a symlink to a
        # regular file, a directory, a FIFO: opened without blocking) declined.
        present = [(n, f) for n, f in zip(names, found) if f is not None]
        got = read_files(dir_fd, [n for n, _ in present], [_seen(f) for _, f in present])
        for (name, f), answer in zip(present, got):
            if stat.S_ISREG(f.st_mode):
                content = (root / os.fsdecode(name)).read_bytes()
                assert answer == (content, blake3.blake3(content).hexdigest())
            else:
                assert answer is None
        # Told another size, mtime or inode than the file has: declined (the walk reads it again).
        files = [(n, f) for n, f in present if stat.S_ISREG(f.st_mode)]
        for change in (2, 3, 0):
            seen = [tuple(v + 1 if i == change else v for i, v in enumerate(_seen(f))) for _, f in files]
            assert read_files(dir_fd, [n for n, _ in files], seen) == [None] * len(files)
    finally:
        os.close(dir_fd)


_RAW_NAMES = st.binary(min_size=1, max_size=10).filter(
    lambda b: b"/" not in b and b"\x00" not in b and b not in (b".", b"..")).map(os.fsdecode)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(entries=st.dictionaries(_NAMES | _RAW_NAMES, st.tuples(_KINDS, st.integers(0, 5_000)), max_size=70))
def test_a_directory_is_listed_with_each_name_and_its_lstat_as_python_finds_them(
    tmp_path_factory: pytest.TempPathFactory, entries: dict[str, tuple[str, int]],
) -> None:
    """Any names (not UTF-8 too, decoded as ``os.fsdecode`` does), any kinds, directories on both
    sides of the size that is stat'ed without the interpreter lock; the caller's descriptor keeps
    its position."""
    root = tmp_path_factory.mktemp("dir")
    _make(root, entries)
    dir_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        found = scan_dir(dir_fd)
        assert scan_dir(dir_fd) == found
        names = [name for name, _ in found]
        assert sorted(names) == sorted(os.listdir(dir_fd)) == sorted({*entries, ".target"})
        for name, st_ in found:
            expected = os.lstat(name, dir_fd=dir_fd)
            assert st_ is not None and st_[:10] == expected[:10]
            assert (st_.st_mtime_ns, st_.st_ctime_ns, st_.st_mtime) == (expected.st_mtime_ns, expected.st_ctime_ns,
                                                                        expected.st_mtime)
    finally:
        os.close(dir_fd)


def test_listing_what_is_not_a_directory_raises_os_error(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x")
    fd = os.open(tmp_path / "f", os.O_RDONLY)
    try:
        with pytest.raises(NotADirectoryError):
            scan_dir(fd)
    finally:
        os.close(fd)
    with pytest.raises(OSError):
        scan_dir(-1)


def test_a_file_changed_since_it_was_stat_ed_is_declined_and_the_others_read(tmp_path: Path) -> None:
    for name in ("a", "b", "c", "d"):
        (tmp_path / name).write_bytes(name.encode() * 10)
    dir_fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        before = stat_names(dir_fd, [b"a", b"b", b"c", b"d", b"a\x00b"])
        assert before[4] is None  # a NUL in the name: no such file
        time.sleep(0.01)
        with open(tmp_path / "b", "r+b") as f:  # same size, new content: its ctime moves
            f.write(b"B" * 10)
        (tmp_path / "c").unlink()
        (tmp_path / "c").write_bytes(b"c" * 10)  # another inode under the name
        (tmp_path / "d").unlink()
        got = read_files(dir_fd, [b"a", b"b", b"c", b"d"], [_seen(s) for s in before[:4]])
        with pytest.raises(ValueError):
            read_files(dir_fd, [b"a"], [])
    finally:
        os.close(dir_fd)
    assert got == [(b"a" * 10, blake3.blake3(b"a" * 10).hexdigest()), None, None, None]


_PREFIX = b".cas-tmp-test-"


def _write(dir_fd: int, files: list[tuple[bytes, bytes, int, int, bool]], umask: int | None = 0o022,
           tmpfile: bool = True) -> tuple[list[object], bool]:
    return write_whole_files(dir_fd, files, _PREFIX, 7, umask, tmpfile)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(files=st.dictionaries(_NAMES.map(os.fsencode), st.tuples(
           st.one_of(st.binary(max_size=5000), st.integers(1, 70_000).map(bytes)),  # content, or zeros
           st.sampled_from([0o644, 0o600, 0o755, 0o666, 0o4755, 0o1777, 0o000]),
           st.integers(-2**40, 2**62), st.booleans()), max_size=8),
       taken=st.lists(st.integers(0, 7), max_size=3), umask=st.sampled_from([None, 0o022, 0o077, 0o000]),
       tmpfile=st.booleans())
def test_files_written_whole_hold_their_content_mode_and_mtime_under_their_name_or_a_temporary_one(
    tmp_path_factory: pytest.TempPathFactory, files: dict[bytes, tuple[bytes, int, int, bool]], taken: list[int],
    umask: int | None, tmpfile: bool,
) -> None:
    root = tmp_path_factory.mktemp("whole")
    names = list(files)
    taken_names = {names[i] for i in taken if i < len(names)}
    for name in taken_names:
        (root / os.fsdecode(name)).write_bytes(b"the file that was there")
    dir_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    old_umask = os.umask(0o022 if umask is None else umask)  # the helper is told the process's umask, or None
    try:
        answers, _ = _write(dir_fd, [(n, *files[n]) for n in names], umask, tmpfile)
    finally:
        os.umask(old_umask)
        os.close(dir_fd)
    temporaries = set()
    for name, answer in zip(names, answers):
        data, mode, mtime_ns, identify = files[name]
        if name in taken_names or not tmpfile:
            assert type(answer) is bytes and answer.startswith(_PREFIX)  # the caller renames it into place
            temporaries.add(answer)
            where = root / os.fsdecode(answer)
            if name in taken_names:
                assert (root / os.fsdecode(name)).read_bytes() == b"the file that was there"
        else:
            where = root / os.fsdecode(name)
            # Named; asked for its identity, the inode and ctime it has under its name.
            assert answer == ((os.lstat(where).st_ino, os.lstat(where).st_ctime_ns) if identify else None)
        st_ = os.lstat(where)
        assert stat.S_ISREG(st_.st_mode) and where.read_bytes() == data
        assert stat.S_IMODE(st_.st_mode) == mode and st_.st_mtime_ns == mtime_ns
    assert len(temporaries) == len([a for a in answers if type(a) is bytes])  # every temporary name its own
    named = {name for name, answer in zip(names, answers) if type(answer) is not bytes}
    assert {os.fsencode(p.name) for p in root.iterdir()} == named | taken_names | temporaries


def test_a_file_that_cannot_be_written_fails_alone_and_leaves_nothing(tmp_path: Path) -> None:
    dir_fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        answers, tmpfile = _write(dir_fd, [(b"ok", b"a", 0o644, 0, False), (b"no/such", b"b", 0o644, 0, True),
                                           (b"nul\0", b"c", 0o644, 0, False), (b"also", b"d", 0o600, 0, False)])
    finally:
        os.close(dir_fd)
    assert tmpfile is True
    assert answers[0] is None and answers[3] is None
    for answer, code in ((answers[1], errno.ENOENT), (answers[2], errno.EINVAL)):
        assert isinstance(answer, OSError) and (answer.errno, answer.strerror) == (code, os.strerror(code))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["also", "ok"]  # the others left nothing


def test_each_file_takes_the_fewest_calls(tmp_path: Path) -> None:
    """Counted by strace in a process of its own: per file one create, one write (none for a file of
    zeros, which is a hole, nor for an empty one), an ``fchmod`` only for a mode the umask would
    change or a special bit, one ``utimensat`` by descriptor, one ``linkat`` (by descriptor where the
    kernel allows it), one close; and one ``fstat`` for a file whose identity is asked for (to be
    recorded in the files cache)."""
    strace = shutil.which("strace")
    if strace is None:
        pytest.skip("strace is not installed")
    code = f"""
import os, sys
sys.path[:0] = {sys.path!r}
from cas.native.files import write_whole_files
os.umask(0o022)
fd = os.open({str(tmp_path)!r}, os.O_RDONLY | os.O_DIRECTORY)
files = [(b"data", b"x" * 100, 0o644, 1, False), (b"zeros", bytes(4096), 0o644, 2, False),
         (b"empty", b"", 0o600, 3, False), (b"wide", b"y", 0o666, 4, False), (b"setuid", b"z", 0o4755, 5, False),
         (b"known", b"w" * 10, 0o644, 6, True)]
os.write(2, b"BEGIN\\n")
answers, _ = write_whole_files(fd, files, b".cas-tmp-t-", 0, 0o022, True)
os.write(2, b"END\\n")
assert answers[:5] == [None] * 5 and type(answers[5]) is tuple, answers
"""
    log = tmp_path.parent / "strace.log"
    subprocess.run([strace, "-f", "-qq", "-o", str(log), sys.executable, "-c", code], check=True, timeout=60)
    lines = log.read_text().splitlines()
    begin = next(i for i, line in enumerate(lines) if 'write(2, "BEGIN' in line)
    end = next(i for i, line in enumerate(lines) if 'write(2, "END' in line)
    calls = Counter(re.match(r"(?:\d+\s+)?(\w+)\(", line).group(1) for line in lines[begin + 1:end]
                    if re.match(r"(?:\d+\s+)?\w+\(", line))
    assert calls["openat"] == 6 and all("O_TMPFILE" in line for line in lines[begin + 1:end] if "openat(" in line)
    assert calls["write"] == 4  # data, wide, setuid, known: not zeros, not empty
    assert calls["ftruncate"] == 1  # zeros
    assert calls["fchmod"] == 2  # 0o666 through umask 022, and setuid: after the content
    assert calls["utimensat"] == 6 and calls["linkat"] == 6 and calls["close"] == 6
    assert calls["fstat"] + calls["newfstatat"] + calls["statx"] == 1  # the identity of "known" alone
    if os.geteuid() == 0 or tuple(int(p) for p in re.findall(r"\d+", os.uname().release)[:2]) >= (6, 10):
        # linked by the descriptor, without a path walk through /proc/self/fd (see `link_as`)
        links = [line for line in lines[begin + 1:end] if "linkat(" in line]
        assert all("AT_EMPTY_PATH" in line and "/proc/" not in line for line in links), links
    assert sum(calls.values()) == 6 + 4 + 1 + 2 + 6 + 6 + 6 + 1, calls
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()} == {
        "data": 0o644, "zeros": 0o644, "empty": 0o600, "wide": 0o666, "setuid": 0o4755, "known": 0o644}
