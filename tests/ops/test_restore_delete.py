"""cas.ops.restore.delete: subtrees removed by a pool of threads, on a real file system."""

from __future__ import annotations

import errno
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from cas.ops.restore import delete as restore_delete
from cas.ops.restore.delete import Remover
from cas.ops.restore.temps import TMP_PREFIX, temporary_tag


def _count(root: Path) -> int:
    return sum(len(dirs) + len(files) for _, dirs, files in os.walk(root))


def _build(root: Path) -> int:
    """A wide and a deep part: more directories than the walk keeps open, and a deep chain."""
    for i in range(300):
        d = root / f"wide-{i}"
        d.mkdir(parents=True)
        for j in range(i % 5):
            (d / f"f{j}").write_bytes(b"x" * j)
    big = root / "big"
    big.mkdir()
    for j in range(100):
        (big / f"file-{j}").write_text(str(j))
    deep = root
    for i in range(200):
        deep = deep / f"d{i}"
    deep.mkdir(parents=True)
    (deep / "leaf").write_text("leaf")
    return _count(root) + 1


def test_removes_a_wide_and_deep_subtree(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    expected = _build(victim)
    (tmp_path / "keep").write_text("keep")
    remover = Remover(threads=4)
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert remover.remove(fd, "victim") == expected
        assert remover.remove(fd, "keep") == 1
        assert remover.remove(fd, "absent") == 0
    finally:
        os.close(fd)
        remover.close()
    assert os.listdir(tmp_path) == []


def test_submitted_removals_run_on_the_removers_own_threads(tmp_path: Path) -> None:
    """Several subtrees given to ``submit`` at once are removed while the caller goes on; each
    future counts its own subtree, and closing the remover waits for them."""
    expected = {}
    for k in range(5):
        expected[f"victim-{k}"] = _build(tmp_path / f"victim-{k}")
    (tmp_path / "keep").write_text("keep")
    remover = Remover(threads=3)
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        futures = {name: remover.submit(fd, name) for name in expected}
        futures["absent"] = remover.submit(fd, "absent")
        assert {name: f.result() for name, f in futures.items()} == {**expected, "absent": 0}
        last = remover.submit(fd, "keep")
        remover.close()
        assert last.done() and last.result() == 1
    finally:
        os.close(fd)
    assert os.listdir(tmp_path) == []


def test_never_follows_a_symlink_and_keeps_live_temporaries(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("mine")
    dest = tmp_path / "dest"
    (dest / "victim" / "a").mkdir(parents=True)
    (dest / "victim" / "a" / "link").symlink_to(outside)
    (dest / "victim" / "b").symlink_to(outside / "precious")
    live = dest / "victim" / "busy" / f"{TMP_PREFIX}{temporary_tag()}-0"  # this process's: alive
    live.parent.mkdir()
    live.write_text("being written")
    remover = Remover()
    fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY)
    try:
        removed = remover.remove(fd, "victim")
    finally:
        os.close(fd)
        remover.close()
    assert (outside / "precious").read_text() == "mine"
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*")) == [
        "victim", "victim/busy", f"victim/busy/{live.name}"]
    assert removed == 3  # a/link, a, b, and nothing of busy/


class _OsFailingUnlink:
    """``os`` as restore_delete sees it, except that unlinking ``bad`` fails (a disk error), and
    opening any directory other than ``first`` waits until that failure has had time to reach the
    walk (so the walk meets a failed removal before it has entered the rest)."""

    def __init__(self, first: str) -> None:
        self.first = first
        self.failed = threading.Event()
        self.waited = False

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def unlink(self, name: str, *, dir_fd: int | None = None) -> None:
        if name == "bad":
            self.failed.set()
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        os.unlink(name, dir_fd=dir_fd)

    def open(self, name: str, flags: int, mode: int = 0o777, *, dir_fd: int | None = None) -> int:
        if name.startswith("d") and name != self.first and not self.waited:
            assert self.failed.wait(10)
            time.sleep(0.2)
            self.waited = True
        return os.open(name, flags, mode, dir_fd=dir_fd)


def test_an_error_is_raised_after_every_call_returned(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A removal that fails does not stop the others: the walk goes on, and the error is raised
    once every call has returned."""
    victim = tmp_path / "victim"
    for i in range(40):
        (victim / f"d{i}").mkdir(parents=True)
        for j in range(20):
            (victim / f"d{i}" / f"f{j}").write_text("x")
    first = [e.name for e in os.scandir(victim)][-1]  # the walk enters the last one listed first
    (victim / first / "bad").write_text("x")
    monkeypatch.setattr(restore_delete, "os", _OsFailingUnlink(first))
    remover = Remover()
    open_before = len(os.listdir("/proc/self/fd"))
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(OSError) as caught:
            remover.remove(fd, "victim")
        assert caught.value.errno == errno.EIO
    finally:
        remover.close()
        os.close(fd)
    # Every descriptor the walk opened is closed again, and what could go went.
    assert len(os.listdir("/proc/self/fd")) == open_before
    assert sorted(os.listdir(victim)) == [first]
    assert os.listdir(victim / first) == ["bad"]
