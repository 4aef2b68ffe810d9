"""Choosing what goes in and what comes out, from the command line (issue 15): .casignore,
snapshot --exclude/--include/--ignore-file/--no-ignore-files/--exclude-larger-than/--one-file-system,
restore and ls --include/--exclude."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.inprocess import cas
from tests.ops.test_snapshot_filter import in_namespace_with_mount, needs_mount
from tests.test_cli import ROOT


@pytest.fixture
def project(tmp_path: Path) -> Path:
    src = tmp_path / "proj"
    for path, size in {"src/train.py": 10, "src/util.py": 20, "src/__pycache__/train.pyc": 30, "data/raw.csv": 1000,
                       "data/model.ckpt": 5000, "notes.txt": 7}.items():
        (src / path).parent.mkdir(parents=True, exist_ok=True)
        (src / path).write_bytes(b"x" * size)
    return src


def snapshot(tmp_path: Path, project: Path, execution_id: str, *options: str) -> dict:  # type: ignore[type-arg]
    return json.loads(cas(tmp_path, "--json", "snapshot", str(project), "-e", execution_id, *options).stdout)


def paths(tmp_path: Path, execution_id: str, *options: str) -> list[str]:
    return [r["path"] for r in json.loads(cas(tmp_path, "--json", "ls", execution_id, "-r", *options).stdout)]


def test_casignore_and_no_ignore_files(tmp_path: Path, project: Path) -> None:
    (project / ".casignore").write_text("__pycache__/\n*.ckpt\n")
    (project / "data" / ".casignore").write_text("!model.ckpt\n")
    snap = snapshot(tmp_path, project, "r1")
    assert paths(tmp_path, "r1") == [".casignore", "data", "data/.casignore", "data/model.ckpt", "data/raw.csv",
                                     "notes.txt", "src", "src/train.py", "src/util.py"]
    assert snap["stats"]["excluded_by_ignore_file"] == 1 and snap["stats"]["excluded"] == 1
    snapshot(tmp_path, project, "r2", "--no-ignore-files")
    assert "src/__pycache__/train.pyc" in paths(tmp_path, "r2")


def test_exclude_include_and_their_stats(tmp_path: Path, project: Path) -> None:
    snap = snapshot(tmp_path, project, "r", "--include", "*.py", "--include", "/data/", "--exclude", "*.ckpt",
                    "--exclude", "__pycache__")
    assert paths(tmp_path, "r") == ["data", "data/raw.csv", "src", "src/train.py", "src/util.py"]
    stats = snap["stats"]
    assert (stats["excluded_by_pattern"], stats["excluded_by_pattern_bytes"]) == (2, 5000)
    assert (stats["excluded_by_include"], stats["excluded_by_include_bytes"]) == (1, 7)
    assert (stats["excluded"], stats["excluded_bytes"]) == (3, 5007)
    text = cas(tmp_path, "snapshot", str(project), "-e", "r-text", "--exclude", "data").stdout
    assert "; 1 entry excluded (0 B in files)" in text


def test_ignore_file_option(tmp_path: Path, project: Path) -> None:
    extra = tmp_path / "extra-ignore"
    extra.write_text("/data/*\n!raw.csv\n")
    snapshot(tmp_path, project, "r", "--ignore-file", str(extra))
    assert [p for p in paths(tmp_path, "r") if p.startswith("data")] == ["data", "data/raw.csv"]
    proc = cas(tmp_path, "snapshot", str(project), "-e", "r2", "--ignore-file", str(tmp_path / "nope"), check=False)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1 and "does not exist" in proc.stderr


def test_exclude_larger_than(tmp_path: Path, project: Path) -> None:
    snap = snapshot(tmp_path, project, "r", "--exclude-larger-than", "1k")
    assert "data/model.ckpt" not in paths(tmp_path, "r") and "data/raw.csv" in paths(tmp_path, "r")
    assert snap["stats"]["excluded_by_size"] == 1 and snap["stats"]["excluded_by_size_bytes"] == 5000
    proc = cas(tmp_path, "snapshot", str(project), "-e", "r2", "--exclude-larger-than", "lots", check=False)
    assert proc.returncode == 2 and "invalid size 'lots'" in proc.stderr and "Traceback" not in proc.stderr


@needs_mount
def test_one_file_system(tmp_path: Path, project: Path) -> None:
    (project / "mnt").mkdir()
    script = f"""
import sys
from cas.cli import main
sys.exit(main(["--repo", {str(tmp_path / 'repo')!r}, "--json", "snapshot", {str(project)!r}, "-e", "one", "-x"]))
"""
    proc = in_namespace_with_mount(project / "mnt", script, {"CAS_HOME": str(tmp_path / "home")})
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["stats"]["excluded_by_filesystem"] == 1
    env = {**os.environ, "CAS_HOME": str(tmp_path / "home"), "PYTHONPATH": str(ROOT)}
    listing = subprocess.run([sys.executable, "-m", "cas", "--repo", str(tmp_path / "repo"), "ls", "one", "mnt"],
                             capture_output=True, text=True, env=env, check=False)
    assert listing.returncode == 0 and listing.stdout == ""


def test_restore_and_ls_include_exclude(tmp_path: Path, project: Path) -> None:
    cas(tmp_path, "--repo", str(tmp_path / "repo"), "snapshot", str(project), "-e", "run")
    repo = ("--repo", str(tmp_path / "repo"))
    out = tmp_path / "out"
    cas(tmp_path, *repo, "restore", "run", str(out), "--include", "*.py", "--include", "*.csv", "--exclude", "util.py")
    got = sorted(os.path.relpath(os.path.join(d, n), out) for d, ds, fs in os.walk(out) for n in ds + fs)
    assert got == ["data", "data/raw.csv", "src", "src/train.py"]
    listing = json.loads(cas(tmp_path, *repo, "--json", "ls", "run", "-r", "--include", "*.py", "--include", "*.csv",
                             "--exclude", "util.py").stdout)
    assert [r["path"] for r in listing] == got
    assert cas(tmp_path, *repo, "ls", "run", "--include", "*.py").stdout.split() == ["d0755", "0", "src/"]
    one = tmp_path / "one"
    cas(tmp_path, *repo, "restore", "run", str(one), "--path", "src", "--exclude", "/src/__pycache__")
    assert sorted(os.listdir(one / "src")) == ["train.py", "util.py"]
