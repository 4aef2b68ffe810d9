"""cas/allocator.py: the arena limit and the mapping threshold the snapshot command sets."""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_the_limit_is_taken_exactly_where_glibc_runs() -> None:
    # In a child, so this test process keeps glibc's default.
    code = "from cas.allocator import limit_arenas; print(limit_arenas(), limit_arenas(2))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}).stdout.split()
    glibc = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert out == [str(glibc), str(glibc)]


def _kept_after_reuse(limit: bool) -> int:
    """KiB of anonymous memory a child still holds after allocating, freeing, allocating again and
    freeing a snapshot's read buffer (a 12 MiB block), with or without the snapshot's settings."""
    code = (
        "import sys\n"
        "from cas.allocator import limit_arenas\n"
        f"if {limit}: limit_arenas()\n"
        "def anon(): return int(open('/proc/self/status').read().split('RssAnon:')[1].split()[0])\n"
        "base = anon()\n"
        "a = bytearray(12 << 20); del a\n"
        "b = bytearray(12 << 20); del b\n"
        "print(anon() - base)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}).stdout
    return int(out)


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc", reason="glibc's allocator")
def test_a_freed_read_buffer_is_returned_to_the_system_every_time() -> None:
    # glibc's default raises its mapping threshold past a large block once one is freed: the second
    # block then comes from the heap and stays resident after it is freed. The fixed threshold maps
    # and unmaps it each time.
    assert _kept_after_reuse(False) >= 10 * 1024
    assert _kept_after_reuse(True) < 2 * 1024
