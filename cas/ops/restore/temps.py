"""Whose a restore's temporaries are.

A restore writes each file to a temporary beside it, named ``.cas-tmp-<host>-<pid>-<random>-<n>``,
and renames it into place. Another restore into the same directory removes such a file only when
its owner is gone: made on this host by a process that is no longer alive or, made elsewhere (or by
an older cas), over a day old. So concurrent restores into one directory never remove each other's.
"""

from __future__ import annotations

import os
import socket
import time

from cas.format.hashing import hexdigest

TMP_PREFIX = ".cas-tmp-"
_FOREIGN_TMP_AGE_NS = 24 * 3600 * 10**9
_HOST = hexdigest(socket.gethostname().encode("utf-8", "surrogateescape"))[:8]


def temporary_tag() -> str:
    """The part of a temporary's name that says who made it: ``<host>-<pid>-<random>``."""
    return f"{_HOST}-{os.getpid()}-{os.urandom(4).hex()}"


def is_abandoned(name: str, st: os.stat_result) -> bool:
    """Whether a temporary's owner is gone: made on this host by a process no longer alive, or
    elsewhere (or by an older cas) and over a day old. A live owner's temporary is never abandoned."""
    parts = name[len(TMP_PREFIX):].split("-")
    if len(parts) >= 3 and parts[0] == _HOST and parts[1].isdigit():
        return not _alive(int(parts[1]))
    return time.time_ns() - st.st_mtime_ns > _FOREIGN_TMP_AGE_NS


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True
