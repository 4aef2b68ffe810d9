"""Ctrl-C during a restore: the command stops, cleans up and exits 130, and the destination holds
no temporary and no partial file presented as whole: every file in it is whole, the old version
or the new one (``--overwrite``). Its helper processes (the writer, the child hashing ahead, the
remover) are gone with it."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from cas.ops.restore.temps import TMP_PREFIX
from tests.hostile.test_inputs import Cas
from tests.ops.test_parallel_snapshot import _INTERRUPTIBLE, _kill_group, _processes_in, _stderr_or_stacks

# The command with its reads from the repository slowed (50 ms for each), so that the restore is
# still running when the test interrupts it, whatever the machine's speed.
_SLOW_READS = _INTERRUPTIBLE + """
import sys, time
from backends import local
from cas.cli import main

def slowly(method):
    def slowed(self, *args, **kwargs):
        time.sleep(0.05)
        return method(self, *args, **kwargs)
    return slowed

local.LocalBackend.get = slowly(local.LocalBackend.get)
local.LocalBackend.get_view = slowly(local.LocalBackend.get_view)
sys.exit(main(sys.argv[1:]))
"""


def _version(src: Path, seed: int) -> dict[str, bytes]:
    """Write a tree of small and large files (the content depends on ``seed``); its files by path."""
    rng = random.Random(seed)
    files: dict[str, bytes] = {}
    for d in range(12):
        for i in range(150):
            files[f"d{d:02d}/small{i:03d}.txt"] = rng.randbytes(rng.randrange(100, 4000))
        files[f"d{d:02d}/large.bin"] = rng.randbytes(3 * 1024 * 1024)
    for rel, data in files.items():
        path = src / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return files


def _interrupt_restore(cas: Cas, args: list[str], dest: Path) -> str:
    """Run ``cas restore`` with ``args``, Ctrl-C it once it has written into ``dest``; its stderr."""
    before = _identities(dest)
    proc = subprocess.Popen([sys.executable, "-X", "faulthandler", "-c", _SLOW_READS, "--repo", str(cas.base / "repo"),
                             "restore", *args], cwd=cas.base, env=cas.env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while _identities(dest) == before:  # until it has created or replaced something
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the restore wrote nothing"
            time.sleep(0.01)
        time.sleep(0.3)  # well into it
        assert proc.poll() is None, "the restore ended before the test could interrupt it"
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole group
        err = _stderr_or_stacks(proc, 20)  # inside the command's 30 s grace
    finally:
        _kill_group(proc)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == "cas: error: interrupted", err
    assert _processes_in(cas.base) == []
    return err


def _identities(dest: Path) -> dict[Path, int]:
    """Each path under ``dest`` with its inode number (a file replaced gets another)."""
    found = {}
    for path in dest.rglob("*") if dest.exists() else ():
        try:
            found[path] = path.lstat().st_ino
        except FileNotFoundError:
            continue
    return found


def _files_in(dest: Path) -> dict[str, bytes]:
    found = {}
    for path in dest.rglob("*"):
        assert not path.name.startswith(TMP_PREFIX), f"temporary left: {path}"
        if path.is_file():
            found[path.relative_to(dest).as_posix()] = path.read_bytes()
    return found


def test_ctrl_c_during_a_fresh_restore_leaves_only_whole_files(tmp_path: Path) -> None:
    cas = Cas(tmp_path)
    files = _version(tmp_path / "src", 1)
    assert cas("init").returncode == 0
    cas.ok("snapshot", str(tmp_path / "src"), "-e", "run-1")
    dest = tmp_path / "dest"
    _interrupt_restore(cas, ["run-1", str(dest)], dest)
    left = _files_in(dest)
    assert len(left) < len(files)  # interrupted, not finished
    for rel, data in left.items():
        assert data == files[rel], f"{rel} is not whole"


def test_ctrl_c_during_an_incremental_restore_leaves_each_file_old_or_new(tmp_path: Path) -> None:
    cas = Cas(tmp_path)
    old = _version(tmp_path / "v1", 1)
    new = _version(tmp_path / "v2", 2)
    assert cas("init").returncode == 0
    cas.ok("snapshot", str(tmp_path / "v1"), "-e", "v1")
    cas.ok("snapshot", str(tmp_path / "v2"), "-e", "v2")
    dest = tmp_path / "dest"
    cas.ok("restore", "v1", str(dest))
    _interrupt_restore(cas, ["v2", str(dest), "--overwrite", "--delete"], dest)
    left = _files_in(dest)
    assert left != new  # interrupted, not finished
    for rel, data in left.items():
        assert data in (old.get(rel), new.get(rel)), f"{rel} is neither version whole"
