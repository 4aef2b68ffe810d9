"""How a restore starts its helper processes (:mod:`~cas.ops.restore.delete_process`'s remover,
:mod:`~cas.ops.restore.hash_ahead`'s hasher, :mod:`~cas.ops.restore.write_process`'s writer):
this interpreter, isolated (``-I``: no script directory, no ``PYTHON*`` variables, no user site on
the path), with this process's ``cas`` first on its path, whatever the working directory holds.

Only when ``sys.executable`` is a Python interpreter: a process embedded in another program (uWSGI,
a frozen executable) has that program there, which would not run the child's code (and might not
exit). The restore then does the helpers' work itself.
"""

from __future__ import annotations

import os
import re
import sys
from concurrent.futures import Future
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

_INTERPRETER = re.compile(r"(python|pypy)[0-9.]*(\.exe)?", re.IGNORECASE)


def child_command(code: str, *args: str) -> list[str] | None:
    """The command running ``code`` in a child interpreter with ``args`` (after the package's
    root, its ``sys.argv[1]``), or None when there is no interpreter to run."""
    executable = sys.executable
    if not executable or getattr(sys, "frozen", False):
        return None
    if not _INTERPRETER.fullmatch(os.path.basename(executable)):
        return None
    package_root = str(Path(__file__).resolve().parents[__name__.count(".")])  # above cas/, at any depth
    return [executable, "-I", "-c", code, package_root, *args]


def chain(source: Future[T], target: Future[T]) -> None:
    """Give ``target`` the outcome of ``source`` once it has one (a helper's work done by its
    fallback in this process instead)."""
    def done(f: Future[T]) -> None:
        error = f.exception()
        if error is not None:
            target.set_exception(error)
        else:
            target.set_result(f.result())

    source.add_done_callback(done)
