"""Faults: backends that fail, lie or stall; a disk that fills up; a restore killed part way.

Every failure must surface as one clean :class:`CasError`; nothing half-written may appear under a
final name; no ``.cas-tmp-*`` temporaries may be left behind; and what was stored stays restorable.
"""

from __future__ import annotations

import errno
import functools
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import cas.ops.restore.write
from backends.base import Backend, Capabilities, ObjectInfo
from backends.faulty import FaultyBackend
from backends.local import LocalBackend
from backends.retry import RetryingBackend
from cas import CasError, IntegrityError, Store, Unavailable
from cas.format.keys import pack_key
from cas.repo.repository import Repository
from tests import engine
from tests.treeutil import describe

ROOT = Path(__file__).resolve().parents[2]


# -- helpers ------------------------------------------------------------------------------------


def make_project(root: Path, files: int = 12, size: int = 3000) -> Path:
    src = root / "project"
    (src / "sub").mkdir(parents=True)
    rng = random.Random(7)
    for i in range(files):
        where = src / "sub" if i % 3 == 0 else src
        (where / f"f{i:03d}.bin").write_bytes(rng.randbytes(size + i))
    (src / "empty").write_bytes(b"")
    os.symlink("sub/f000.bin", src / "link")
    return src


def temporaries(root: Path) -> list[str]:
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        found += [os.path.join(dirpath, n) for n in dirnames + filenames if n.startswith(".cas-tmp-")]
    return found


def final_files(root: Path) -> dict[str, bytes]:
    """Regular files under their final names (temporaries are checked separately)."""
    return {
        k: v[3]  # type: ignore[misc]
        for k, v in describe(str(root)).items()
        if v[0] == "file" and not os.path.basename(k).startswith(".cas-tmp-")
    }


def assert_no_bad_file(dest: Path, source: Path) -> None:
    """Every file under a final name holds exactly the stored content; no temporaries remain."""
    assert temporaries(dest) == []
    expected = final_files(source)
    for rel, content in final_files(dest).items():
        assert content == expected[rel], f"{rel} is under its final name with wrong content"


def one_line(exc: BaseException) -> str:
    text = str(exc)
    assert text and "\n" not in text and "Traceback" not in text
    return text


def wrapped_store(store: Store, backend: Backend) -> Store:
    """The same repository and index, read through ``backend``."""
    return Store(Repository(backend, store.repo.config, store.repo.index))


def no_sleep(_seconds: float) -> None:
    pass


# -- a backend that fails -----------------------------------------------------------------------


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_failing_backend_behind_retries_still_snapshots_restores_and_verifies(
    tmp_path: Path, cas_home: Path, seed: int
) -> None:
    faulty = FaultyBackend(LocalBackend(tmp_path / "repo"), fail_rate=0.4, seed=seed)
    backend = RetryingBackend(faulty, attempts=25, sleep=no_sleep)
    source = make_project(tmp_path)
    with Store.open(backend, index=f"sqlite:///{tmp_path / 'index.sqlite'}", **engine.SMALL_CHUNKS) as s:
        s.snapshot(source, "run-1")
        s.restore("run-1", tmp_path / "dest")
        assert describe(str(tmp_path / "dest")) == describe(str(source))
        assert s.verify(read_data=True).ok
    assert len(faulty.faults) >= 5, "the fault injector hardly injected anything"
    assert {f.operation for f in faulty.faults} >= {"put", "get"}


def test_failing_backend_without_retries_fails_cleanly(store: Store, tmp_path: Path) -> None:
    source = make_project(tmp_path)
    store.snapshot(source, "run-1")
    always = FaultyBackend(store.repo.backend, fail_rate=1.0, operations={"get"}, seed=0)
    with pytest.raises(Unavailable) as caught:
        wrapped_store(store, always).restore("run-1", tmp_path / "dest")
    one_line(caught.value)
    assert_no_bad_file(tmp_path / "dest", source)


# -- a backend that returns truncated or wrong data ---------------------------------------------


class LyingBackend(Backend):
    """Returns damaged bytes for ``get`` of the given keys: a prefix, or one bit flipped."""

    def __init__(self, inner: Backend, keys: set[str], how: str) -> None:
        self.inner = inner
        self.keys = keys
        self.how = how
        self.capabilities: Capabilities = inner.capabilities

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        data = self.inner.get(key, offset, length)
        if key not in self.keys or not data:
            return data
        if self.how == "truncate":
            return data[: len(data) // 2]
        damaged = bytearray(data)
        damaged[len(damaged) // 2] ^= 0x10
        return bytes(damaged)

    def put(self, key: str, data: Any, *, overwrite: bool = True) -> None:
        self.inner.put(key, data, overwrite=overwrite)

    def stat(self, key: str) -> ObjectInfo:
        return self.inner.stat(key)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        return self.inner.list(prefix)

    def delete(self, key: str) -> None:
        self.inner.delete(key)


@pytest.mark.parametrize("how", ["truncate", "flip"])
@pytest.mark.parametrize("victim", ["f001.bin", "sub/f003.bin"])
def test_backend_returning_bad_data_fails_the_file_by_name(
    store: Store, tmp_path: Path, how: str, victim: str
) -> None:
    source = make_project(tmp_path, files=6)
    (source / "big.bin").write_bytes(random.Random(1).randbytes(20_000))  # many chunks, one pack
    store.snapshot(source, "run-1")
    entry = store.entry("run-1", victim)
    assert entry is not None
    packs = {pack_key(loc.pack_id) for loc in store.repo.locate(entry.chunks).values()}
    liar = wrapped_store(store, LyingBackend(store.repo.backend, packs, how))
    dest = tmp_path / "dest"
    with pytest.raises(IntegrityError) as caught:
        liar.restore("run-1", dest)
    # Which file's bytes the liar damages depends on how reads are grouped (files of a directory
    # are fetched together); every failure must name a file stored in a damaged pack, by path.
    # (ls answers from the index, whose entries carry no chunk lists: entry() reads the tree.)
    in_damaged_packs = {
        path for path, e in store.ls("run-1", recursive=True)
        if e.type == "file"
        and {pack_key(loc.pack_id) for loc in store.repo.locate(store.entry("run-1", path).chunks).values()} & packs
    }
    failed = {path for path, _msg in caught.value.failures}  # type: ignore[attr-defined]
    assert failed and failed <= in_damaged_packs, (failed, in_damaged_packs)
    shown = [path for path, _msg in caught.value.failures[:5]]  # type: ignore[attr-defined]
    assert all(path in one_line(caught.value) for path in shown)
    for path in failed:
        assert not (dest / path).exists(), "a file with bad data appeared under its final name"
    assert_no_bad_file(dest, source)
    with pytest.raises(IntegrityError, match=victim.split("/")[-1]):
        liar.open_file("run-1", victim).read()
    # The repository itself is intact: an honest read restores everything.
    store.restore("run-1", tmp_path / "dest2")
    assert describe(str(tmp_path / "dest2")) == describe(str(source))


# -- a backend that stalls ----------------------------------------------------------------------


class StallingBackend(Backend):
    """``get`` waits ``stall`` seconds and then fails as a client-side timeout would."""

    def __init__(self, inner: Backend, stall: float) -> None:
        self.inner = inner
        self.stall = stall
        self.capabilities: Capabilities = inner.capabilities

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        if key.startswith("data/"):
            time.sleep(self.stall)
            raise Unavailable(f"read timeout after {self.stall} s on {key}")
        return self.inner.get(key, offset, length)

    def put(self, key: str, data: Any, *, overwrite: bool = True) -> None:
        self.inner.put(key, data, overwrite=overwrite)

    def stat(self, key: str) -> ObjectInfo:
        return self.inner.stat(key)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        return self.inner.list(prefix)

    def delete(self, key: str) -> None:
        self.inner.delete(key)


def test_stalled_backend_behind_retries_fails_in_bounded_time(store: Store, tmp_path: Path) -> None:
    source = make_project(tmp_path, files=3)
    store.snapshot(source, "run-1")
    stalled = RetryingBackend(StallingBackend(store.repo.backend, 0.2), attempts=3, sleep=no_sleep)
    start = time.monotonic()
    with pytest.raises(Unavailable) as caught:
        wrapped_store(store, stalled).restore("run-1", tmp_path / "dest")
    assert time.monotonic() - start < 10
    one_line(caught.value)
    assert_no_bad_file(tmp_path / "dest", source)


class SilentServer:
    """A loopback TCP server that accepts connections and never answers."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = int(self.sock.getsockname()[1])
        self.accepted: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _addr = self.sock.accept()
            except OSError:
                return
            self.accepted.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self.accepted:
            conn.close()


@pytest.fixture
def silent_server() -> Iterator[SilentServer]:
    server = SilentServer()
    yield server
    server.close()


def test_remote_backends_have_finite_default_timeouts() -> None:
    pytest.importorskip("boto3")
    from backends import open_backend

    port = 9  # never contacted: building a client sends nothing
    s3 = open_backend("s3://bucket/p", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1")
    config = s3._client.meta.config  # type: ignore[attr-defined]
    assert 0 < config.connect_timeout <= 60 and 0 < config.read_timeout <= 300
    pytest.importorskip("oss2")
    oss = open_backend("oss://bucket/p", endpoint=f"http://127.0.0.1:{port}", access_key_id="id",
                       access_key_secret="not-a-secret")
    connect, read = oss._bucket.timeout  # type: ignore[attr-defined]
    assert 0 < connect <= 60 and 0 < read <= 300
    pytest.importorskip("hdfs")
    hdfs = open_backend(f"webhdfs://127.0.0.1:{port}/root", hdfs_user="u")
    connect, read = hdfs._client._timeout  # type: ignore[attr-defined]
    assert 0 < connect <= 60 and 0 < read <= 300


def test_s3_against_a_server_that_never_answers_is_unavailable_in_bounded_time(
    silent_server: SilentServer,
) -> None:
    pytest.importorskip("boto3")
    from backends import open_backend

    backend = open_backend(
        "s3://bucket/prefix", endpoint_url=f"http://127.0.0.1:{silent_server.port}", region_name="us-east-1",
        access_key_id="AKIAEXAMPLE", secret_access_key="never-shown-secret", connect_timeout=0.5, read_timeout=0.5,
    )
    for call in (lambda: backend.get("data/00/x"), lambda: backend.put("k", b"v"), lambda: backend.stat("k")):
        start = time.monotonic()
        with pytest.raises(Unavailable) as caught:
            call()
        assert time.monotonic() - start < 5
        assert "never-shown-secret" not in one_line(caught.value)
    # Behind the retry wrapper the bound is attempts x timeout, still finite.
    retrying = RetryingBackend(backend, attempts=3, sleep=no_sleep)
    start = time.monotonic()
    with pytest.raises(Unavailable):
        retrying.get("data/00/x")
    assert time.monotonic() - start < 10
    assert silent_server.accepted, "the client never reached the silent server"


@pytest.mark.parametrize("scheme", ["oss", "webhdfs"])
def test_oss_and_hdfs_against_a_server_that_never_answers_are_unavailable(
    silent_server: SilentServer, scheme: str
) -> None:
    from backends import open_backend

    address = f"127.0.0.1:{silent_server.port}"
    if scheme == "oss":
        pytest.importorskip("oss2")
        backend = open_backend("oss://bucket/p", endpoint=f"http://{address}", access_key_id="id",
                               access_key_secret="never-shown-secret", connect_timeout=0.5, read_timeout=0.5)
    else:
        pytest.importorskip("hdfs")
        backend = open_backend(f"webhdfs://{address}/root", hdfs_user="u", timeout=0.5)
    start = time.monotonic()
    with pytest.raises(Unavailable) as caught:
        backend.get("data/00/x")
    assert time.monotonic() - start < 5
    assert "never-shown-secret" not in one_line(caught.value)


# -- a disk that fills up -----------------------------------------------------------------------


@pytest.fixture
def small_filesystem(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs, mounted for this test (needs root; skipped where mounting is refused)."""
    mount_point = tmp_path / "small-fs"
    mount_point.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(mount_point)],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({proc.stderr.strip()}); the injected ENOSPC test covers it")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def big_project(root: Path) -> Path:
    src = make_project(root, files=6, size=200_000)
    (src / "sub" / "huge.bin").write_bytes(random.Random(3).randbytes(3_000_000))
    return src


def test_disk_full_during_restore_on_a_real_small_filesystem(
    store: Store, tmp_path: Path, small_filesystem: Path
) -> None:
    source = big_project(tmp_path)
    store.snapshot(source, "run-1")
    dest = small_filesystem / "dest"
    with pytest.raises(CasError) as caught:
        store.restore("run-1", dest)
    assert "No space left" in one_line(caught.value)
    assert_no_bad_file(dest, source)
    assert not (dest / "sub" / "huge.bin").exists()


class _OsWithFullDisk(ModuleType):
    """``os`` as cas.ops.restore.write sees it, except that writes fail with ENOSPC after ``budget`` bytes."""

    def __init__(self, budget: int) -> None:
        super().__init__("os")
        self.budget = budget
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def write(self, fd: int, data: Any) -> int:
        with self._lock:
            if len(data) > self.budget:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            self.budget -= len(data)
        return os.write(fd, data)

    def posix_fallocate(self, fd: int, offset: int, length: int) -> None:
        # Reserving space succeeds (as on filesystems without fallocate); the writes then fail.
        return None


@pytest.mark.parametrize("budget", [0, 10_000, 700_000])
def test_disk_full_during_restore_injected(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, budget: int
) -> None:
    source = big_project(tmp_path)
    store.snapshot(source, "run-1")
    monkeypatch.setattr(cas.ops.restore.write, "os", _OsWithFullDisk(budget))
    dest = tmp_path / "dest"
    with pytest.raises(CasError) as caught:
        store.restore("run-1", dest)
    assert "No space left" in one_line(caught.value)
    assert_no_bad_file(dest, source)
    monkeypatch.undo()
    # Space freed: the same restore, with overwrite, completes exactly.
    store.restore("run-1", dest, overwrite=True)
    assert describe(str(dest)) == describe(str(source))


# -- a restore killed part way ------------------------------------------------------------------


def cli(store_root: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "cas", "--repo", str(store_root / "repo"),
            "--index", f"sqlite:///{store_root / 'index.sqlite'}", *args]


def started(dest: Path) -> bool:
    return dest.exists() and len(os.listdir(dest)) > 0


def wait_for(predicate: Callable[[], bool], timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.002)
    return False


def test_restore_killed_at_random_times_completes_when_run_again(store: Store, tmp_path: Path) -> None:
    source = make_project(tmp_path, files=300, size=8000)
    (source / "sub" / "big.bin").write_bytes(random.Random(5).randbytes(2_000_000))
    store.snapshot(source, "run-1")
    expected = describe(str(source))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    rng = random.Random(11)
    interrupted = left_behind = 0
    for trial in range(5):
        dest = tmp_path / f"dest{trial}"
        proc = subprocess.Popen(cli(tmp_path, "restore", "run-1", str(dest)), env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            # Kill once the restore has started writing, after a random further delay.
            wait_for(functools.partial(started, dest), 30)
            time.sleep(rng.uniform(0, 0.15))
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.wait(timeout=30)
        if proc.returncode == -signal.SIGKILL and describe(str(dest)) != expected:
            interrupted += 1
        left_behind += bool(temporaries(dest))
        # Whatever the killed process left under a final name is correct.
        for rel, content in final_files(dest).items():
            assert content == final_files(source)[rel], f"{rel} half-written under its final name"
        done = subprocess.run(cli(tmp_path, "restore", "--overwrite", "run-1", str(dest)), env=env,
                              capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 0, done.stderr
        assert describe(str(dest)) == expected
        assert temporaries(dest) == [], "a restore with --overwrite left stale .cas-tmp-* entries"
    assert interrupted >= 3, f"only {interrupted} of 5 kills landed mid-restore"
    print(f"kill mid-restore: {interrupted} of 5 kills interrupted, {left_behind} left temporaries to clean")


# -- a local process racing the restore ---------------------------------------------------------


def test_directories_swapped_for_symlinks_during_restore_are_never_followed(store: Store, tmp_path: Path) -> None:
    """Another process keeps replacing the directories being restored with symlinks to outside:
    every open is relative to a verified directory handle with O_NOFOLLOW, so nothing lands there."""
    source = tmp_path / "project"
    for i in range(12):
        (source / f"d{i:02d}" / "inner").mkdir(parents=True)
        for j in range(6):
            (source / f"d{i:02d}" / f"f{j}").write_bytes(os.urandom(300))
            (source / f"d{i:02d}" / "inner" / f"g{j}").write_bytes(os.urandom(200))
    store.snapshot(source, "run-1")
    arena = tmp_path / "arena"
    outside = arena / "outside"
    outside.mkdir(parents=True)
    (outside / "keep.txt").write_text("keep")
    before = describe(str(outside))
    swaps = 0
    for trial in range(4):
        dest = arena / f"dest{trial}"
        dest.mkdir()
        stop = threading.Event()

        def attack(dest: Path = dest, stop: threading.Event = stop) -> None:
            nonlocal swaps
            n = 0
            while not stop.is_set():
                for i in range(12):
                    for rel in (f"d{i:02d}", f"d{i:02d}/inner"):
                        target = dest / rel
                        n += 1
                        try:
                            os.rename(target, dest / f"moved-{n}")
                            os.symlink(outside, target)
                            swaps += 1
                        except OSError:
                            pass

        attacker = threading.Thread(target=attack)
        attacker.start()
        try:
            store.restore("run-1", dest, overwrite=True)
        except CasError as exc:
            one_line(exc)
        finally:
            stop.set()
            attacker.join()
        assert describe(str(outside)) == before, "the restore wrote through a symlink swapped in by another process"
    assert swaps > 0, "the attacker never managed to swap a directory"
