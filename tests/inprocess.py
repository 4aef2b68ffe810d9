"""``cas``'s real ``main`` run inside the test process, as ``python -m cas`` would run it, without
a new interpreter's start-up (about 0.7 s of CPU per command on the CI machine).

:func:`run_main` gives ``main`` what a process of its own would have: exactly the environment
given, the working directory given, an empty stdin that is not a terminal, fresh ``sys.stdout``/``sys.stderr`` (with ``.buffer``, in the
encoding and error handling a child process gets) captured as bytes, the root logger without
pytest's handlers (so ``main``'s own handler puts warnings on the captured stderr), Python's
warnings shown on stderr under the interpreter's default filters, an exception in a thread
printed on stderr, ``SystemExit`` (argparse's usage errors) as the exit status, and a timeout
(:class:`Hang`) as ``subprocess.run`` has. Calls are serialised: the environment, the working directory and the streams belong to the whole process.

What only a real process shows stays with tests that start one: argv bytes that are not text,
resource limits, signals, races with another process (tests/hostile/racing.py), a terminal or data on stdin.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import signal
import subprocess
import sys
import threading
import traceback
import warnings
from collections.abc import Iterator, Mapping, Sequence

_LOCK = threading.Lock()
_DEFAULT_FILTERS = (  # a fresh interpreter's, without -W or PYTHONWARNINGS
    ("default", DeprecationWarning, "__main__"),
    ("ignore", DeprecationWarning, ""),
    ("ignore", PendingDeprecationWarning, ""),
    ("ignore", ImportWarning, ""),
    ("ignore", ResourceWarning, ""),
)


class Hang(BaseException):
    """Raised by :func:`deadline` (not an ``Exception``: the code under test must not catch it)."""


@contextlib.contextmanager
def deadline(seconds: float, message: str) -> Iterator[None]:
    """Fail with :class:`Hang` (``message``) instead of hanging: an alarm interrupts what runs
    longer than ``seconds``, as ``subprocess.run(timeout=...)`` would (from the main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def expired(signum: int, frame: object) -> None:
        raise Hang(message)

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def run_main(
    argv: Sequence[str], env: Mapping[str, str], cwd: str | os.PathLike[str], *, timeout: float = 600
) -> tuple[int, bytes, bytes]:
    """``(exit status, stdout, stderr)`` of ``cas ARGV`` run with ``env`` in ``cwd``; :class:`Hang`
    after ``timeout`` seconds."""
    from cas.cli import main

    out, err = io.BytesIO(), io.BytesIO()
    with _LOCK:
        saved_env, saved_cwd = dict(os.environ), os.getcwd()
        saved_streams = sys.stdin, sys.stdout, sys.stderr
        root = logging.getLogger()
        saved_handlers, saved_level = root.handlers[:], root.level
        saved_hook = threading.excepthook
        stdout = io.TextIOWrapper(out, encoding=sys.__stdout__.encoding if sys.__stdout__ else "utf-8",
                                  errors=sys.__stdout__.errors if sys.__stdout__ else "strict", write_through=True)
        stderr = io.TextIOWrapper(err, encoding=stdout.encoding, errors="backslashreplace", write_through=True)

        def thread_died(args: threading.ExceptHookArgs) -> None:
            traceback.print_exception(args.exc_type, args.exc_value, args.exc_traceback, file=stderr)

        os.environ.clear()
        os.environ.update(env)
        os.chdir(cwd)
        sys.stdin, sys.stdout, sys.stderr = io.StringIO(""), stdout, stderr
        root.handlers = []
        threading.excepthook = thread_died
        try:
            with warnings.catch_warnings(), deadline(timeout, f"cas did not finish within {timeout} s"):
                warnings.resetwarnings()
                for action, category, module in reversed(_DEFAULT_FILTERS):
                    warnings.filterwarnings(action, category=category, module=module)
                warnings.showwarning = warnings._showwarning_orig  # type: ignore[attr-defined]  # to sys.stderr
                try:
                    status = main(list(argv))
                except SystemExit as exc:
                    status = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            stdout.flush()
            stderr.flush()
        finally:
            threading.excepthook = saved_hook
            for handler in root.handlers:
                if handler not in saved_handlers:
                    handler.close()
            root.handlers, root.level = saved_handlers, saved_level
            sys.stdin, sys.stdout, sys.stderr = saved_streams
            os.chdir(saved_cwd)
            os.environ.clear()
            os.environ.update(saved_env)
    return status, out.getvalue(), err.getvalue()


def text(data: bytes) -> str:
    """Bytes read from a process as ``subprocess.run(text=True)`` decodes them (universal newlines)."""
    return io.TextIOWrapper(io.BytesIO(data)).read()


def cas(tmp_path: os.PathLike[str], *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """:func:`tests.test_cli.cas` (the environment with ``CAS_HOME`` under ``tmp_path``, no
    ``CAS_REPO``/``CAS_INDEX``, run in ``tmp_path``) through :func:`run_main`."""
    env = {**os.environ, "CAS_HOME": os.path.join(tmp_path, "home")}
    env.pop("CAS_REPO", None)
    env.pop("CAS_INDEX", None)
    status, out, err = run_main(args, env, tmp_path)
    proc = subprocess.CompletedProcess(list(args), status, text(out), text(err))
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc
