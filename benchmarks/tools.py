"""The tools under test, each driven through its command line as a separate process.

A tool instance belongs to one case of one round: its repository lives in ``base / 'repos' / name``
and its caches in ``base / 'cache' / name``, so every round starts from empty repositories.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def _first_line(cmd: list[str], env: dict[str, str] | None = None) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60, check=False)
        return (out.stdout or out.stderr).strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return "?"


class Tool:
    """One tool. ``binary`` is the program to run (for the tools that are a program)."""

    name = "tool"
    # A peer is a backup tool cas is measured against ("the best peer of a step"); the others are
    # baselines, shown but never the best peer.
    peer = True
    # Cases this tool sits out (see README: zip of a 10 GB file takes minutes and says nothing new).
    skip_cases: frozenset[str] = frozenset()

    def __init__(self, base: Path, binary: str = "") -> None:
        self.base = base
        self.binary = binary
        self.repo = base / "repos" / self.name
        self.cache = base / "cache" / self.name
        self.snapshot_ids: dict[str, str] = {}

    # -- commands (argv, cwd) -------------------------------------------------
    def env(self) -> dict[str, str]:
        return dict(os.environ)

    def setup_cmds(self) -> list[tuple[list[str], Path]]:
        return []

    def snapshot_cmd(self, src: Path, label: str, parent: str | None) -> tuple[list[str], Path]:
        """Snapshot directory ``src`` under ``label``; ``parent`` is the label of the previous
        snapshot of the series (or of the same directory), for tools that need to be told."""
        raise NotImplementedError

    def after_snapshot(self, label: str, output: str) -> None:
        self.snapshot_ids[label] = label

    def restore_cmd(self, label: str, dest: Path) -> tuple[list[str], Path]:
        """Restore ``label`` so that the snapshotted directory's content is at ``dest`` (empty, existing)."""
        raise NotImplementedError

    def stored_paths(self) -> list[Path]:
        return [self.repo]

    def cache_paths(self) -> list[Path]:
        return [self.cache]

    def index_paths(self) -> list[Path]:
        """Repository files a snapshot reads (besides its caches): read before a snapshot step."""
        return []

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


class Cas(Tool):
    name = "cas"
    peer = False

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
        m = re.search(r"\{([A-Za-z0-9_,-]+)\}", help_text)
        if m and "init" in m.group(1).split(","):
            return [([*self.cli(), "init"], REPO_ROOT)]
        return []

    def snapshot_cmd(self, src: Path, label: str, parent: str | None) -> tuple[list[str], Path]:
        return [*self.cli(), "snapshot", str(src), "--execution-id", label], REPO_ROOT

    def restore_cmd(self, label: str, dest: Path) -> tuple[list[str], Path]:
        return [*self.cli(), "restore", label, str(dest)], REPO_ROOT

    def _index_files(self) -> list[Path]:
        p = self.index_path
        return [p, p.with_name(p.name + "-wal"), p.with_name(p.name + "-shm"), p.with_name(p.name + "-journal")]

    def stored_paths(self) -> list[Path]:
        return [self.repo, *self._index_files()]

    def index_paths(self) -> list[Path]:
        return self._index_files()

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


class CasEncrypted(Cas):
    """cas on an encrypted repository (``cas init --encrypt``, docs/SECURITY.md), beside ``cas`` in
    the same run: the cost of encryption. The KDF is the default one (scrypt N=2**17), as a user
    would have it, so every command pays its one unwrap of the master key."""

    name = "cas-encrypted"
    PASSWORD = "benchmark"

    @property
    def index_path(self) -> Path:
        return self.base / "repos" / "cas-encrypted-index.sqlite"

    def env(self) -> dict[str, str]:
        env = super().env()
        env["CAS_PASSWORD"] = self.PASSWORD
        return env

    def setup_cmds(self) -> list[tuple[list[str], Path]]:
        return [([*self.cli(), "init", "--encrypt"], REPO_ROOT)]

    def version(self) -> str:
        return super().version().replace("cas (", "cas, encrypted repository (", 1)


class CasOneProcess(Cas):
    """cas with ``--jobs 1`` beside ``cas`` (whose snapshots of large trees use a process per CPU,
    the command and forked workers): the single-process snapshot, slower and in less memory."""

    name = "cas-1job"

    @property
    def index_path(self) -> Path:
        return self.base / "repos" / "cas-1job-index.sqlite"

    def snapshot_cmd(self, src: Path, label: str, parent: str | None) -> tuple[list[str], Path]:
        cmd, cwd = super().snapshot_cmd(src, label, parent)
        return [*cmd, "--jobs", "1"], cwd

    def version(self) -> str:
        return super().version().replace("cas (", "cas --jobs 1 (", 1)


def _json_snapshot_id(output: str, keys: tuple[str, ...]) -> str | None:
    """The snapshot id from a tool's JSON output: the last JSON value that has one of ``keys``.
    Values start at the beginning of a line (restic writes one object per line, rustic one
    indented object after its log lines)."""
    decoder = json.JSONDecoder()
    candidates: list[object] = []
    at = 0
    while at < len(output):
        if output[at] in "{[":
            try:
                value, end = decoder.raw_decode(output, at)
                candidates.append(value)
                at = end
                continue
            except json.JSONDecodeError:
                pass
        nl = output.find("\n", at)
        if nl < 0:
            break
        at = nl + 1
    for msg in reversed(candidates):
        for item in reversed(msg) if isinstance(msg, list) else [msg]:
            if isinstance(item, dict):
                for k in keys:
                    if item.get(k):
                        return str(item[k])
    return None


class Restic(Tool):
    """restic, any version: the current release built from source (``restic``) and Debian's
    package (``restic-debian``) run the same commands."""

    name = "restic"
    PASSWORD = "benchmark"

    def __init__(self, base: Path, binary: str = "restic") -> None:
        super().__init__(base, binary)
        self._version = _first_line([binary, "version"])
        init_help = subprocess.run([binary, "init", "--help"], capture_output=True, text=True, check=False).stdout
        self.no_password = "--insecure-no-password" in init_help

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["RESTIC_REPOSITORY"] = str(self.repo)
        env["RESTIC_CACHE_DIR"] = str(self.cache)
        env.pop("RESTIC_PASSWORD", None)
        if not self.no_password:
            env["RESTIC_PASSWORD"] = self.PASSWORD
        return env

    def _pw(self) -> list[str]:
        return ["--insecure-no-password"] if self.no_password else []

    def setup_cmds(self) -> list[tuple[list[str], Path]]:
        return [([self.binary, "init", "-q", *self._pw()], self.base)]

    def snapshot_cmd(self, src: Path, label: str, parent: str | None) -> tuple[list[str], Path]:
        # "." from inside the directory: the snapshot's tree holds the directory's content at its
        # root, so the previous execution's snapshot works as --parent.
        cmd = [self.binary, "backup", "--json", "--host", "bench", "--tag", label, *self._pw()]
        if parent is not None and parent in self.snapshot_ids:
            cmd += ["--parent", self.snapshot_ids[parent]]
        return [*cmd, "."], src

    def after_snapshot(self, label: str, output: str) -> None:
        sid = _json_snapshot_id(output, ("snapshot_id",))
        if sid:
            self.snapshot_ids[label] = sid

    def restore_cmd(self, label: str, dest: Path) -> tuple[list[str], Path]:
        return [self.binary, "restore", *self._pw(), self.snapshot_ids.get(label, "latest"), "--target", str(dest)], self.base

    def index_paths(self) -> list[Path]:
        return [self.repo / "index", self.repo / "snapshots", self.repo / "keys", self.repo / "config"]

    def version(self) -> str:
        return self._version + ("" if not self.no_password else " (--insecure-no-password)")


class ResticDebian(Restic):
    name = "restic-debian"


class Rustic(Tool):
    """rustic (restic's repository format, written in Rust), configured by environment only: an
    empty config directory so no profile of the user's applies."""

    name = "rustic"
    PASSWORD = "benchmark"

    def __init__(self, base: Path, binary: str = "rustic") -> None:
        super().__init__(base, binary)
        self._version = _first_line([binary, "--version"], env=self.env())

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RUSTIC_")}
        env["RUSTIC_REPOSITORY"] = str(self.repo)
        env["RUSTIC_PASSWORD"] = self.PASSWORD
        env["RUSTIC_CACHE_DIR"] = str(self.cache)
        env["RUSTIC_NO_PROGRESS"] = "true"
        env["XDG_CONFIG_HOME"] = str(self.base / "rustic-config")  # no rustic.toml there
        return env

    def setup_cmds(self) -> list[tuple[list[str], Path]]:
        (self.base / "rustic-config").mkdir(parents=True, exist_ok=True)
        return [([self.binary, "init"], self.base)]

    def snapshot_cmd(self, src: Path, label: str, parent: str | None) -> tuple[list[str], Path]:
        # As restic: "." from inside the directory, the previous snapshot as explicit parent (rustic
        # would otherwise look for one with the same absolute paths).
        cmd = [self.binary, "backup", "--json", "--host", "bench", "--tag", label]
        if parent is not None and parent in self.snapshot_ids:
            cmd += ["--parent", self.snapshot_ids[parent]]
        return [*cmd, "."], src

    def after_snapshot(self, label: str, output: str) -> None:
        sid = _json_snapshot_id(output, ("id",))
        if sid:
            self.snapshot_ids[label] = sid

    def restore_cmd(self, label: str, dest: Path) -> tuple[list[str], Path]:
        return [self.binary, "restore", self.snapshot_ids.get(label, "latest"), str(dest)], self.base

    def index_paths(self) -> list[Path]:
        return [self.repo / "index", self.repo / "snapshots", self.repo / "keys", self.repo / "config"]

    def version(self) -> str:
        return self._version


class Borg(Tool):
    name = "borg"

    def __init__(self, base: Path, binary: str = "borg") -> None:
        super().__init__(base, binary)

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK"] = "yes"
        env["BORG_RELOCATED_REPO_ACCESS_IS_OK"] = "yes"
        env["BORG_BASE_DIR"] = str(self.cache)
        return env

    def setup_cmds(self) -> list[tuple[list[str], Path]]:
        return [([self.binary, "init", "--encryption=none", str(self.repo)], self.base)]

    def snapshot_cmd(self, src: Path, label: str, parent: str | None) -> tuple[list[str], Path]:
        return [self.binary, "create", "--compression", "zstd,3", f"{self.repo}::{label}", "."], src

    def restore_cmd(self, label: str, dest: Path) -> tuple[list[str], Path]:
        return [self.binary, "extract", f"{self.repo}::{label}"], dest

    def index_paths(self) -> list[Path]:
        return sorted(self.repo.glob("index.*")) + sorted(self.repo.glob("hints.*"))

    def version(self) -> str:
        return _first_line([self.binary, "--version"])


class Zip(Tool):
    """AIFlow's way: zip the execution directory (ZIP_DEFLATED), copy the zip into a store."""

    name = "zip"
    peer = False
    skip_cases = frozenset({"big"})
    SCRIPT = Path(__file__).resolve().parent / "zipstore.py"

    def snapshot_cmd(self, src: Path, label: str, parent: str | None) -> tuple[list[str], Path]:
        return [sys.executable, str(self.SCRIPT), "snapshot", str(src), str(self.repo), label], self.base

    def restore_cmd(self, label: str, dest: Path) -> tuple[list[str], Path]:
        return [sys.executable, str(self.SCRIPT), "restore", str(self.repo), label, str(dest)], self.base

    def version(self) -> str:
        return f"python {sys.version.split()[0]} zipfile ZIP_DEFLATED (zlib level 6) + shutil.copyfile"


TOOLS: dict[str, type[Tool]] = {
    "cas": Cas,
    "cas-encrypted": CasEncrypted,
    "cas-1job": CasOneProcess,
    "restic": Restic,
    "rustic": Rustic,
    "restic-debian": ResticDebian,
    "borg": Borg,
    "zip": Zip,
}
