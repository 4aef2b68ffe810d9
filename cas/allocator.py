"""The C allocator's arenas, limited in a process that takes snapshots (the ``cas snapshot`` command).

glibc gives a thread that allocates while another thread holds an arena's lock an arena of its own
(up to eight per core), and each arena keeps what was freed in it for its own later use. A snapshot's
encoder and upload threads allocate blob-sized buffers (compressed payloads, index rows) in turn, so
their arenas each end up holding megabytes that the others cannot reuse. Measured on the full-size
first snapshot of the benchmark's ML workload (650 MB, 31,000 files): peak RSS 157 MiB with glibc's
default, 141 MiB with one arena, CPU time unchanged (most allocations are made holding the GIL, so the
threads seldom contend for the arena's lock anyway).

Only the command line calls this: a library should not change the allocator of the program it is in.
"""

from __future__ import annotations

import sys

_M_ARENA_MAX = -8
"""``mallopt``'s parameter number for the arena limit (glibc's ``malloc.h``)."""


def limit_arenas(count: int = 1) -> bool:
    """Allow at most ``count`` malloc arenas from now on; True if the C library took the setting
    (glibc on Linux), False where there is no such setting (other systems and C libraries)."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        libc = ctypes.CDLL(None)
        if not hasattr(libc, "gnu_get_libc_version"):  # musl and others: no M_ARENA_MAX
            return False
        return bool(libc.mallopt(_M_ARENA_MAX, count))
    except OSError:
        return False
