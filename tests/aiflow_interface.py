"""AIFlow's real blob manager interface, fetched from PyPI, for tests.

The ``ai-flow`` wheels need Python 3.7 and cannot be installed here, and importing the package runs
a heavy ``__init__``. So :func:`install` downloads the 0.3.1 wheel once (cached under
``tests/.cache/aiflow``, gitignored), extracts ``ai_flow/plugin_interface/blob_manager_interface.py``
and the ``ai_flow.common`` modules it imports (found by reading its imports, transitively) into a
temporary package tree whose ``__init__.py`` files are empty, and puts that tree first on
``sys.path``. Only PyYAML is needed to import the result.
"""

from __future__ import annotations

import ast
import atexit
import importlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from types import ModuleType

AIFLOW_VERSION = "0.3.1"
INTERFACE = "ai_flow/plugin_interface/blob_manager_interface.py"
INTERFACE_MODULE = "ai_flow.plugin_interface.blob_manager_interface"
CACHE_DIR = Path(__file__).resolve().parent / ".cache" / "aiflow"

_installed: Path | None = None


class InterfaceUnavailable(RuntimeError):
    """The wheel could not be fetched (no network and nothing cached)."""


def fetch_wheel(version: str = AIFLOW_VERSION, cache_dir: Path = CACHE_DIR) -> Path:
    """The cached ``ai_flow-<version>-py3-none-any.whl``, downloaded with pip if absent."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    wheel = cache_dir / f"ai_flow-{version}-py3-none-any.whl"
    if wheel.is_file() and zipfile.is_zipfile(wheel):
        return wheel
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--python-version", "3.7",
        "--only-binary=:all:", f"ai-flow=={version}", "-d", str(cache_dir),
    ]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    if result.returncode != 0 or not wheel.is_file():
        tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise InterfaceUnavailable(f"pip could not fetch ai-flow=={version}: {' | '.join(tail)}")
    return wheel


def _imported_modules(source: str, package: str) -> set[str]:
    """Modules under ``package`` that ``source`` imports (absolute imports only, as AIFlow writes)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == package:
                found.update(f"{package}.{a.name}" for a in node.names)
            elif node.module.startswith(package + "."):
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith(package + "."))
    return found


def extract_interface(wheel: Path, dest: Path) -> list[str]:
    """Write the interface module and the ``ai_flow.common`` modules it needs under ``dest``."""
    written: list[str] = []
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        pending = [INTERFACE]
        while pending:
            member = pending.pop()
            if member in written:
                continue
            if member not in names:
                raise InterfaceUnavailable(f"{wheel.name} has no {member}")
            source = zf.read(member).decode("utf-8")
            target = dest / member
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(source, encoding="utf-8")
            written.append(member)
            for module in _imported_modules(source, "ai_flow.common"):
                pending.append(module.replace(".", "/") + ".py")
    for member in written:  # empty __init__.py in every package on the way, never AIFlow's own
        parent = (dest / member).parent
        while parent != dest:
            (parent / "__init__.py").touch()
            parent = parent.parent
    return written


def install(version: str = AIFLOW_VERSION) -> ModuleType:
    """Make ``ai_flow.plugin_interface.blob_manager_interface`` importable and return it."""
    global _installed
    if _installed is None:
        loaded = sys.modules.get("ai_flow")
        if loaded is not None and not str(getattr(loaded, "__file__", "") or "").startswith(
            tempfile.gettempdir()
        ):
            # A real AIFlow is installed and imported: use it as it is.
            return importlib.import_module(INTERFACE_MODULE)
        wheel = fetch_wheel(version)
        root = Path(tempfile.mkdtemp(prefix="aiflow-interface-"))
        atexit.register(shutil.rmtree, root, True)
        extract_interface(wheel, root)
        sys.path.insert(0, str(root))
        _installed = root
    return importlib.import_module(INTERFACE_MODULE)


def sys_path_entry() -> str | None:
    """The directory :func:`install` put on ``sys.path`` (for child processes), if any."""
    return os.fspath(_installed) if _installed is not None else None


__all__ = [
    "AIFLOW_VERSION",
    "InterfaceUnavailable",
    "extract_interface",
    "fetch_wheel",
    "install",
    "sys_path_entry",
]
