"""When a file in a restore's destination has *settled*: unchanged for long enough that any later
write to it gives it another ctime, so that its content, once hashed, is known for as long as its
identity (inode, size, mtime, ctime) stays the same.

Its own module, importing nothing of the engine, for :mod:`cas.ops.restore.hash_ahead`'s child to
be started before the engine loads (see :func:`cas.ops.restore.hash_ahead.start_early`).
"""

from __future__ import annotations


def settled_ns() -> int:
    """How long a file must have gone unchanged (by its ctime) for any later write to give it
    another ctime. A write through a shared mapping sets the times only at the first write to a
    page that is clean (write-protected); a page stays dirty, and writable without a fault, until
    writeback has taken it: up to the kernel's dirty expiry plus one flusher period. A ctime older
    than that, and than the coarsest timestamps (2 s, FAT), means no page is dirty from before."""
    period = 0
    for name, default in (("dirty_expire_centisecs", 3000), ("dirty_writeback_centisecs", 500)):
        try:
            with open(f"/proc/sys/vm/{name}", encoding="ascii") as f:
                value = int(f.read().strip())
        except (OSError, ValueError):
            value = default
        if value <= 0 and name == "dirty_writeback_centisecs":
            return 1 << 62  # no periodic writeback: a page may stay dirty for ever, nothing settles
        period += max(value, 0)
    return period * 10**7 + 10 * 10**9


#: A file whose ctime is at least this old when it is hashed has settled (see :func:`settled_ns`;
#: 45 s with the kernel's default writeback settings).
SETTLED_NS = settled_ns()
