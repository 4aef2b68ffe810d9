"""The command line as a user runs it: a real process, exit codes, one-line errors, --json."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def cas(tmp_path: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CAS_HOME": str(tmp_path / "home"), "PYTHONPATH": str(ROOT)}
    env.pop("CAS_REPO", None)
    env.pop("CAS_INDEX", None)
    proc = subprocess.run([sys.executable, "-m", "cas", *args], capture_output=True, text=True, env=env, cwd=tmp_path,
                          check=False)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture
def project(tmp_path: Path) -> Path:
    src = tmp_path / "my-project"
    (src / "src").mkdir(parents=True)
    (src / "data").mkdir()
    (src / "src" / "train.py").write_text("print('train')\n" * 100)
    (src / "src" / "util.py").write_text("X = 1\n")
    (src / "data" / "weights.bin").write_bytes(os.urandom(300_000))
    os.symlink("src/train.py", src / "main.py")
    return src


def test_the_readme_workflow(tmp_path: Path, project: Path) -> None:
    cas(tmp_path, "snapshot", str(project), "--execution-id", "run-41", "--label", "workflow=train")
    (project / "src" / "train.py").write_text("print('train v2')\n")
    (project / "src" / "new.py").write_text("new\n")
    out = cas(tmp_path, "--json", "snapshot", str(project), "--execution-id", "run-42")
    snap = json.loads(out.stdout)
    assert snap["execution_id"] == "run-42" and snap["stats"]["new_bytes"] < 1000

    log = json.loads(cas(tmp_path, "--json", "log").stdout)
    assert [s["execution_id"] for s in log] == ["run-42", "run-41"]
    assert log[1]["labels"] == {"workflow": "train"}
    assert "run-41" in cas(tmp_path, "log").stdout

    listing = json.loads(cas(tmp_path, "--json", "ls", "run-42", "src/").stdout)
    assert [r["path"] for r in listing] == ["src/new.py", "src/train.py", "src/util.py"]

    diff = json.loads(cas(tmp_path, "--json", "diff", "run-41", "run-42").stdout)
    assert {(d["path"], d["change"]) for d in diff} >= {("src/new.py", "added"), ("src/train.py", "changed")}

    assert cas(tmp_path, "cat", "run-42", "src/train.py").stdout == "print('train v2')\n"

    cas(tmp_path, "restore", "run-42", str(tmp_path / "restored"))
    assert (tmp_path / "restored" / "data" / "weights.bin").read_bytes() == (project / "data" / "weights.bin").read_bytes()
    assert os.readlink(tmp_path / "restored" / "main.py") == "src/train.py"

    cas(tmp_path, "restore", "run-42", str(tmp_path / "one"), "--path", "src/train.py")
    assert os.listdir(tmp_path / "one") == ["train.py"]

    stats = json.loads(cas(tmp_path, "--json", "stats").stdout)
    assert stats["snapshots"] == 2 and stats["dedup_ratio"] > 1.5
    assert "ratio" in cas(tmp_path, "stats").stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["restore", "run-404", "out"], "unknown execution ID: run-404"),
        (["snapshot", "/no/such/dir", "-e", "x"], "no such file or directory"),
        (["snapshot", ".", "-e", "../../etc"], "invalid execution ID"),
        (["snapshot", ".", "-e", "ok", "-l", "novalue"], "KEY=VALUE"),
        (["--index", "nosuchdb://x", "log"], "index"),
        (["--repo", "ftp://host/x", "log"], "unknown repository scheme"),
        (["cat", "run-404", "x"], "unknown execution ID"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_bad_input_is_one_line_and_non_zero(tmp_path: Path, args: list[str], message: str) -> None:
    proc = cas(tmp_path, *args, check=False)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert message in lines[0]
    assert "Traceback" not in proc.stderr


def test_corrupt_repository_config_is_a_clean_error(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "config").write_bytes(b"\x00garbage{")
    proc = cas(tmp_path, "--repo", str(repo), "log", check=False)
    assert proc.returncode == 1
    assert proc.stderr.startswith("cas: error: repository config is not valid JSON")


def test_secret_in_index_url_is_not_printed(tmp_path: Path) -> None:
    proc = cas(tmp_path, "--index", "postgresql://user:hunter2@127.0.0.1:1/db", "log", check=False)
    assert proc.returncode != 0
    assert "hunter2" not in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("module", ["cas", "cas.cli"])
def test_the_command_runs_as_a_module(tmp_path: Path, module: str) -> None:
    """``python -m cas`` and ``python -m cas.cli`` (the benchmarks use the latter) both run the command."""
    env = {**os.environ, "CAS_HOME": str(tmp_path / "home"), "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", module, "--repo", str(tmp_path / "none"), "ls", "x"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, check=False)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr  # a missing repository: one line
    proc = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, env=env,
                          cwd=tmp_path, check=False)
    assert proc.returncode == 0 and proc.stdout.startswith("usage: cas "), proc.stderr


# -- Ctrl-C when cleaning up hangs (cas/cli/interrupt.py) -------------------------------------------

_CLEANUP_NEVER_ENDS = """
import signal, sys, threading
signal.signal(signal.SIGINT, signal.default_int_handler)  # a terminal's, whatever the test run's is
from cas.cli import interrupt, main
from cas.ops.snapshot import take

interrupt.INTERRUPT_GRACE = float(sys.argv.pop(1))
stored = take.store_tree

def store_tree(*args, **kwargs):
    try:
        return stored(*args, **kwargs)
    finally:  # cleaning up that never ends, whatever is raised into it once it said so
        said = False
        while True:
            try:
                if not said:
                    said = True
                    print("cleaning up", flush=True)
                threading.Event().wait()
            except KeyboardInterrupt:
                pass

take.store_tree = store_tree
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("interrupts", [1, 2])
def test_ctrl_c_ends_the_command_even_when_cleaning_up_hangs(tmp_path: Path, project: Path, interrupts: int) -> None:
    """One Ctrl-C: the process ends once cleaning up has taken the grace period; a second one ends
    it at once. Nothing committed is lost either way (every write step is crash-safe)."""
    cas(tmp_path, "snapshot", str(project), "-e", "before")
    env = {**os.environ, "CAS_HOME": str(tmp_path / "home"), "PYTHONPATH": str(ROOT)}
    grace = "2" if interrupts == 1 else "600"
    proc = subprocess.Popen([sys.executable, "-c", _CLEANUP_NEVER_ENDS, grace, "snapshot", str(project), "-e", "after"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "cleaning up\n"
        for _ in range(interrupts):
            proc.send_signal(signal.SIGINT)
            time.sleep(0.2)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    why = "interrupted, and still stopping after 2 s" if interrupts == 1 else "interrupted again"
    assert err.splitlines() == [f"cas: error: {why}: exited without cleaning up"], err
    assert [s["execution_id"] for s in json.loads(cas(tmp_path, "--json", "log").stdout)] == ["before"]
    assert json.loads(cas(tmp_path, "--json", "verify").stdout)["ok"]
    cas(tmp_path, "restore", "before", str(tmp_path / "out"))
