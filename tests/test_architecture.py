"""The layers of docs/ARCHITECTURE.md hold: import-linter checks the contracts in pyproject.toml."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_are_kept() -> None:
    exe = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))
    proc = subprocess.run([exe, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout


def test_commands_import_only_what_they_use() -> None:
    """``cas --help`` loads no SQL; opening a store to list or find loads neither SQLAlchemy's ORM nor
    Alembic nor the modules of snapshot and restore; every name ``cas`` exports still resolves."""
    code = """
import json, sys
import cas, cas.cli
cas.cli.build_parser()
parser = sorted(m for m in sys.modules if m.startswith(("sqlalchemy", "manifests", "cas.store", "cas.ops")))
import cas.store
store = sorted(m for m in sys.modules if m.startswith(
    ("sqlalchemy.orm", "alembic", "pathspec", "cas.ops.snapshot", "cas.ops.restore")))
exported = [name for name in cas.__all__ if getattr(cas, name, None) is None]
print(json.dumps([parser, store, exported]))
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120, check=True,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})
    assert json.loads(proc.stdout) == [[], [], []]


def test_a_restore_from_a_sqlite_index_loads_no_sqlalchemy(tmp_path: Path) -> None:
    """SQLAlchemy costs a command about 0.2 s and 23 MiB: a restore (over what it restored before,
    too) reads its index through SQLite's driver (manifests/lazy.py); a command that needs more
    loads it then and works as ever."""
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_bytes(b"alpha\n" * 1000)
    (src / "sub" / "b.bin").write_bytes(bytes(range(256)) * 600)
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "CAS_HOME": str(tmp_path / "home")}
    cli = [sys.executable, "-m", "cas", "--repo", str(tmp_path / "repo"), "--index", f"sqlite:///{tmp_path / 'index.sqlite'}"]
    subprocess.run([*cli, "snapshot", str(src), "--execution-id", "e1"], env=env, check=True, capture_output=True)
    code = """
import json, sys
from cas.cli import main
code = main(sys.argv[1:])
print(json.dumps([code, sorted(m for m in sys.modules if m.startswith(("sqlalchemy", "alembic")))]))
"""
    for dest, extra in ((tmp_path / "out", []), (tmp_path / "out", ["--overwrite", "--delete"])):
        proc = subprocess.run([sys.executable, "-c", code, *cli[3:], "restore", "e1", str(dest), *extra], env=env,
                              check=True, capture_output=True, text=True)
        assert json.loads(proc.stdout.strip().splitlines()[-1]) == [0, []], proc.stderr
        assert (dest / "a.txt").read_bytes() == (src / "a.txt").read_bytes()
        assert (dest / "sub" / "b.bin").read_bytes() == (src / "sub" / "b.bin").read_bytes()
    proc = subprocess.run([sys.executable, "-c", code, *cli[3:], "log"], env=env, check=True, capture_output=True,
                          text=True)
    assert "e1" in proc.stdout  # a listing, through the full index


def test_a_parallel_snapshot_of_what_is_stored_loads_sqlalchemy_in_no_process(tmp_path: Path) -> None:
    """A snapshot split across worker processes (``--jobs 2``) of a tree the repository holds
    already writes nothing to the index: neither this process nor a worker loads SQLAlchemy (an
    ``sqlalchemy`` that refuses to be imported is first on the path); one with new files loads it
    where it writes, and both are stored."""
    src = tmp_path / "src"
    for d in range(6):
        (src / f"d{d}").mkdir(parents=True)
        for f in range(5):
            (src / f"d{d}" / f"f{f}.txt").write_bytes(f"{d}-{f}\n".encode() * 100)
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "CAS_HOME": str(tmp_path / "home")}
    cli = [sys.executable, "-m", "cas", "--repo", str(tmp_path / "repo"), "--index", f"sqlite:///{tmp_path / 'index.sqlite'}"]
    subprocess.run([*cli, "snapshot", str(src), "-e", "first", "--jobs", "2"], env=env, check=True, capture_output=True)
    poisoned = tmp_path / "poisoned" / "sqlalchemy"
    poisoned.mkdir(parents=True)
    (poisoned / "__init__.py").write_text("raise ImportError('sqlalchemy was imported')\n")
    env_poisoned = {**env, "PYTHONPATH": f"{poisoned.parent}:{ROOT}"}
    again = subprocess.run([*cli, "snapshot", str(src), "-e", "again", "--jobs", "2"], env=env_poisoned, check=False,
                           capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    (src / "d3" / "new.txt").write_bytes(b"not stored yet\n" * 50)
    refused = subprocess.run([*cli, "snapshot", str(src), "-e", "refused", "--jobs", "2"], env=env_poisoned, check=False,
                             capture_output=True, text=True)
    assert refused.returncode != 0 and "sqlalchemy was imported" in refused.stderr + refused.stdout
    subprocess.run([*cli, "snapshot", str(src), "-e", "new", "--jobs", "2"], env=env, check=True, capture_output=True)
    for execution, added in (("again", False), ("new", True)):
        out = tmp_path / execution
        subprocess.run([*cli, "restore", execution, str(out)], env=env, check=True, capture_output=True)
        assert {p.relative_to(out) for p in out.rglob("*.txt")} == {
            p.relative_to(src) for p in src.rglob("*.txt") if added or p.name != "new.txt"}
        assert (out / "d5" / "f4.txt").read_bytes() == (src / "d5" / "f4.txt").read_bytes()


def test_a_snapshot_loads_pathspec_only_for_patterns(tmp_path: Path) -> None:
    """pathspec is imported when a walk has patterns to compile, not for a tree without
    ``.casignore`` files and a command without ``--exclude``; with either, the patterns apply."""
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_bytes(b"alpha\n")
    (src / "sub" / "b.log").write_bytes(b"beta\n")
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "CAS_HOME": str(tmp_path / "home")}
    args = ["--repo", str(tmp_path / "repo"), "--index", f"sqlite:///{tmp_path / 'index.sqlite'}"]
    code = """
import json, sys
from cas.cli import main
code = main(sys.argv[1:])
print(json.dumps([code, sorted(m for m in sys.modules if m.split(".")[0] == "pathspec")]))
"""

    def snapshot(execution_id: str, *extra: str) -> list[object]:
        proc = subprocess.run([sys.executable, "-c", code, *args, "snapshot", str(src), "--execution-id", execution_id,
                               *extra], env=env, check=True, capture_output=True, text=True)
        return json.loads(proc.stdout.strip().splitlines()[-1])

    def names(execution_id: str) -> list[str]:
        proc = subprocess.run([sys.executable, "-m", "cas", *args, "--json", "ls", execution_id, "-r"], env=env,
                              check=True, capture_output=True, text=True)
        return sorted(item["path"] for item in json.loads(proc.stdout))

    assert snapshot("plain") == [0, []]
    assert names("plain") == ["a.txt", "sub", "sub/b.log"]
    code_, loaded = snapshot("excluded", "--exclude", "*.log")
    assert code_ == 0 and "pathspec" in loaded
    assert names("excluded") == ["a.txt", "sub"]
    (src / ".casignore").write_text("a.txt\n")
    code_, loaded = snapshot("ignored")
    assert code_ == 0 and "pathspec" in loaded
    assert names("ignored") == [".casignore", "sub", "sub/b.log"]
