"""Where cas keeps this host's state (caches, locks): ``$CAS_HOME``, by default ``~/.cas``.

Its own module, importing nothing of the engine: the command line asks before the engine loads
(see :func:`cas.ops.restore.hash_ahead.start_early`)."""

from __future__ import annotations

import os


def default_home() -> str:
    return os.path.abspath(os.path.expanduser(os.environ.get("CAS_HOME") or "~/.cas"))
