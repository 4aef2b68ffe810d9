"""cas.ops.restore.hash_ahead: a real child process hashing a real destination's small files ahead of
a restore's walk, and what the walk may conclude from its records."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cas import Store
from cas.format.hashing import hexdigest
from cas.format.trees import FILE, Entry
from cas.ops.restore import hash_ahead
from cas.ops.restore import local as restore_local
from cas.ops.restore.hash_ahead import HashAhead, Hashed, judge
from cas.ops.restore.walk import Restorer
from tests.treeutil import describe

_SMALL = 4096


def _ident(path: Path) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def _records(ahead: HashAhead, dirs: list[Path], timeout: float = 30.0) -> dict[Path, tuple[int, dict[str, Hashed]]]:
    """What the child sent for each of ``dirs``, waiting for it (the child hashes them all)."""
    got: dict[Path, tuple[int, dict[str, Hashed]]] = {}
    deadline = time.monotonic() + timeout
    while len(got) < len(dirs) and time.monotonic() < deadline:
        for d in dirs:
            if d not in got:
                found = ahead.take(_ident(d))
                if found is not None:
                    got[d] = found
        time.sleep(0.01)
    return got


def _child_gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_the_child_sends_each_small_regular_file_with_its_identity_and_blake3(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    (dest / "a" / "deep").mkdir(parents=True)
    (dest / "b").mkdir()
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret").write_bytes(b"not ours")
    files = {dest / "top": b"top", dest / "a" / "one": os.urandom(1000), dest / "a" / "deep" / "two": b"",
             dest / "b" / "three": os.urandom(_SMALL)}
    for path, data in files.items():
        path.write_bytes(data)
    (dest / "b" / "big").write_bytes(os.urandom(_SMALL + 1))  # over the size asked for
    (dest / "b" / "link").symlink_to(dest / "top")  # a symlink is never read through
    (dest / "b" / "away").symlink_to(tmp_path / "outside")  # nor entered
    os.mkfifo(dest / "b" / "fifo")
    (dest / "b" / ".cas-tmp-x-1-y-2").write_bytes(b"someone's temporary")
    fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY)
    try:
        ahead = HashAhead(fd, _SMALL, settled_ns=0)
        try:
            dirs = [dest, dest / "a", dest / "a" / "deep", dest / "b"]
            got = _records(ahead, dirs)
            assert set(got) == set(dirs)
            for d, (at_ns, records) in got.items():
                assert at_ns <= time.time_ns()
                expected = {}
                for path, data in files.items():
                    if path.parent == d:
                        st = os.stat(path)
                        expected[path.name] = (st.st_ino, len(data), st.st_mtime_ns, st.st_ctime_ns, hexdigest(data),
                                               stat.S_IMODE(st.st_mode))
                assert records == expected
            assert ahead.take(_ident(tmp_path / "outside")) is None
            assert ahead.pid is not None
            pid = ahead.pid
        finally:
            ahead.close()
        assert _child_gone(pid)
    finally:
        os.close(fd)


def test_files_changed_too_recently_are_not_hashed(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"just written")
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        ahead = HashAhead(fd, _SMALL, settled_ns=3600 * 10**9)
        try:
            assert _records(ahead, [tmp_path]) == {tmp_path: (pytest.approx(time.time_ns(), abs=60 * 10**9), {})}
        finally:
            ahead.close()
    finally:
        os.close(fd)


def test_a_subdirectory_the_walk_says_the_tree_lacks_is_not_hashed(tmp_path: Path) -> None:
    for name in ("keep", "gone"):
        (tmp_path / name / "sub").mkdir(parents=True)
        (tmp_path / name / "sub" / "f").write_bytes(b"x")
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        ahead = HashAhead(fd, _SMALL, settled_ns=0)
        try:
            ahead.skip(_ident(tmp_path), "gone")  # sent before the child has started its walk
            got = _records(ahead, [tmp_path / "keep" / "sub"])
            assert tmp_path / "keep" / "sub" in got
            # The child walks in the restore's order: by name, "gone" before "keep". It was left.
            assert ahead.take(_ident(tmp_path / "gone")) is None
            assert ahead.take(_ident(tmp_path / "gone" / "sub")) is None
        finally:
            ahead.close()
    finally:
        os.close(fd)


def _entry(name: str, data: bytes, mtime_ns: int, mode: int = 0o644) -> Entry:
    return Entry(name=name, type=FILE, mode=mode, mtime_ns=mtime_ns, size=len(data), digest=hexdigest(data))


def test_a_record_is_trusted_only_while_the_file_is_as_it_was_hashed(tmp_path: Path) -> None:
    path = tmp_path / "f"
    data = os.urandom(100)
    path.write_bytes(data)
    os.chmod(path, 0o644)
    mtime_ns = os.stat(path).st_mtime_ns
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        ahead = HashAhead(fd, _SMALL, settled_ns=0)
        try:
            at_ns, records = _records(ahead, [tmp_path])[tmp_path]
        finally:
            ahead.close()
    finally:
        os.close(fd)
    hashed = records["f"]
    entry = _entry("f", data, mtime_ns)
    assert judge(hashed, at_ns, os.lstat(path), entry, 0o644, settled_ns=0) is True
    assert judge(hashed, at_ns, os.lstat(path), _entry("f", os.urandom(100), mtime_ns), 0o644, 0) is False
    assert judge(hashed, at_ns, os.lstat(path), _entry("f", data + b"!", mtime_ns), 0o644, 0) is False
    # A mode or mtime to fix: left to the comparison that fixes them.
    assert judge(hashed, at_ns, os.lstat(path), entry, 0o600, 0) is None
    assert judge(hashed, at_ns, os.lstat(path), _entry("f", data, mtime_ns + 1), 0o644, 0) is None
    # Not settled when it was hashed: nothing is known.
    assert judge(hashed, at_ns, os.lstat(path), entry, 0o644, settled_ns=3600 * 10**9) is None
    # Rewritten since with the same size and mtime: its ctime says so.
    time.sleep(0.01)
    path.write_bytes(os.urandom(100))
    os.utime(path, ns=(mtime_ns, mtime_ns))
    assert judge(hashed, at_ns, os.lstat(path), entry, 0o644, 0) is None
    # Replaced by another file (another inode) with the old content back.
    path.unlink()
    keep = tmp_path / "keep"  # holds the old inode, so it cannot be reused
    keep.write_bytes(b"")
    path.write_bytes(data)
    os.utime(path, ns=(mtime_ns, mtime_ns))
    assert judge(hashed, at_ns, os.lstat(path), entry, 0o644, 0) is None


class _ChangingAfterHashed(Restorer):
    """A restore during which ``victim`` is rewritten (same size, same mtime) once the child hashing
    ahead has sent its directory's records, before the walk surveys it."""

    victim: Path

    def _start_hash_ahead(self, dest_fd: int) -> None:
        super()._start_hash_ahead(dest_fd)
        assert self._hash_ahead is not None
        ident = _ident(self.victim.parent)
        found = _records(self._hash_ahead, [self.victim.parent])[self.victim.parent]
        assert self.victim.name in found[1]
        mtime_ns = os.stat(self.victim).st_mtime_ns
        time.sleep(0.01)
        self.victim.write_bytes(os.urandom(self.victim.stat().st_size))
        os.utime(self.victim, ns=(mtime_ns, mtime_ns))
        with self._hash_ahead._lock:  # as if it had just arrived
            self._hash_ahead._ready[ident] = found


def test_a_file_changed_after_it_was_hashed_ahead_is_compared_again_and_rewritten(
    tmp_path: Path, cas_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src, dest = tmp_path / "src", tmp_path / "dest"
    (src / "d").mkdir(parents=True)
    for i in range(20):
        (src / "d" / f"f{i}").write_bytes(os.urandom(300 + i))
    with Store.open(str(tmp_path / "repo"), create=True) as store:
        store.snapshot(str(src), "v1")
        store.restore("v1", str(dest))
        monkeypatch.setattr(restore_local, "SETTLED_NS", 0)  # as if restored long ago
        snap = store.get("v1")
        restorer = _ChangingAfterHashed(store.repo, overwrite=True, delete=True)
        restorer.victim = dest / "d" / "f7"
        report = restorer.restore(store.repo.read_tree(snap.root), str(dest), (snap.root_mode, snap.root_mtime_ns))
    assert describe(str(dest)) == describe(str(src))
    assert (report.unchanged, report.written) == (20, 1)  # the directory and 19 files; the victim


# -- the child started before the engine loads (the command line's restore) -----------------------


def _start_on(dest: Path) -> HashAhead:
    """What the restore of ``dest`` gets from :func:`hash_ahead.start` (its descriptor closed after)."""
    fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return hash_ahead.start(fd, 0)
    finally:
        os.close(fd)


def test_a_child_started_early_is_the_one_the_restore_of_that_directory_takes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "f").write_bytes(b"settled")
    monkeypatch.setattr(hash_ahead, "SETTLED_NS", 0)
    hash_ahead.start_early(str(dest))
    assert len(hash_ahead._early) == 1
    early = hash_ahead._early[0][1]
    taken = _start_on(dest)
    try:
        assert taken is early and not hash_ahead._early
        got = _records(taken, [dest])
        assert set(got[dest][1]) == {"f"}  # it hashed the destination it was started on
    finally:
        taken.close()


def test_a_child_started_early_for_another_directory_is_stopped(tmp_path: Path) -> None:
    other, dest = tmp_path / "other", tmp_path / "dest"
    for d in (other, dest):
        d.mkdir()
        (d / "f").write_bytes(b"x")
    hash_ahead.start_early(str(other))
    early = hash_ahead._early[0][1]
    assert early.pid is not None
    started = _start_on(dest)
    try:
        assert started is not early and not hash_ahead._early
        assert _child_gone(early.pid)
    finally:
        started.close()


@pytest.mark.parametrize("kind", ["missing", "empty", "a file"])
def test_nothing_is_started_early_where_there_is_nothing_to_hash(tmp_path: Path, kind: str) -> None:
    dest = tmp_path / "dest"
    if kind == "empty":
        dest.mkdir()
    elif kind == "a file":
        dest.write_bytes(b"not a directory")
    hash_ahead.start_early(str(dest))
    assert not hash_ahead._early


def _processes_in(cwd: Path) -> list[int]:
    """Processes whose working directory is ``cwd``."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.readlink(f"/proc/{pid}/cwd") == str(cwd):
                found.append(int(pid))
        except OSError:
            continue
    return found


@pytest.mark.parametrize("execution", ["v1", "no-such-execution"])
def test_the_command_line_restore_over_a_destination_leaves_no_child_behind(
    tmp_path: Path, execution: str
) -> None:
    """The command line starts the hashing child before it knows whether the restore can run: the
    child is the restore's when it runs, and stopped when the command fails before it does."""
    src, dest, work = tmp_path / "src", tmp_path / "dest", tmp_path / "work"
    (src / "d").mkdir(parents=True)
    work.mkdir()
    for i in range(40):
        (src / "d" / f"f{i}").write_bytes(os.urandom(100 + i))
    env = {**os.environ, "CAS_HOME": str(tmp_path / "home"), "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    cli = [sys.executable, "-m", "cas", "--repo", str(tmp_path / "repo")]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*cli, *args], capture_output=True, text=True, env=env, cwd=work, check=False)

    assert run("init").returncode == 0
    assert run("snapshot", str(src), "--execution-id", "v1").returncode == 0
    assert run("restore", "v1", str(dest)).returncode == 0
    (dest / "d" / "f3").write_bytes(b"changed")
    done = run("restore", execution, str(dest), "--overwrite", "--delete")
    if execution == "v1":
        assert done.returncode == 0, done.stderr
        assert describe(str(dest)) == describe(str(src))
    else:
        assert done.returncode == 1 and done.stderr.count("\n") == 1 and "no-such-execution" in done.stderr
    assert _processes_in(work) == []
