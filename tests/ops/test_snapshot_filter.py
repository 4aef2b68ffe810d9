"""Snapshot selection through the API: exclude and include patterns, ignore files, a size limit,
other file systems, and what the snapshot's stats say was left out."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cas import ConfigurationError, NotFound, SnapshotFilter, Store

ROOT = Path(__file__).resolve().parents[2]


def make(root: Path, files: dict[str, int]) -> Path:
    """Files of the given sizes (a size of -1 makes an empty directory)."""
    for path, size in files.items():
        full = root / path
        if size < 0:
            full.mkdir(parents=True, exist_ok=True)
            continue
        full.parent.mkdir(parents=True, exist_ok=True)
        full.write_bytes(b"x" * size)
    return root


def stored(store: Store, execution_id: str) -> set[str]:
    return {path for path, _ in store.ls(execution_id, recursive=True)}


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return make(tmp_path / "proj", {
        "src/train.py": 10, "src/util.py": 20, "src/__pycache__/train.cpython-311.pyc": 30, "data/raw.csv": 1000,
        "data/model.ckpt": 5000, "notes.txt": 7, ".venv/lib/site.py": 40, "empty": -1,
    })


def test_exclude_patterns_are_gitignore_style_relative_to_the_path(store: Store, project: Path) -> None:
    snap = store.snapshot(project, "r", filter=SnapshotFilter(exclude=["__pycache__/", "/.venv", "*.ckpt"]))
    assert stored(store, "r") == {"src", "src/train.py", "src/util.py", "data", "data/raw.csv", "notes.txt", "empty"}
    assert snap.stats["excluded"] == 3 and snap.stats["excluded_by_pattern"] == 3
    # Directories count as one entry each, without their contents; files with their size.
    assert snap.stats["excluded_bytes"] == snap.stats["excluded_by_pattern_bytes"] == 5000


def test_a_negated_exclude_pattern_keeps_what_an_earlier_one_excluded(store: Store, project: Path) -> None:
    store.snapshot(project, "r", filter=SnapshotFilter(exclude=["data/*", "!data/raw.csv"]))
    assert {p for p in stored(store, "r") if p.startswith("data")} == {"data", "data/raw.csv"}


def test_include_keeps_what_matches_and_the_directories_leading_to_it(store: Store, project: Path) -> None:
    snap = store.snapshot(project, "r", filter=SnapshotFilter(include=["*.py"]))
    assert stored(store, "r") == {"src", "src/train.py", "src/util.py", ".venv", ".venv/lib", ".venv/lib/site.py"}
    # Left out: the .pyc, raw.csv, model.ckpt, notes.txt, and the directories with nothing included
    # (__pycache__, data, empty).
    assert snap.stats["excluded_by_include"] == 7
    assert snap.stats["excluded_by_include_bytes"] == 30 + 1000 + 5000 + 7


def test_an_included_directory_brings_everything_in_it_and_exclusion_wins(store: Store, project: Path) -> None:
    store.snapshot(project, "r", filter=SnapshotFilter(include=["src/", "empty"], exclude=["__pycache__/"]))
    assert stored(store, "r") == {"src", "src/train.py", "src/util.py", "empty"}
    # A "!" include pattern takes back part of an included directory; its own entries decide first.
    store.snapshot(project, "r2", filter=SnapshotFilter(include=["src/", "!util.py", "!__pycache__/"]))
    assert stored(store, "r2") == {"src", "src/train.py"}


def test_exclude_larger_than(store: Store, project: Path) -> None:
    snap = store.snapshot(project, "r", filter=SnapshotFilter(exclude_larger_than=1000))
    assert "data/model.ckpt" not in stored(store, "r") and "data/raw.csv" in stored(store, "r")
    assert (snap.stats["excluded_by_size"], snap.stats["excluded_by_size_bytes"]) == (1, 5000)
    snap = store.snapshot(project, "r0", filter=SnapshotFilter(exclude_larger_than=0))
    assert {p for p in stored(store, "r0")} == {"src", "src/__pycache__", "data", ".venv", ".venv/lib", "empty"}


def test_casignore_is_honoured_by_default_and_can_be_turned_off(store: Store, project: Path) -> None:
    (project / ".casignore").write_text("data/\n*.pyc\n")
    snap = store.snapshot(project, "r")
    assert not {p for p in stored(store, "r") if p.startswith("data") or p.endswith(".pyc")}
    assert ".casignore" in stored(store, "r")
    assert snap.stats["excluded_by_ignore_file"] == 2 and snap.stats["excluded_by_ignore_file_bytes"] == 30
    store.snapshot(project, "all", filter=SnapshotFilter(ignore_files=False))
    assert "data/model.ckpt" in stored(store, "all")


def test_extra_ignore_files(store: Store, project: Path, tmp_path: Path) -> None:
    extra = tmp_path / "ignore"
    extra.write_text("/data/\n")
    snap = store.snapshot(project, "r", filter=SnapshotFilter(extra_ignore_files=[str(extra)]))
    assert "data" not in stored(store, "r") and snap.stats["excluded_by_ignore_file"] == 1
    with pytest.raises(NotFound, match="ignore file .*missing does not exist"):
        store.snapshot(project, "r2", filter=SnapshotFilter(extra_ignore_files=[str(tmp_path / "missing")]))
    with pytest.raises(ConfigurationError, match="is a directory"):
        store.snapshot(project, "r2", filter=SnapshotFilter(extra_ignore_files=[str(tmp_path)]))


def test_the_files_cache_does_not_change_what_is_selected(store: Store, project: Path) -> None:
    old = 1_600_000_000_000_000_000  # older than the files cache's racy window
    for path in project.rglob("*"):
        os.utime(path, ns=(old, old))
    only = SnapshotFilter(include=["*.py", "*.csv"], exclude=["/.venv"])
    first = store.snapshot(project, "r1", filter=only)
    second = store.snapshot(project, "r2", filter=only)
    assert second.stats["files_from_cache"] == 3 and first.root == second.root
    assert stored(store, "r2") == {"src", "src/train.py", "src/util.py", "data", "data/raw.csv"}


def test_stats_without_exclusions_are_zero(store: Store, project: Path) -> None:
    snap = store.snapshot(project, "r")
    assert snap.stats["excluded"] == 0 and snap.stats["excluded_bytes"] == 0
    assert {k for k in snap.stats if k.startswith("excluded_by_")} == {
        f"excluded_by_{r}{suffix}" for r in ("pattern", "ignore_file", "size", "include", "filesystem")
        for suffix in ("", "_bytes")}


def test_a_single_file_is_stored_whatever_the_filter_says(store: Store, project: Path) -> None:
    store.snapshot(project / "notes.txt", "one", filter=SnapshotFilter(exclude=["*"], include=["nothing"]))
    assert stored(store, "one") == {"notes.txt"}


def test_special_files_left_out_by_a_pattern_are_not_skipped_with_a_warning(store: Store, project: Path,
                                                                            caplog: pytest.LogCaptureFixture) -> None:
    os.mkfifo(project / "pipe")
    snap = store.snapshot(project, "r", filter=SnapshotFilter(exclude=["pipe"]))
    assert snap.stats["skipped"] == 0 and snap.stats["excluded_by_pattern"] == 1
    assert "skipping special file" not in caplog.text


@pytest.mark.parametrize("bad", [
    {"exclude": "*.tmp"}, {"include": [1]}, {"extra_ignore_files": b"x"}, {"exclude_larger_than": -1},
    {"exclude_larger_than": "1M"}, {"exclude_larger_than": True},
])
def test_bad_options_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError):
        SnapshotFilter(**bad)  # type: ignore[arg-type]


def _can_mount() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs none /mnt"], capture_output=True, check=False)
    return probe.returncode == 0


needs_mount = pytest.mark.skipif(not _can_mount(), reason="needs unshare -rm to mount a tmpfs")


def in_namespace_with_mount(mount_point: Path, script: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run ``script`` (Python) in a private mount namespace where a tmpfs holding ``inside.txt`` and
    ``deeper/file`` is mounted on ``mount_point``."""
    shell = (f'mount -t tmpfs none "{mount_point}" && echo hello > "{mount_point}/inside.txt" && '
             f'mkdir "{mount_point}/deeper" && echo x > "{mount_point}/deeper/file" && exec "$0" -c "$1"')
    return subprocess.run(["unshare", "-rm", "sh", "-c", shell, sys.executable, script], capture_output=True,
                          text=True, env={**os.environ, **env, "PYTHONPATH": str(ROOT)}, check=False)


@needs_mount
def test_one_file_system_stores_mount_points_empty(tmp_path: Path, cas_home: Path) -> None:
    tree = make(tmp_path / "tree", {"a.txt": 3, "mnt": -1})
    script = f"""
import json
from cas import SnapshotFilter, Store
with Store.open({str(tmp_path / 'repo')!r}) as s:
    out = {{}}
    for eid, one in (("crossing", False), ("one", True)):
        snap = s.snapshot({str(tree)!r}, eid, filter=SnapshotFilter(one_file_system=one))
        out[eid] = [sorted(p for p, _ in s.ls(eid, recursive=True)), snap.stats]
print(json.dumps(out))
"""
    proc = in_namespace_with_mount(tree / "mnt", script, {"CAS_HOME": str(cas_home)})
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["crossing"][0] == ["a.txt", "mnt", "mnt/deeper", "mnt/deeper/file", "mnt/inside.txt"]
    assert out["one"][0] == ["a.txt", "mnt"]
    assert out["one"][1]["excluded_by_filesystem"] == 1 and out["crossing"][1]["excluded"] == 0


@pytest.mark.parametrize("kind", ["directory", "fifo", "too large"])
def test_an_ignore_file_that_cannot_be_one_is_not_used_with_a_warning(store: Store, tmp_path: Path, kind: str,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    root = make(tmp_path / "t", {"a": 1, "sub/b": 1})
    ignore = root / "sub" / ".casignore"
    if kind == "directory":
        ignore.mkdir()
    elif kind == "fifo":
        os.mkfifo(ignore)
    else:
        ignore.write_text("b\n" + "#" * (4 * 1024 * 1024))
    store.snapshot(root, "r")
    assert "sub/b" in stored(store, "r")
    assert "sub/.casignore" in caplog.text and ("not a regular file" in caplog.text or "larger than" in caplog.text)


def test_undecodable_names_and_patterns(store: Store, tmp_path: Path) -> None:
    root = tmp_path / "t"
    root.mkdir()
    for name in (b"caf\xe9.tmp", b"caf\xe9", b"na\xefve", b"ok"):
        with open(os.path.join(os.fsencode(root), name), "wb") as f:
            f.write(b"x")
    with open(root / ".casignore", "wb") as f:
        f.write(b"*.tmp\nna\xefve\n")
    store.snapshot(root, "r")
    assert stored(store, "r") == {".casignore", os.fsdecode(b"caf\xe9"), "ok"}
