"""The C allocator's arenas and its threshold for mapping large blocks, set in a process that takes
snapshots (the ``cas snapshot`` command).

glibc gives a thread that allocates while another thread holds an arena's lock an arena of its own
(up to eight per core), and each arena keeps what was freed in it for its own later use. A snapshot's
encoder and upload threads allocate blob-sized buffers (compressed payloads, index rows) in turn, so
their arenas each end up holding megabytes that the others cannot reuse. Measured on the full-size
first snapshot of the benchmark's ML workload (650 MB, 31,000 files): peak RSS 157 MiB with glibc's
default, 141 MiB with one arena, CPU time unchanged (most allocations are made holding the GIL, so the
threads seldom contend for the arena's lock anyway).

glibc also maps blocks above a threshold (128 KiB at first) on their own and unmaps them when freed,
but raises that threshold to the size of each such block freed (up to 32 MiB), and its heap's trim
threshold to twice that. A snapshot's read buffer (a block and its carried chunk, 12 MiB) freed once
makes every later buffer of that size come from the heap, which keeps it after it is freed. A fixed
threshold stops that: blocks of :data:`MAP_ABOVE` or more are always mapped and returned, smaller ones
(chunks, payloads: at most ``chunk_max``, 4 MiB by default) reuse the heap as before. Fixing it also
fixes the trim threshold, at 128 KiB unless set: the heap would then shrink and grow again around
every few chunks (3% more CPU for a 1 GiB file), so it is set to twice :data:`MAP_ABOVE`, as glibc's
own rule would have it. Measured, the benchmark's ML first snapshot: peak RSS 92.6 MiB, now 87.9
(median of 8 runs, the operating system's account of the process), time unchanged (0.94x, 12 pairs).

Only the command line calls this: a library should not change the allocator of the program it is in.
"""

from __future__ import annotations

import sys

_M_ARENA_MAX = -8
_M_MMAP_THRESHOLD = -3
_M_TRIM_THRESHOLD = -1
"""``mallopt``'s parameter numbers for the arena limit and the mapping and trim thresholds (glibc's
``malloc.h``)."""

MAP_ABOVE = 8 * 1024 * 1024
"""Blocks this large or larger are mapped on their own: a read buffer (8 MiB and a carried chunk),
not a chunk or its payload (at most 4 MiB with the default ``chunk_max``)."""


def limit_arenas(count: int = 1) -> bool:
    """Allow at most ``count`` malloc arenas from now on, map blocks of :data:`MAP_ABOVE` bytes or
    more on their own, and trim the heap only when twice that is free at its top; True if the C
    library took the settings (glibc on Linux), False where there are no such settings (other
    systems and C libraries)."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        libc = ctypes.CDLL(None)
        if not hasattr(libc, "gnu_get_libc_version"):  # musl and others: no M_ARENA_MAX
            return False
        return (bool(libc.mallopt(_M_ARENA_MAX, count)) and bool(libc.mallopt(_M_MMAP_THRESHOLD, MAP_ABOVE))
                and bool(libc.mallopt(_M_TRIM_THRESHOLD, 2 * MAP_ABOVE)))
    except OSError:
        return False
