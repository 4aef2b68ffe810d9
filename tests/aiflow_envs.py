"""Real AIFlow environments for the end-to-end tests: pyenv's Python 3.7 and 3.8 with AIFlow from PyPI.

``ensure_envs()`` builds (once, under a lock, cached in ``tests/.cache/aiflow-envs``; the suite's
CI run builds them on a fresh machine) two virtual environments beside each other:

* ``aiflow-0.3.1``: Python 3.7 with ``ai-flow==0.3.1`` (Airflow 2.0.0, notification service) and
  ``thrift<0.17`` (0.17+ has no Python 3.7 build);
* ``aiflow-nightly``: Python 3.8 with ``ai-flow-nightly==2023.12.31`` and its notification service.
  Those wheels say ``Requires-Python <=3.8``, which excludes 3.8.18, so they are installed with
  ``--no-deps --ignore-requires-python`` after their declared requirements (listed below from the
  wheel's metadata), resolved normally for 3.8, plus the pins a 3.8 install needs.

Then the bridge distribution (``integrations/aiflow-bridge``) is built as a wheel on every call and
installed into both whenever it differs from what they hold, so the tests exercise the checkout's
bridge as pip installs it.
A missing interpreter or a failed install raises :class:`EnvUnavailable` naming what is missing.

``python -m tests.aiflow_envs`` builds them and prints how long that took.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
BRIDGE_DIR = REPO_ROOT / "integrations" / "aiflow-bridge"
CACHE_DIR = Path(os.environ.get("CAS_AIFLOW_ENVS", REPO_ROOT / "tests" / ".cache" / "aiflow-envs"))

# ai-flow-nightly 2023.12.31 Requires-Dist (markers for Python < 3.6 and extras left out) and those of
# notification-service-nightly 2023.12.31.
_NIGHTLY_REQUIREMENTS = [
    "Django~=3.2.7", "MarkupSafe==1.1.1", "WTForms==2.3.3", "alembic<2.0,>=1.2", "apscheduler==3.6.3",
    "argcomplete~=1.10", "attrs~=20.3.0", "cached-property~=1.5", "cloudpickle==1.2.2", "colorlog==4.0.2",
    "configparser<3.6.0,>=3.5.0", "croniter<0.4,>=0.3.17", "dill<0.4,>=0.2.2", "flask-admin==1.5.4",
    "flask-appbuilder~=3.1.1", "flask-caching~=1.9.0", "flask-cors>=3.0.10", "flask-login<0.5,>=0.3",
    "flask-swagger==0.2.13", "flask-wtf<0.15,>=0.14.2", "flask<2.0,>=1.1.0", "funcsigs<2.0.0,>=1.0.0",
    "future<0.19,>=0.16.0", "google-api-core==1.16.0", "graphviz>=0.12", "grpcio==1.35.0",
    "gunicorn<20.0,>=19.5.0", "iso8601>=0.1.12", "jinja2<2.11.0,>=2.10.1", "json-merge-patch==0.2",
    "jsonschema~=3.0", "kafka-python==2.0.2", "kubernetes==9.0.0", "lazy-object-proxy~=1.3",
    "markdown<3.0,>=2.5.2", "matplotlib==3.1.2", "mongoengine~=0.22.1", "networkx==2.4", "pendulum~=2.0",
    "pika==1.1.0", "protobuf==3.15.6", "psutil==5.6.3", "pyecharts==1.8.1", "pygments<3.0,>=2.0.1",
    "python-daemon<2.2,>=2.1.1", "python-dateutil<3,>=2.8", "pyyaml<5.4,>=5.1", "requests==2.22.0",
    "rich==9.2.0", "setproctitle<2,>=1.1.8", "six==1.12.0", "sqlalchemy-jsonfield~=1.0",
    "sqlalchemy==1.3.23", "streamz==0.5.2", "tabulate<0.9,>=0.7.5", "tenacity==6.2.0", "termcolor==1.1.0",
    "text-unidecode==1.3", "thrift>=0.9.2", "tzlocal<2.0.0,>=1.4", "unicodecsv>=0.14.1", "werkzeug~=1.0",
    "zope.deprecation<5.0,>=4.0",
]  # fmt: skip


@dataclass(frozen=True)
class EnvSpec:
    name: str
    python: str
    """The pyenv version whose interpreter makes the venv."""
    requirements: tuple[str, ...]
    """Installed first, resolved normally."""
    no_deps: tuple[str, ...] = field(default=())
    """Installed after, with --no-deps --ignore-requires-python (their requirements are above)."""
    import_check: str = "import ai_flow"

    @property
    def key(self) -> str:
        blob = json.dumps([self.python, self.requirements, self.no_deps]).encode()
        return f"{self.name}-{hashlib.sha256(blob).hexdigest()[:12]}"


AIFLOW_031 = EnvSpec(
    name="aiflow-0.3.1",
    python="3.7.16",
    requirements=("ai-flow==0.3.1", "thrift<0.17"),
    import_check="import ai_flow.plugin_interface.blob_manager_interface",
)
AIFLOW_NIGHTLY = EnvSpec(
    name="aiflow-nightly",
    python="3.8.18",
    requirements=(*_NIGHTLY_REQUIREMENTS, "thrift<0.17", "lazy-object-proxy<1.11"),
    no_deps=("ai-flow-nightly==2023.12.31", "notification-service-nightly==2023.12.31"),
    import_check="import ai_flow.blob_manager.blob_manager_interface",
)
SPECS = (AIFLOW_031, AIFLOW_NIGHTLY)


class EnvUnavailable(RuntimeError):
    """A real AIFlow environment could not be made; the message names what is missing."""


@dataclass(frozen=True)
class AIFlowEnv:
    spec: EnvSpec
    root: Path

    @property
    def python(self) -> Path:
        return self.root / "bin" / "python"

    def bin(self, name: str) -> Path:
        return self.root / "bin" / name


def interpreter(version: str) -> Path:
    """pyenv's interpreter for ``version`` (``$PYENV_ROOT`` or ``~/.pyenv``)."""
    root = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv")
    path = root / "versions" / version / "bin" / "python"
    if not path.is_file():
        raise EnvUnavailable(
            f"Python {version} is missing: expected pyenv's interpreter at {path} "
            f"(pyenv install {version}); the AIFlow end-to-end tests need it"
        )
    return path


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _run(cmd: list[str], what: str, log: Path) -> None:
    with open(log, "a") as out:
        out.write(f"$ {' '.join(cmd)}\n")
        out.flush()
        result = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, check=False, timeout=1200)
    if result.returncode != 0:
        tail = " | ".join(log.read_text(errors="replace").strip().splitlines()[-4:])
        raise EnvUnavailable(f"{what} failed (exit {result.returncode}; log {log}): {tail}")


def _pip(env_root: Path, args: list[str], what: str, log: Path) -> None:
    # --no-compile: the tests import a small part of what is installed (compiled as it is imported);
    # compiling all of it took 40 s of CPU while the suite ran beside the build.
    _run([str(env_root / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check",
          "--no-input", "--progress-bar", "off", "--no-compile", *args], what, log)  # fmt: skip


def _build(spec: EnvSpec) -> AIFlowEnv:
    root = CACHE_DIR / spec.key
    marker = root / ".complete"
    if marker.is_file():
        return AIFlowEnv(spec, root)
    python = interpreter(spec.python)
    if root.exists():
        shutil.rmtree(root)  # an interrupted build
    log = CACHE_DIR / f"{spec.key}.log"
    log.unlink(missing_ok=True)
    _run([str(python), "-m", "venv", str(root)], f"creating a Python {spec.python} venv", log)
    _pip(root, list(spec.requirements), f"pip install {' '.join(spec.requirements[:2])}... (Python {spec.python})", log)
    if spec.no_deps:
        _pip(root, ["--no-deps", "--ignore-requires-python", *spec.no_deps],
             f"pip install {' '.join(spec.no_deps)}", log)  # fmt: skip
    _run([str(root / "bin" / "python"), "-c", spec.import_check], f"{spec.import_check} (Python {spec.python})", log)
    marker.write_text(json.dumps({"spec": spec.key, "built": time.time()}))
    return AIFlowEnv(spec, root)


def _bridge_wheel(log: Path) -> Path:
    """The bridge built as a wheel by this interpreter's pip (pure Python: one wheel for all)."""
    out = CACHE_DIR / "bridge-wheel"
    shutil.rmtree(out, ignore_errors=True)
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check", "-q",
          "-w", str(out), str(BRIDGE_DIR)], "building the cas-aiflow-bridge wheel", log)  # fmt: skip
    wheels = sorted(out.glob("cas_aiflow_bridge-*.whl"))
    if not wheels:
        raise EnvUnavailable(f"pip wheel produced no cas_aiflow_bridge wheel in {out}")
    return wheels[0]


def ensure_envs() -> dict[str, AIFlowEnv]:
    """Both environments, built if needed (in parallel), each with the checkout's bridge installed."""
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with _locked(CACHE_DIR / ".lock"):
        envs: dict[str, AIFlowEnv] = {}
        errors: list[BaseException] = []

        def build(spec: EnvSpec) -> None:
            try:
                envs[spec.name] = _build(spec)
            except BaseException as exc:  # noqa: BLE001 - re-raised below
                errors.append(exc)

        threads = [threading.Thread(target=build, args=(spec,)) for spec in SPECS]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise EnvUnavailable("; ".join(str(e) for e in errors))
        log = CACHE_DIR / "bridge.log"
        log.unlink(missing_ok=True)
        wheel = _bridge_wheel(log)
        contents = _wheel_contents(wheel)
        for env in envs.values():
            # Reinstalled only if it changed: each pytest worker calls this, and a reinstall under
            # a test running in the environment on another worker would pull the bridge from under it.
            installed = env.root / ".bridge"
            if installed.is_file() and installed.read_text() == contents:
                continue
            _pip(env.root, ["--no-deps", "--force-reinstall", "--no-index", str(wheel)],
                 f"installing {wheel.name} into {env.spec.name}", log)  # fmt: skip
            installed.write_text(contents)
        return envs


def _wheel_contents(wheel: Path) -> str:
    """What a wheel installs, as its RECORD lists it (each file's path and hash): the same for two
    builds of the same sources, unlike the wheel's own bytes (which hold the files' times)."""
    with zipfile.ZipFile(wheel) as archive:
        record = next(name for name in archive.namelist() if name.endswith(".dist-info/RECORD"))
        return hashlib.sha256(archive.read(record)).hexdigest()


if __name__ == "__main__":
    started = time.monotonic()
    built = ensure_envs()
    for env in built.values():
        print(f"{env.spec.name}: {env.root}")
    print(f"AIFlow environments ready in {time.monotonic() - started:.0f} s")
