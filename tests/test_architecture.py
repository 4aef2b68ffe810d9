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
