"""Restores running at once into one destination, as separate processes: every file ends whole (one
execution's version of it), nothing is left half-written, no temporary is left, and no restore
removes another's temporaries."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cas import Store
from cas.ops.restore.temps import TMP_PREFIX, temporary_tag

ROOT = Path(__file__).resolve().parents[2]


def _versions(tmp_path: Path, store: Store, same_sizes: bool = False) -> dict[str, dict[str, bytes]]:
    """Two executions over the same names: every file differs in content and in size, or, with
    ``same_sizes``, v2 is v1 with a few bytes changed in every file (what ``--in-place`` patches)."""
    out: dict[str, dict[str, bytes]] = {}
    for version in ("v1", "v2"):
        src = tmp_path / version
        files: dict[str, bytes] = {}
        for d in range(4):
            for f in range(25):
                rel = f"d{d}/f{f}.bin"
                if same_sizes:
                    data = bytes([f, d, 7, 9]) * ((20000 + 997 * f) // 4)
                    files[rel] = (version.encode() * 4 + data[8:]) if version == "v2" else data
                else:
                    size = 2000 + 997 * f + (5000 if version == "v2" else 0)
                    files[rel] = (version.encode() + bytes([f, d])) * (size // 4)
                (src / f"d{d}").mkdir(parents=True, exist_ok=True)
                (src / rel).write_bytes(files[rel])
        if same_sizes and out:
            first = out["v1"]["big.bin"]
            big = first[:1_000_000] + b"v2" * 50 + first[1_000_100:]
        elif same_sizes or version == "v1":
            big = os.urandom(3_000_000)
        else:
            big = b"v2" * 1_600_000
        (src / "big.bin").write_bytes(big)
        files["big.bin"] = big
        store.snapshot(src, version)
        out[version] = files
    return out


#: The CLI as a file system without O_TMPFILE sees it: every file is written under a temporary name.
_NAMED_TEMPORARIES = (
    "import sys, cas.ops.restore.create as r; r.HAS_TMPFILE[0] = False; from cas.cli import main; sys.exit(main())"
)


def _restore(tmp_path: Path, execution_id: str, dest: Path, named: bool, *extra: str) -> subprocess.Popen[str]:
    env = {**os.environ, "CAS_HOME": str(tmp_path / "cas-home"), "PYTHONPATH": str(ROOT)}
    start = ["-c", _NAMED_TEMPORARIES] if named else ["-m", "cas"]
    return subprocess.Popen(
        [sys.executable, *start, "--repo", str(tmp_path / "repo"), "--index", f"sqlite:///{tmp_path / 'index.sqlite'}",
         "--quiet", "restore", execution_id, str(dest), "--overwrite", *extra],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


@pytest.mark.parametrize("named", [False, True], ids=["unnamed-temporaries", "named-temporaries"])
def test_two_restores_into_one_destination_leave_whole_files(store: Store, tmp_path: Path, named: bool) -> None:
    versions = _versions(tmp_path, store)
    dest = tmp_path / "dest"
    store.restore("v1", dest)
    rounds = [("v1", "v2"), ("v2", "v1"), ("v2", "v2"), ("v1", "v2")]
    for first, second in rounds:
        procs = [_restore(tmp_path, first, dest, named), _restore(tmp_path, second, dest, named)]
        for proc in procs:
            _out, err = proc.communicate(timeout=300)
            assert proc.returncode == 0, err
        names = [n for _d, dirs, files in os.walk(dest) for n in dirs + files]
        assert not [n for n in names if n.startswith(TMP_PREFIX)]
        for rel in versions["v1"]:
            data = (dest / rel).read_bytes()
            assert data in (versions["v1"][rel], versions["v2"][rel]), rel
        if first == second:
            assert all((dest / rel).read_bytes() == versions[first][rel] for rel in versions[first])


def test_a_live_restores_temporary_is_kept_and_a_dead_ones_removed(store: Store, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("f")
    store.snapshot(src, "v1")
    dest = tmp_path / "dest"
    dest.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        host, _pid, rest = temporary_tag().split("-", 2)
        live = dest / f"{TMP_PREFIX}{host}-{sleeper.pid}-{rest}-0"
        live.write_text("being written")
        foreign_recent = dest / f"{TMP_PREFIX}otherhost-123-abcd-0"
        foreign_recent.write_text("another host's")
        foreign_old = dest / f"{TMP_PREFIX}0123456789ab-7"  # an older cas's name, long abandoned
        foreign_old.write_text("old")
        day_ago = time.time_ns() - 2 * 24 * 3600 * 10**9
        os.utime(foreign_old, ns=(day_ago, day_ago))
        store.restore("v1", dest, overwrite=True, delete=True)
        assert live.exists() and foreign_recent.exists()
        assert not foreign_old.exists()
    finally:
        sleeper.kill()
        sleeper.wait()
    store.restore("v1", dest, overwrite=True)
    assert not live.exists()
    assert foreign_recent.exists()


def test_two_in_place_restores_take_turns_and_leave_whole_files(store: Store, tmp_path: Path) -> None:
    """Same sizes, so ``--in-place`` patches: the lock on each file makes the restores take turns."""
    versions = _versions(tmp_path, store, same_sizes=True)
    dest = tmp_path / "dest"
    store.restore("v1", dest)
    for first, second in [("v1", "v2"), ("v2", "v1"), ("v2", "v2")]:
        procs = [_restore(tmp_path, first, dest, False, "--in-place"),
                 _restore(tmp_path, second, dest, False, "--in-place")]
        for proc in procs:
            _out, err = proc.communicate(timeout=300)
            assert proc.returncode == 0, err
        for rel in versions["v1"]:
            data = (dest / rel).read_bytes()
            assert data in (versions["v1"][rel], versions["v2"][rel]), rel
        if first == second:
            assert all((dest / rel).read_bytes() == versions[first][rel] for rel in versions[first])
    report = store.restore("v1", dest, overwrite=True, in_place=True)  # from v2: every file patched
    assert report.written == len(versions["v1"]) and report.written_bytes * 10 < report.bytes
    assert all((dest / rel).read_bytes() == versions["v1"][rel] for rel in versions["v1"])
