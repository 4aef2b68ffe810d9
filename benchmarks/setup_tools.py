"""Install or build the benchmark's external tools when they are missing.

* restic 0.18.1 (the current release) is built from source with ``go install
  github.com/restic/restic/cmd/restic@v0.18.1`` into ``benchmarks/work/bin`` (Go and the Go module
  proxy are needed once; later runs reuse the binary);
* rustic is built with ``cargo install rustic-rs --no-default-features`` (pinned version, ``--locked``)
  into ``benchmarks/work/bin``, a few minutes once; with ``--features mount`` when libfuse 3's
  development files are installed (``pkg-config fuse3``), for the mount case;
* Debian's restic (0.14 on bookworm) and borg 1.2 come from Debian's packages (``apt-get update``
  once, then ``apt-get install -y restic borgbackup``; run as root);
* GNU time (Debian's ``time``), which measures each command's peak RSS and CPU time;
* matplotlib (which pulls numpy) from PyPI, for the chart.

Anything already present is left alone; a binary given by option is used as it is.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

RESTIC_VERSION = "0.18.1"
RUSTIC_VERSION = "0.11.4"
GNU_TIME = "/usr/bin/time"
APT_PACKAGES: dict[str, tuple[str, str]] = {"restic-debian": ("restic", "/usr/bin/restic"), "borg": ("borgbackup", "/usr/bin/borg")}


def _log(msg: str) -> None:
    print(f"[setup] {msg}", flush=True)


def _version_line(binary: str, *args: str) -> str:
    try:
        out = subprocess.run([binary, *args], capture_output=True, text=True, timeout=60, check=False)
    except OSError:
        return ""
    return (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr).strip() else ""


def ensure_apt(tools: list[str], binaries: dict[str, str]) -> None:
    """Install the Debian packages of the tools whose binary (``binaries[name]``) is missing."""
    pkgs = [APT_PACKAGES[t][0] for t in tools if t in APT_PACKAGES and shutil.which(binaries[t]) is None]
    if not os.access(GNU_TIME, os.X_OK):  # measures every command's peak RSS and CPU time
        pkgs.append("time")
    if not pkgs:
        return
    if shutil.which("apt-get") is None:
        raise SystemExit(f"missing {pkgs} and no apt-get on this machine: install them by hand")
    sudo: list[str] = [] if os.geteuid() == 0 else ["sudo"]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    _log(f"apt-get update; apt-get install -y {' '.join(pkgs)}")
    subprocess.run([*sudo, "apt-get", "update"], check=True, env=env, stdout=subprocess.DEVNULL)
    subprocess.run([*sudo, "apt-get", "install", "-y", *pkgs], check=True, env=env, stdout=subprocess.DEVNULL)
    still = [t for t in tools if t in APT_PACKAGES and shutil.which(binaries[t]) is None]
    still += [] if os.access(GNU_TIME, os.X_OK) else [GNU_TIME]
    if still:
        raise SystemExit(f"apt-get did not provide {still}")


def ensure_restic(binary: Path, log_dir: Path) -> None:
    """Build restic RESTIC_VERSION into ``binary``'s directory unless that version is there."""
    if RESTIC_VERSION in _version_line(str(binary), "version").split():
        return
    go = shutil.which("go")
    if go is None:
        raise SystemExit(f"restic {RESTIC_VERSION} is built with Go, which is not on PATH (or pass --restic BINARY)")
    binary.parent.mkdir(parents=True, exist_ok=True)
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / "restic-build.log"
    _log(f"go install github.com/restic/restic/cmd/restic@v{RESTIC_VERSION} (GOBIN={binary.parent}; log {log})")
    env = dict(os.environ, GOBIN=str(binary.parent), CGO_ENABLED="0")
    with open(log, "w") as out:
        done = subprocess.run([go, "install", f"github.com/restic/restic/cmd/restic@v{RESTIC_VERSION}"],
                              env=env, stdout=out, stderr=subprocess.STDOUT, check=False)
    built = binary.parent / "restic"
    if done.returncode != 0 or not built.exists():
        raise SystemExit(f"building restic failed, see {log}")
    if built != binary:
        shutil.move(built, binary)


def _fuse3_dev() -> bool:
    """Whether rustic's mount feature can be built here (it links libfuse 3)."""
    return shutil.which("pkg-config") is not None and subprocess.run(
        ["pkg-config", "--exists", "fuse3"], capture_output=True, check=False).returncode == 0


def has_mount(binary: str) -> bool:
    """Whether this rustic was built with its ``mount`` command."""
    try:
        return subprocess.run([binary, "mount", "--help"], capture_output=True, check=False, timeout=60).returncode == 0
    except OSError:
        return False


def ensure_rustic(binary: Path, log_dir: Path) -> None:
    """Build rustic RUSTIC_VERSION with cargo into ``binary``'s parent's parent (cargo's --root),
    with its mount command when libfuse 3 can be linked."""
    mount = _fuse3_dev()
    if RUSTIC_VERSION in _version_line(str(binary), "--version").split() and (not mount or has_mount(str(binary))):
        return
    cargo = shutil.which("cargo")
    if cargo is None:
        raise SystemExit(f"rustic {RUSTIC_VERSION} is built with cargo, which is not on PATH (or pass --rustic BINARY)")
    root = binary.parent.parent
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / "rustic-build.log"
    cmd = [cargo, "install", "rustic-rs", "--version", RUSTIC_VERSION, "--no-default-features",
           *(["--features", "mount"] if mount else []), "--locked", "--force", "--root", str(root)]
    _log(f"{' '.join(cmd)} (a few minutes; log {log})")
    with open(log, "w") as out:
        done = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, check=False)
    built = root / "bin" / "rustic"
    if done.returncode != 0 or not built.exists():
        raise SystemExit(f"building rustic failed, see {log}")
    if built != binary:
        shutil.move(built, binary)


def ensure_matplotlib() -> None:
    if importlib.util.find_spec("matplotlib") is not None:
        return
    _log("pip install matplotlib")
    done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "matplotlib"], check=False)
    importlib.invalidate_caches()
    if done.returncode != 0:
        _log("matplotlib could not be installed: no chart.png this run (the table is still written)")


def ensure_all(tools: list[str], binaries: dict[str, str], built: set[str], log_dir: Path) -> None:
    """Make every tool's binary usable. ``built`` names the tools whose binary is the default
    under benchmarks/work/bin (built here when missing); the others were given by option."""
    ensure_apt(tools, binaries)
    if "restic" in tools and "restic" in built:
        ensure_restic(Path(binaries["restic"]), log_dir)
    if "rustic" in tools and "rustic" in built:
        ensure_rustic(Path(binaries["rustic"]), log_dir)
    for t in tools:
        b = binaries.get(t)
        if b and shutil.which(b) is None:
            raise SystemExit(f"{t}: {b} is not an executable")
    ensure_matplotlib()


if __name__ == "__main__":
    work_bin = Path(__file__).resolve().parent / "work" / "bin"
    names = ["restic", "rustic", "restic-debian", "borg"]
    bins = {"restic": str(work_bin / "restic"), "rustic": str(work_bin / "rustic"),
            "restic-debian": APT_PACKAGES["restic-debian"][1], "borg": "borg"}
    ensure_all(names, bins, {"restic", "rustic"}, work_bin)
