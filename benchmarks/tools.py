"""The tools under test, each driven through its command line as a separate process."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


class Tool:
    """One tool: its repository lives in ``base / 'repos' / name``, its caches in ``base / 'cache' / name``."""

    name = "tool"

    def __init__(self, base: Path) -> None:
        self.base = base
        self.repo = base / "repos" / self.name
        self.cache = base / "cache" / self.name
        self.snapshot_ids: dict[str, str] = {}

    # -- commands (argv, cwd) -------------------------------------------------
    def env(self) -> dict[str, str]:
        return dict(os.environ)

    def setup_cmds(self) -> list[tuple[list[str], Path]]:
        return []

    def snapshot_cmd(self, exec_dir: Path, label: str, parent: str | None) -> tuple[list[str], Path]:
        raise NotImplementedError

    def after_snapshot(self, label: str, stdout: str) -> None:
        self.snapshot_ids[label] = label

    def restore_cmd(self, label: str, dest: Path) -> tuple[list[str], Path]:
        raise NotImplementedError

    def restored_root(self, dest: Path) -> Path:
        return dest

    def stored_paths(self) -> list[Path]:
        return [self.repo]

    def cache_paths(self) -> list[Path]:
        return [self.cache]

    def extra_stats(self) -> dict[str, object]:
        return {}

    def version(self) -> str:
        return "?"

    def reset(self) -> None:
        for p in [*self.stored_paths(), *self.cache_paths()]:
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
        self.repo.parent.mkdir(parents=True, exist_ok=True)
        self.cache.mkdir(parents=True, exist_ok=True)
        self.snapshot_ids.clear()


def _first_line(cmd: list[str], env: dict[str, str] | None = None) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60, check=False)
        return (out.stdout or out.stderr).strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return "?"


class Cas(Tool):
    name = "cas"

    @property
    def index_path(self) -> Path:
        return self.base / "repos" / "cas-index.sqlite"

    def cli(self) -> list[str]:
        return [sys.executable, "-m", "cas.cli", "--repo", str(self.repo), "--index", f"sqlite:///{self.index_path}"]

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH", "")]))
        env["CAS_HOME"] = str(self.cache)  # its files cache lives there, like restic's and borg's caches
        return env

    def setup_cmds(self) -> list[tuple[list[str], Path]]:
        # Only if the CLI has an explicit init command; otherwise the first snapshot creates the repo.
        help_text = subprocess.run(
            [sys.executable, "-m", "cas.cli", "--help"], capture_output=True, text=True, cwd=REPO_ROOT, env=self.env(), check=False
        ).stdout
        commands: set[str] = set()
        m = re.search(r"\{([A-Za-z0-9_,-]+)\}", help_text)
        if m:
            commands.update(m.group(1).split(","))
        commands.update(line.split()[0] for line in help_text.splitlines() if line.startswith("  ") and line.split())
        if "init" in commands:
            return [([*self.cli(), "init"], REPO_ROOT)]
        return []

    def snapshot_cmd(self, exec_dir: Path, label: str, parent: str | None) -> tuple[list[str], Path]:
        return [*self.cli(), "snapshot", str(exec_dir), "--execution-id", label], REPO_ROOT

    def restore_cmd(self, label: str, dest: Path) -> tuple[list[str], Path]:
        return [*self.cli(), "restore", label, str(dest)], REPO_ROOT

    def stored_paths(self) -> list[Path]:
        p = self.index_path
        return [self.repo, p, p.with_name(p.name + "-wal"), p.with_name(p.name + "-shm"), p.with_name(p.name + "-journal")]

    def extra_stats(self) -> dict[str, object]:
        out = subprocess.run(
            [*self.cli(), "--json", "stats"], capture_output=True, text=True, cwd=REPO_ROOT, env=self.env(), timeout=600, check=False
        )
        if out.returncode != 0:
            return {"stats_error": (out.stderr or out.stdout)[-2000:]}
        try:
            data = json.loads(out.stdout)
        except json.JSONDecodeError:
            return {"stats_error": f"not JSON: {out.stdout[-500:]!r}"}
        return {"cas_stats": data}

    def version(self) -> str:
        rev = _first_line(["git", "-C", str(REPO_ROOT), "log", "-1", "--format=%h %cI", "--", "cas"])
        dirty = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--", "cas", "manifests", "backends"],
            capture_output=True, text=True, check=False,
        ).stdout.strip()
        return f"cas (python -m cas.cli, last commit to cas/ {rev}{', with uncommitted changes' if dirty else ''})"


class Restic(Tool):
    name = "restic"
    PASSWORD = "benchmark"

    def __init__(self, base: Path) -> None:
        super().__init__(base)
        help_text = _first_line(["restic", "version"])
        self._version = help_text
        init_help = subprocess.run(["restic", "init", "--help"], capture_output=True, text=True, check=False).stdout
        self.no_password = "--insecure-no-password" in init_help

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["RESTIC_REPOSITORY"] = str(self.repo)
        env["RESTIC_CACHE_DIR"] = str(self.cache)
        if not self.no_password:
            env["RESTIC_PASSWORD"] = self.PASSWORD
        env.setdefault("GOMAXPROCS", str(os.cpu_count() or 1))
        return env

    def _pw(self) -> list[str]:
        return ["--insecure-no-password"] if self.no_password else []

    def setup_cmds(self) -> list[tuple[list[str], Path]]:
        return [(["restic", "init", "-q", *self._pw()], self.base)]

    def snapshot_cmd(self, exec_dir: Path, label: str, parent: str | None) -> tuple[list[str], Path]:
        # "." from inside the execution directory: the snapshot's tree holds the directory's
        # content at its root, so the previous execution's snapshot works as --parent.
        cmd = ["restic", "backup", "--json", "--host", "bench", "--tag", label, *self._pw()]
        if parent is not None and parent in self.snapshot_ids:
            cmd += ["--parent", self.snapshot_ids[parent]]
        return [*cmd, "."], exec_dir

    def after_snapshot(self, label: str, stdout: str) -> None:
        for line in reversed(stdout.splitlines()):
            try:
                msg = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(msg, dict) and msg.get("message_type") == "summary":
                self.snapshot_ids[label] = str(msg["snapshot_id"])
                return

    def restore_cmd(self, label: str, dest: Path) -> tuple[list[str], Path]:
        return ["restic", "restore", *self._pw(), self.snapshot_ids.get(label, "latest"), "--target", str(dest)], self.base

    def version(self) -> str:
        return self._version + ("" if not self.no_password else " (--insecure-no-password)")


class Borg(Tool):
    name = "borg"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK"] = "yes"
        env["BORG_RELOCATED_REPO_ACCESS_IS_OK"] = "yes"
        env["BORG_BASE_DIR"] = str(self.cache)
        return env

    def setup_cmds(self) -> list[tuple[list[str], Path]]:
        return [(["borg", "init", "--encryption=none", str(self.repo)], self.base)]

    def snapshot_cmd(self, exec_dir: Path, label: str, parent: str | None) -> tuple[list[str], Path]:
        return ["borg", "create", "--compression", "zstd,3", f"{self.repo}::{label}", "."], exec_dir

    def restore_cmd(self, label: str, dest: Path) -> tuple[list[str], Path]:
        return ["borg", "extract", f"{self.repo}::{label}"], dest

    def version(self) -> str:
        return _first_line(["borg", "--version"])


class Zip(Tool):
    """AIFlow's way: zip the execution directory (ZIP_DEFLATED), copy the zip into a store."""

    name = "zip"
    SCRIPT = Path(__file__).resolve().parent / "zipstore.py"

    def snapshot_cmd(self, exec_dir: Path, label: str, parent: str | None) -> tuple[list[str], Path]:
        return [sys.executable, str(self.SCRIPT), "snapshot", str(exec_dir), str(self.repo), label], self.base

    def restore_cmd(self, label: str, dest: Path) -> tuple[list[str], Path]:
        return [sys.executable, str(self.SCRIPT), "restore", str(self.repo), label, str(dest)], self.base

    def version(self) -> str:
        return f"python {sys.version.split()[0]} zipfile ZIP_DEFLATED (zlib level 6) + shutil.copyfile"


TOOLS: dict[str, type[Tool]] = {"cas": Cas, "restic": Restic, "borg": Borg, "zip": Zip}
