"""cas/allocator.py: the arena limit the snapshot command sets."""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_limit_is_taken_exactly_where_glibc_runs() -> None:
    # In a child, so this test process keeps glibc's default.
    code = "from cas.allocator import limit_arenas; print(limit_arenas(), limit_arenas(2))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}).stdout.split()
    glibc = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert out == [str(glibc), str(glibc)]

