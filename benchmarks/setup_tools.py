"""Install the benchmark's external tools when they are missing.

restic and borg come from Debian's packages (``apt-get update`` once, then
``apt-get install -y restic borgbackup``); matplotlib (which pulls numpy) from PyPI.
Run as root on a Debian machine; anything already present is left alone.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys

APT_PACKAGES: dict[str, str] = {"restic": "restic", "borg": "borgbackup"}


def _log(msg: str) -> None:
    print(f"[setup] {msg}", flush=True)


def missing_apt_packages(tools: list[str]) -> list[str]:
    return [APT_PACKAGES[t] for t in tools if t in APT_PACKAGES and shutil.which(t) is None]


def ensure_apt(tools: list[str]) -> None:
    pkgs = missing_apt_packages(tools)
    if not pkgs:
        return
    if shutil.which("apt-get") is None:
        raise SystemExit(f"missing {pkgs} and no apt-get on this machine: install them by hand")
    sudo: list[str] = [] if os.geteuid() == 0 else ["sudo"]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    _log(f"apt-get update; apt-get install -y {' '.join(pkgs)}")
    subprocess.run([*sudo, "apt-get", "update"], check=True, env=env, stdout=subprocess.DEVNULL)
    subprocess.run([*sudo, "apt-get", "install", "-y", *pkgs], check=True, env=env, stdout=subprocess.DEVNULL)
    still = missing_apt_packages(tools)
    if still:
        raise SystemExit(f"apt-get did not provide {still}")


def ensure_matplotlib() -> None:
    if importlib.util.find_spec("matplotlib") is not None:
        return
    _log("pip install matplotlib")
    done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "matplotlib"], check=False)
    importlib.invalidate_caches()
    if done.returncode != 0:
        _log("matplotlib could not be installed: no chart.png this run (the table is still written)")


def ensure_all(tools: list[str]) -> None:
    ensure_apt(tools)
    ensure_matplotlib()


if __name__ == "__main__":
    ensure_all(["restic", "borg"])
