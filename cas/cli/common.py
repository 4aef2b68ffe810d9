"""What every command shares: exit statuses, output (text or ``--json``), the progress line, and
where the repository's passphrase comes from."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from cas import passphrase

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_PARTIAL = 3


def emit(args: argparse.Namespace, data: object, text: str) -> None:
    if args.json:
        sys.stdout.write(json.dumps(data, indent=None, sort_keys=True) + "\n")
    elif text:
        sys.stdout.write(text + ("" if text.endswith("\n") else "\n"))

@contextmanager
def progress_bar(args: argparse.Namespace, what: str) -> Iterator[Callable[[int, int], None] | None]:
    """A rich progress line on a terminal; nothing with --json, --quiet or when piped."""
    if args.json or args.quiet or not sys.stderr.isatty():
        yield None
        return
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TransferSpeedColumn

    columns = (TextColumn(f"{what} [bold]{{task.fields[files]}}[/] files"), BarColumn(bar_width=None),
               TextColumn("{task.completed:,.0f} B"), TransferSpeedColumn(), TimeElapsedColumn())
    with Progress(*columns, transient=True, refresh_per_second=8) as bar:
        task = bar.add_task(what, total=None, files=0)
        shown = [0.0]

        def update(files: int, nbytes: int) -> None:
            # Called for every file: the bar is told at most as often as it is drawn (a rich update
            # takes microseconds, which a restore of many small files would pay on its walk).
            now = time.monotonic()
            if now - shown[0] >= 1 / 16:
                shown[0] = now
                bar.update(task, completed=nbytes, files=files)

        yield update

def password(args: argparse.Namespace) -> Callable[[], str]:
    """The repository's passphrase, looked for only if it is encrypted (cas/passphrase.py)."""
    if not hasattr(args, "_password_source"):
        args._password_source = passphrase.source(args.password_file, prompt="repository passphrase")
    return args._password_source  # type: ignore[no-any-return]
