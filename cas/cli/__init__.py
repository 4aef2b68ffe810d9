"""The ``cas`` command line. Every failure is one line on stderr and a non-zero exit status.

Exit status: 0 success, 1 a cas error (not found, integrity, refused...), 2 bad usage,
3 a restore that finished with some entries failed, 70 an internal error (a bug in cas: the line
says so; ``CAS_DEBUG=1`` shows the traceback), 130 interrupted.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from cas.cli.browse import cmd_cat, cmd_diff, cmd_find, cmd_log, cmd_ls, cmd_stats
from cas.cli.common import EXIT_ERROR, EXIT_PARTIAL, EXIT_USAGE, password
from cas.cli.data import cmd_copy, cmd_mount, cmd_prefetch, cmd_restore, cmd_snapshot, hash_destination_early
from cas.cli.interrupt import EXIT_INTERRUPTED, interruptible
from cas.cli.maintain import (
    cmd_forget,
    cmd_gc,
    cmd_rebuild_index,
    cmd_repair,
    cmd_verify,
    rebuild_index_command,
)
from cas.cli.parser import build_parser
from cas.cli.setup import cmd_cache, cmd_init, cmd_key
from cas.errors import CasError, PartialRestore
from cas.terminal import EscapingFormatter, escape

# What only some commands need is imported by their handlers, so each command pays for its own
# imports alone (``cas --help`` loads no SQL; ``cas log`` none of snapshot's or restore's modules).
if TYPE_CHECKING:
    from cas.store import Store

__all__ = ["EXIT_ERROR", "EXIT_PARTIAL", "EXIT_USAGE", "build_parser", "main"]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(EscapingFormatter("cas: warning: %(message)s"))
    logging.basicConfig(level=logging.ERROR if (args.quiet or args.json) else logging.WARNING, handlers=[handler])
    try:
        with interruptible():
            return _run(args)
    except PartialRestore as exc:
        error_line(str(exc))
        if not args.quiet:
            for _path, message in exc.failures[5:50]:
                sys.stderr.write(f"cas:   {escape(message)}\n")
        return EXIT_PARTIAL
    except CasError as exc:
        error_line(str(exc))
        return EXIT_ERROR
    except KeyboardInterrupt:
        error_line("interrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return EXIT_ERROR
    except OSError as exc:
        error_line(f"{exc.filename + ': ' if exc.filename else ''}{exc.strerror or exc}")
        return EXIT_ERROR
    except Exception as exc:  # last resort: never a traceback unless asked
        if os.environ.get("CAS_DEBUG"):
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        error_line(f"internal error: {type(exc).__name__}: {first} (set CAS_DEBUG=1 for a traceback)")
        return 70

def error_line(message: str) -> None:
    """One line on stderr. Names in messages come from repositories and file systems, so anything
    unprintable (newlines, terminal escapes) is shown escaped instead of cutting or driving the line."""
    sys.stderr.write(f"cas: error: {escape(message.strip()) or 'error'}\n")

def _run(args: argparse.Namespace) -> int:
    if args.command == "aiflow":  # AIFlow bridge: opens the repository its config names, not --repo's
        from cas.aiflow import cli as aiflow_cli

        return aiflow_cli.run(args)
    if args.command == "rebuild-index":
        return rebuild_index_command(args)
    if args.command == "cache":  # this host's caches: no repository needed
        return cmd_cache(args)
    if args.command == "init":
        return cmd_init(args)
    if args.command == "restore":
        hash_destination_early(args)
    # The engine's modules make some 10^5 objects that live as long as the process: import them with
    # the cycle collector paused, then freeze them out of its later passes (less CPU, same behaviour).
    gc.disable()
    try:
        from cas.store import Store
    finally:
        gc.enable()
    gc.freeze()
    # Fewer passes over what a command makes as it goes (a restore's entries, a snapshot's rows):
    # a fresh restore of 100,000 small files took 0.93x the wall time with these (4 paired runs).
    gc.set_threshold(20_000, 20, 100)
    with Store.open(args.repo, index=args.index, chunk_cache_max=args.cache_max, password=password(args)) as store:
        handler: Callable[[Store, argparse.Namespace], int] = COMMANDS[args.command]
        return handler(store, args)

COMMANDS: dict[str, Callable[[Store, argparse.Namespace], int]] = {
    "forget": cmd_forget,
    "gc": cmd_gc,
    "verify": cmd_verify,
    "rebuild-index": cmd_rebuild_index,
    "repair": cmd_repair,
    "snapshot": cmd_snapshot,
    "log": cmd_log,
    "ls": cmd_ls,
    "diff": cmd_diff,
    "find": cmd_find,
    "cat": cmd_cat,
    "restore": cmd_restore,
    "copy": cmd_copy,
    "stats": cmd_stats,
    "mount": cmd_mount,
    "prefetch": cmd_prefetch,
    "key": cmd_key,
}


if __name__ == "__main__":
    raise SystemExit(main())
