"""``cas mount`` for real: a ``cas mount`` process serving a FUSE mount, read with real syscalls.

Needs /dev/fuse, libfuse (Debian's fuse3) and mfusepy, which CI installs (.ci/services.sh, the
``[mount]`` extra).
"""

from __future__ import annotations

import ctypes
import errno
import os
import signal
import stat
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from cas import Store
from cas.format.keys import pack_key
from cas.mount import is_mounted, unmount
from tests.hostile import forge
from tests.treeutil import describe

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Store]:
    monkeypatch.setenv("CAS_HOME", str(tmp_path / "home"))
    s = Store.open(str(tmp_path / "repo"), index=f"sqlite:///{tmp_path / 'index.sqlite'}",
                   chunk_min=256, chunk_avg=1024, chunk_max=4096)
    yield s
    s.close()


@pytest.fixture
def project(tmp_path: Path) -> Path:
    src = tmp_path / "project"
    (src / "code" / "pkg").mkdir(parents=True)
    (src / "model").mkdir()
    (src / "empty").mkdir()
    (src / "code" / "train.py").write_text("print('train')\n" * 30)
    (src / "code" / "pkg" / "__init__.py").write_text("")
    (src / "model" / "weights.bin").write_bytes(os.urandom(200_000))
    (src / "odd name \u00e9 \\ 'quoted'.txt").write_text("odd\n")
    os.symlink("code/train.py", src / "main.py")
    os.symlink("/nonexistent/absolute", src / "dangling")
    os.chmod(src / "code" / "train.py", 0o751)
    os.chmod(src / "code" / "pkg", 0o700)
    os.utime(src / "code" / "train.py", ns=(1_600_000_000_123_456_789, 1_600_000_000_123_456_789))
    os.utime(src / "code", ns=(1_500_000_000_000_000_001, 1_500_000_000_000_000_001))
    return src


@contextmanager
def mounted(tmp_path: Path, store: Store, *args: str) -> Iterator[tuple[Path, subprocess.Popen[bytes], Path]]:
    """A ``cas mount`` process and its mountpoint; unmounted and reaped at the end whatever happens."""
    mnt = tmp_path / "mnt"
    mnt.mkdir(exist_ok=True)
    log = tmp_path / "mount.log"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "cas", "--repo", store.repo.backend.root, "--index",
           f"sqlite:///{tmp_path / 'index.sqlite'}", "mount", str(mnt), *args]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=out, env=env)
    try:
        deadline = time.monotonic() + 60
        while not is_mounted(str(mnt)):
            if proc.poll() is not None:
                raise AssertionError(f"cas mount exited {proc.returncode}: {log.read_text()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"not mounted after 60 s: {log.read_text()}")
            time.sleep(0.05)
        yield mnt, proc, log
    finally:
        if proc.poll() is None:
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True, check=False)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True, check=False)


def cas(tmp_path: Path, store: Store, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "cas", "--repo", store.repo.backend.root, "--index",
                           f"sqlite:///{tmp_path / 'index.sqlite'}", *args],
                          capture_output=True, text=True, env=env, timeout=120, check=False)


def test_the_tree_is_served_as_stored(tmp_path: Path, repo: Store, project: Path) -> None:
    repo.snapshot(project, "run-42")
    repo.snapshot(project / "code", "run-43")
    with mounted(tmp_path, repo) as (mnt, _proc, _log):
        assert sorted(os.listdir(mnt)) == ["run-42", "run-43"]
        # types, permission bits, mtimes (to the nanosecond), symlink targets and contents
        assert describe(str(mnt / "run-42")) == describe(str(project))
        assert describe(str(mnt / "run-43")) == describe(str(project / "code"))
        link = os.lstat(mnt / "run-42" / "dangling")
        assert stat.S_ISLNK(link.st_mode) and os.readlink(mnt / "run-42" / "dangling") == "/nonexistent/absolute"
        st = os.stat(mnt / "run-42" / "model" / "weights.bin")
        assert st.st_size == 200_000 and st.st_uid == os.getuid()
        assert (mnt / "run-42" / "main.py").read_text() == (project / "code" / "train.py").read_text()
        with pytest.raises(FileNotFoundError):
            os.stat(mnt / "run-44")


def test_range_reads_return_the_files_bytes(tmp_path: Path, repo: Store, project: Path) -> None:
    repo.snapshot(project, "run-42")
    data = (project / "model" / "weights.bin").read_bytes()
    with mounted(tmp_path, repo) as (mnt, _proc, _log):
        fd = os.open(mnt / "run-42" / "model" / "weights.bin", os.O_RDONLY)
        try:
            for offset, length in [(123_457, 4096), (0, 1), (199_990, 100), (77_777, 60_000), (250_000, 10)]:
                assert os.pread(fd, length, offset) == data[offset : offset + length]
        finally:
            os.close(fd)


def test_writes_are_refused(tmp_path: Path, repo: Store, project: Path) -> None:
    repo.snapshot(project, "run-42")
    with mounted(tmp_path, repo) as (mnt, _proc, _log):
        attempts = [
            lambda: os.open(mnt / "run-42" / "new.txt", os.O_WRONLY | os.O_CREAT, 0o644),
            lambda: os.open(mnt / "run-42" / "code" / "train.py", os.O_RDWR),
            lambda: os.mkdir(mnt / "run-42" / "dir"),
            lambda: os.unlink(mnt / "run-42" / "code" / "train.py"),
            lambda: os.rename(mnt / "run-42" / "main.py", mnt / "run-42" / "other.py"),
            lambda: os.chmod(mnt / "run-42" / "code" / "train.py", 0o777),
            lambda: os.symlink("x", mnt / "run-42" / "link2"),
            lambda: os.mkdir(mnt / "run-44"),
        ]
        for attempt in attempts:
            with pytest.raises(OSError) as info:
                attempt()
            assert info.value.errno == errno.EROFS
        assert describe(str(mnt / "run-42")) == describe(str(project))


def test_only_the_named_executions_are_served(tmp_path: Path, repo: Store, project: Path) -> None:
    repo.snapshot(project, "run-1")
    repo.snapshot(project, "run-2")
    with mounted(tmp_path, repo, "--execution", "run-2") as (mnt, _proc, _log):
        assert os.listdir(mnt) == ["run-2"]
        with pytest.raises(FileNotFoundError):
            os.stat(mnt / "run-1")


def test_hostile_trees_never_escape_and_symlinks_are_not_followed(tmp_path: Path, repo: Store) -> None:
    good = forge.put_tree(repo, [forge.file_entry(repo, "ok.txt", b"fine\n")])
    for i, bad_name in enumerate(["../escape", "a/b", "..", "."]):
        bad = forge.put_tree(repo, [forge.file_entry(repo, bad_name)])
        root = forge.put_tree(repo, [
            {"name": "good", "type": "dir", "mode": 0o755, "mtime_ns": 0, "tree": good},
            {"name": "hostile", "type": "dir", "mode": 0o755, "mtime_ns": 0, "tree": bad},
            {"name": "passwd", "type": "symlink", "mode": 0o777, "mtime_ns": 0, "target": "../../../../etc/passwd"},
            forge.file_entry(repo, "suid", b"#!/bin/sh\n", mode=0o4755),
        ])
        forge.commit(repo, f"evil-{i}", root)
    with mounted(tmp_path, repo) as (mnt, _proc, log):
        outside_before = sorted(os.listdir(tmp_path))
        for i in range(4):
            base = mnt / f"evil-{i}"
            assert sorted(os.listdir(base)) == ["good", "hostile", "passwd", "suid"]
            with pytest.raises(OSError) as info:
                os.listdir(base / "hostile")
            assert info.value.errno == errno.EIO
            assert (base / "good" / "ok.txt").read_bytes() == b"fine\n"
            st = os.lstat(base / "passwd")
            assert stat.S_ISLNK(st.st_mode) and os.readlink(base / "passwd") == "../../../../etc/passwd"
            assert stat.S_IMODE(os.stat(base / "suid").st_mode) == 0o755  # setuid dropped
            with pytest.raises(OSError):
                os.stat(base / "hostile" / "escape")
        assert sorted(os.listdir(tmp_path)) == outside_before
    assert "evil-0/hostile" in log.read_text()


def test_a_corrupt_chunk_is_eio_for_that_read_and_logged_with_the_file(tmp_path: Path, repo: Store,
                                                                      project: Path) -> None:
    repo.snapshot(project, "run-42")
    entry = repo.view().open(repo.view().lookup("run-42/model/weights.bin")).entry  # with its chunk list
    loc = repo.repo.locate([entry.chunks[5]])[entry.chunks[5]]
    pack = Path(repo.repo.backend.root) / pack_key(loc.pack_id)
    raw = bytearray(pack.read_bytes())
    raw[loc.offset + 3] ^= 0x01
    pack.write_bytes(bytes(raw))
    data = (project / "model" / "weights.bin").read_bytes()
    with mounted(tmp_path, repo) as (mnt, _proc, log):
        with pytest.raises(OSError) as info:
            (mnt / "run-42" / "model" / "weights.bin").read_bytes()
        assert info.value.errno == errno.EIO
        fd = os.open(mnt / "run-42" / "model" / "weights.bin", os.O_RDONLY | getattr(os, "O_DIRECT", 0))
        try:
            assert os.pread(fd, 512, 0) == data[:512]  # the intact chunks still read
        finally:
            os.close(fd)
        assert (mnt / "run-42" / "code" / "train.py").read_bytes() == (project / "code" / "train.py").read_bytes()
    assert "run-42/model/weights.bin" in log.read_text()


@pytest.mark.parametrize("stop", ["SIGINT", "SIGTERM", "fusermount"])
def test_it_stops_cleanly_and_leaves_no_mount(tmp_path: Path, repo: Store, project: Path, stop: str) -> None:
    repo.snapshot(project, "run-42")
    with mounted(tmp_path, repo) as (mnt, proc, log):
        assert os.listdir(mnt) == ["run-42"]
        if stop == "fusermount":
            subprocess.run(["fusermount3", "-u", str(mnt)], check=True)
        else:
            proc.send_signal(getattr(signal, stop))
        assert proc.wait(timeout=30) == 0, log.read_text()
        assert not is_mounted(str(mnt))
        assert os.listdir(mnt) == []
        # What it printed is its own line and nothing else (no traceback, no libfuse complaint).
        assert log.read_text().splitlines() == [
            f"cas: serving {mnt} read-only; stop with Ctrl-C or 'fusermount -u {mnt}'"]


def test_a_directory_larger_than_one_kernel_buffer_is_listed_whole(tmp_path: Path, repo: Store) -> None:
    # The kernel reads a big directory in several calls (4 KiB or so each, with attributes for
    # subdirectories); each name must come exactly once, and each subdirectory's attributes must
    # be the ones stat gives.
    src = tmp_path / "big"
    for i in range(600):
        (src / f"directory-with-a-long-name-{i:04}").mkdir(parents=True)
        (src / f"file-with-a-long-name-{i:04}.txt").write_text(str(i))
    os.utime(src / "directory-with-a-long-name-0007", ns=(1, 1_234_567_891_234_567_891))
    repo.snapshot(src, "run-42")
    with mounted(tmp_path, repo) as (mnt, _proc, _log):
        assert sorted(os.listdir(mnt / "run-42")) == sorted(os.listdir(src))
        assert describe(str(mnt / "run-42")) == describe(str(src))


def test_bad_mountpoints_and_unknown_executions_are_one_line_errors(tmp_path: Path, repo: Store,
                                                                   project: Path) -> None:
    repo.snapshot(project, "run-42")
    (tmp_path / "mnt").mkdir()
    for args, wanted in [
        (["mount", str(tmp_path / "missing")], "not a directory"),
        (["mount", str(project / "code" / "train.py")], "not a directory"),
        (["mount", str(tmp_path / "mnt"), "--execution", "run-99"], "run-99"),
    ]:
        out = cas(tmp_path, repo, *args)
        assert out.returncode == 1, out.stderr
        assert out.stderr.count("\n") == 1 and wanted in out.stderr and "Traceback" not in out.stderr
        assert not is_mounted(str(tmp_path / "mnt"))


def test_a_mount_left_by_a_killed_process_is_refused_and_unmount_clears_it(tmp_path: Path, repo: Store,
                                                                           project: Path) -> None:
    """Only SIGKILL can leave a dead mount (every other exit unmounts); the same unmount that
    `cas mount` runs on its way out clears it."""
    repo.snapshot(project, "run-42")
    with mounted(tmp_path, repo) as (mnt, proc, _log):
        proc.kill()
        proc.wait(timeout=30)
        assert is_mounted(str(mnt))
        with pytest.raises(OSError) as info:
            os.listdir(mnt)
        assert info.value.errno == errno.ENOTCONN
        out = cas(tmp_path, repo, "mount", str(mnt))
        assert out.returncode == 1 and "already a mountpoint" in out.stderr and out.stderr.count("\n") == 1
        unmount(str(mnt))
        assert not is_mounted(str(mnt)) and os.listdir(mnt) == []


class PackOpens:
    """The pack files of a local repository opened since the last :meth:`take` (inotify): each
    backend read of a local repository opens its pack once. Closes are watched too, since inotify
    merges an event with the one before it when they are the same (open, open)."""

    IN_OPEN, IN_CLOSE_NOWRITE = 0x20, 0x10

    def __init__(self, repo_root: Path) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self.fd = libc.inotify_init1(os.O_NONBLOCK)
        assert self.fd >= 0, os.strerror(ctypes.get_errno())
        for directory in (repo_root / "data").iterdir():
            assert libc.inotify_add_watch(self.fd, bytes(directory), self.IN_OPEN | self.IN_CLOSE_NOWRITE) >= 0

    def take(self) -> list[str]:
        names = []
        while True:
            try:
                buf = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                return names
            at = 0
            while at < len(buf):
                _wd, mask, _cookie, length = struct.unpack_from("iIII", buf, at)
                if mask & self.IN_OPEN:
                    names.append(buf[at + 16 : at + 16 + length].rstrip(b"\0").decode())
                at += 16 + length

    def close(self) -> None:
        os.close(self.fd)


def _small_files(src: Path) -> dict[str, bytes]:
    src.mkdir(parents=True)
    files = {f"f{i:02}.bin": os.urandom(4200 + 61 * i) for i in range(40)}  # over chunk_max: 2+ chunks
    for name, data in files.items():
        (src / name).write_bytes(data)
    return files


def test_a_directorys_small_files_are_read_with_one_backend_read_per_pack(tmp_path: Path, repo: Store) -> None:
    files = _small_files(tmp_path / "project" / "code")
    repo.snapshot(tmp_path / "project", "run-42")
    code = next(e for e in repo.repo.read_tree(repo.get("run-42").root) if e.name == "code")
    chunks = {c for e in repo.repo.read_tree(code.tree) for c in e.chunks}
    packs = {loc.pack_id for loc in repo.repo.locate(chunks).values()}
    opens = PackOpens(Path(repo.repo.backend.root))
    try:
        with mounted(tmp_path, repo) as (mnt, _proc, _log):
            opens.take()
            for name, data in files.items():  # `cat code/*`: one file after the other, in name order
                assert (mnt / "run-42" / "code" / name).read_bytes() == data
            assert sorted(name for name in opens.take() if name in packs) == sorted(packs)
    finally:
        opens.close()


def test_a_corrupt_chunk_among_small_files_read_ahead_is_eio_only_for_reads_covering_it(
    tmp_path: Path, repo: Store
) -> None:
    files = _small_files(tmp_path / "project" / "code")
    repo.snapshot(tmp_path / "project", "run-42")
    code = next(e for e in repo.repo.read_tree(repo.get("run-42").root) if e.name == "code")
    bad = next(e for e in repo.repo.read_tree(code.tree) if e.name == "f17.bin")
    loc = repo.repo.locate([bad.chunks[-1]])[bad.chunks[-1]]
    pack = Path(repo.repo.backend.root) / pack_key(loc.pack_id)
    raw = bytearray(pack.read_bytes())
    raw[loc.offset + loc.length // 2] ^= 0x01
    pack.write_bytes(bytes(raw))
    with mounted(tmp_path, repo) as (mnt, _proc, log):
        for name, data in files.items():
            path = mnt / "run-42" / "code" / name
            if name != "f17.bin":
                assert path.read_bytes() == data
                continue
            with pytest.raises(OSError) as info:
                path.read_bytes()
            assert info.value.errno == errno.EIO
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECT", 0))
            try:  # the chunks before the corrupt (last) one still read
                assert os.pread(fd, 512, 0) == data[:512]
            finally:
                os.close(fd)
    assert "run-42/code/f17.bin" in log.read_text()


def _conn(capable: int) -> object:
    """libfuse's connection info as the kernel's INIT fills it (only ``capable`` is read)."""
    mfusepy = pytest.importorskip("mfusepy")
    conn = mfusepy.fuse_conn_info()
    conn.capable = capable
    return conn


def test_without_opens_files_are_read_by_path_and_few_readers_are_kept(tmp_path: Path, repo: Store) -> None:
    """The callbacks themselves, on a real view: a kernel able to skip opens is answered ENOSYS
    once (it then sends reads with no handle), reads by path return the file's bytes, and only
    the last READERS_KEPT files read in part keep a reader; a kernel without it gets handles."""
    from cas.mount import _CAP_NO_OPEN_SUPPORT, READERS_KEPT, Operations

    src = tmp_path / "src"
    src.mkdir()
    files = {f"f{i}.bin": os.urandom(5000 + i) for i in range(READERS_KEPT + 4)}
    for name, data in files.items():
        (src / name).write_bytes(data)
    repo.snapshot(src, "run-1")

    ops = Operations(repo.view())
    ops.init_with_config(_conn(_CAP_NO_OPEN_SUPPORT), None)
    with pytest.raises(OSError) as refused:
        ops.open("/run-1/f0.bin", os.O_RDONLY)
    assert refused.value.errno == errno.ENOSYS
    for offset in (0, 1000, 4000):  # every file read in three parts, the files interleaved
        for name, data in files.items():
            assert ops.read(f"/run-1/{name}", 1000, offset, 0) == data[offset : offset + 1000]
    assert len(ops._readers) == READERS_KEPT
    assert ops.read("/run-1/f1.bin", 1 << 20, 0, 0) == files["f1.bin"]  # read whole: nothing kept for it
    assert "/run-1/f1.bin" not in ops._readers

    old_kernel = Operations(repo.view())
    old_kernel.init_with_config(_conn(0), None)
    fh = old_kernel.open("/run-1/f2.bin", os.O_RDONLY)
    assert fh > 0 and old_kernel.read("/run-1/f2.bin", 100, 50, fh) == files["f2.bin"][50:150]
    old_kernel.release("/run-1/f2.bin", fh)


def test_interleaved_reads_of_many_files_and_handles_return_their_bytes(tmp_path: Path, repo: Store) -> None:
    """Through a real mount: more files than readers kept, and two handles on one file at
    different offsets, read a piece at a time in turn (the kernel's cache bypassed)."""
    src = tmp_path / "src"
    src.mkdir()
    files = {f"f{i}.bin": os.urandom(300_000 + i) for i in range(12)}
    for name, data in files.items():
        (src / name).write_bytes(data)
    repo.snapshot(src, "run-1")
    with mounted(tmp_path, repo) as (mnt, _proc, _log):
        fds = {name: os.open(mnt / "run-1" / name, os.O_RDONLY | os.O_DIRECT) for name in files}
        second = os.open(mnt / "run-1" / "f0.bin", os.O_RDONLY | os.O_DIRECT)
        try:
            for offset in range(0, 300_000, 65_536):
                for name, fd in fds.items():
                    assert _pread_aligned(fd, offset) == files[name][offset : offset + 65_536]
                back = 299_008 - offset - (299_008 - offset) % 4096
                assert _pread_aligned(second, back) == files["f0.bin"][back : back + 65_536]
        finally:
            for fd in [*fds.values(), second]:
                os.close(fd)


def _pread_aligned(fd: int, offset: int) -> bytes:
    """64 KiB at ``offset`` (a multiple of 4096) through an aligned buffer, as O_DIRECT wants."""
    import mmap

    buf = mmap.mmap(-1, 65_536)
    try:
        n = os.preadv(fd, [buf], offset)
        return bytes(buf[:n])
    finally:
        buf.close()


def test_a_listing_carries_each_entrys_attributes_as_a_lookup_gives_them(tmp_path: Path, repo: Store,
                                                                         project: Path) -> None:
    """readdirplus answers with the attributes of subdirectories and (from a directory's second
    listing on) files, so the kernel needs no lookup to stat or open them: each is exactly what a
    lookup of that path gives."""
    from cas.mount import Operations

    repo.snapshot(project, "run-42")
    ops = Operations(repo.view())
    for directory, source in (("/run-42", project), ("/run-42/code", project / "code")):
        listing, files_too = ops.readdir_plus(directory)
        assert not files_too  # a first listing: subdirectories' attributes only
        assert ops.readdir_plus(directory, len(listing)) == (listing, False)  # its end, as its start
        assert ops.readdir_plus(directory) == (listing, True)  # listed again: the files' too
        assert ops.readdir_plus(directory, 3) == (listing, True)
        fields_of = {name: fields for name, _type, fields in listing}
        assert set(fields_of) - {".", ".."} == set(os.listdir(source))
        for name, fields in fields_of.items():
            if name in (".", ".."):
                continue
            looked_up = ops.getattr(f"{directory}/{name}")
            if fields is None:  # symlinks only: their lookup reads the target
                assert stat.S_ISLNK(looked_up["st_mode"])
            else:
                assert fields == tuple(looked_up[k] for k in ("st_mode", "st_nlink", "st_size", "st_mtime"))
                assert (looked_up["st_ctime"], looked_up["st_atime"]) == (fields[3], fields[3])
    train = (stat.S_IFREG | 0o751, 1, len("print('train')\n" * 30), 1_600_000_000_123_456_789)
    assert fields_of["train.py"] == train
