"""The ``cas`` command line. Every failure is one line on stderr and a non-zero exit status.

Exit status: 0 success, 1 a cas error (not found, integrity, refused...), 2 bad usage,
3 a restore that finished with some entries failed, 70 an internal error (a bug in cas: the line
says so; ``CAS_DEBUG=1`` shows the traceback), 130 interrupted.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from cas import passphrase
from cas.errors import CasError, ConfigurationError, PartialRestore
from cas.format.config import ChunkerName
from cas.options import LabelAction, duration_option, limit_option, parse_labels, size_option, when_option
from cas.terminal import EscapingFormatter, escape, human_size, quote_name
from cas.types import OnChange

# What only some commands need is imported by their handlers, so each command pays for its own
# imports alone (``cas --help`` loads no SQL; ``cas log`` none of snapshot's or restore's modules).
if TYPE_CHECKING:
    from cas.ops.snapshot_filter import SnapshotFilter
    from cas.store import Store

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_PARTIAL = 3


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"cas: {message} (see 'cas --help')\n")
        raise SystemExit(EXIT_USAGE)


class _RefusePassword(argparse.Action):
    """``--password`` is refused without echoing its value: a passphrase on the command line is
    visible to every user of the host (``ps``). Defined so it is not taken as ``--password-file``."""

    def __call__(self, parser: argparse.ArgumentParser, *args: object, **kwargs: object) -> None:
        parser.error("a passphrase is never a command-line argument (anyone on the host can see those): "
                     "use CAS_PASSWORD, --password-file FILE or the prompt")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="cas", description="Content-addressed, deduplicated artifact store for ML workflows.")
    p.add_argument("--repo", default=os.environ.get("CAS_REPO"), help="repository URL or path (env CAS_REPO)")
    p.add_argument("--index", default=os.environ.get("CAS_INDEX"), help="SQLAlchemy URL of the index (env CAS_INDEX)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress or warnings")
    p.add_argument("--cache-max", type=size_option, default=None, metavar="SIZE",
                   help="cap of this host's chunk cache, e.g. 10GiB (env CAS_CACHE_MAX; default: 10 GiB or a "
                   "tenth of the free disk space, whichever is smaller)")
    p.add_argument("--password-file", default=None, metavar="FILE",
                   help="an encrypted repository's passphrase: the first line of FILE (else env CAS_PASSWORD, "
                   "else a prompt on a terminal)")
    p.add_argument("--password", nargs="?", action=_RefusePassword, help=argparse.SUPPRESS)
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    s = sub.add_parser("snapshot", help="store a directory (or file) under an execution ID")
    s.add_argument("path")
    s.add_argument("--execution-id", "-e", required=True)
    s.add_argument("--label", "-l", action="append", default=[], metavar="KEY=VALUE")
    s.add_argument("--no-files-cache", action="store_true", help="read every file even if unchanged")
    s.add_argument("--files-cache-ttl", type=duration_option, default=os.environ.get("CAS_FILES_CACHE_TTL"),
                   metavar="DURATION", help="forget files-cache entries of paths no snapshot has seen for this "
                   "long (env CAS_FILES_CACHE_TTL; default 30d)")
    s.add_argument(
        "--on-change", choices=[c.value for c in OnChange], default=OnChange.WARN.value,
        help="a file that keeps changing while it is read (after 3 re-reads): store it as last read with a "
        "warning (warn, the default), re-read it for up to ~10 s and fail if it never holds still (retry), "
        "or fail (fail)",
    )
    s.add_argument(
        "--chunker", choices=[c.value for c in ChunkerName], default=None,
        help="how to cut files into chunks (default: the repository's own; fastcdc-archives-1 cuts zips, tars "
        "and safetensors files at their members, and is the default of repositories created since it exists)",
    )
    _add_snapshot_filter(s)

    s = sub.add_parser("log", help="executions, newest first")
    _add_filters(s, "list")
    s.add_argument("--limit", type=limit_option, default=None, metavar="N", help="at most the newest N that match")

    s = sub.add_parser("ls", help="list a stored tree")
    s.add_argument("execution_id")
    s.add_argument("path", nargs="?", default="")
    s.add_argument("--recursive", "-r", action="store_true")
    _add_tree_filter(s, "list")

    s = sub.add_parser("diff", help="paths added, removed or changed between two executions")
    s.add_argument("old")
    s.add_argument("new")

    s = sub.add_parser("find", help="files matching a pattern or a digest, in every execution, newest first")
    s.add_argument("pattern", nargs="?", default=None,
                   help="glob on the path: without '/' it matches the file name at any depth (like find -name), "
                   "with '/' the whole path from the root; '**' spans directories")
    s.add_argument("--digest", default=None, metavar="HEX", help="only files with this content (BLAKE3)")
    s.add_argument("--execution-id", "-e", action="append", default=None, metavar="ID",
                   help="search this execution (repeatable; default all)")
    _add_filters(s, "search")
    s.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output")

    s = sub.add_parser("cat", help="write one stored file to stdout")
    s.add_argument("execution_id")
    s.add_argument("path")

    s = sub.add_parser("restore", help="restore an execution, or one path of it, into a directory")
    s.add_argument("execution_id")
    s.add_argument("dest")
    s.add_argument("--path", default=None, help="restore only this file or subtree, as DEST/<its name>")
    s.add_argument("--overwrite", action="store_true",
                   help="restore into a non-empty directory, writing only entries that differ")
    s.add_argument("--delete", action="store_true", help="with --overwrite: remove what the execution lacks")
    s.add_argument("--trust-mtime", action="store_true",
                   help="with --overwrite: take a file of the right size and mtime as unchanged without reading it")
    s.add_argument("--in-place", action="store_true",
                   help="with --overwrite: patch a mostly unchanged file where it is (less to write; not atomic: "
                   "a reader or a crash may see it partly updated)")
    s.add_argument("--same-permissions", action="store_true", help="keep setuid/setgid bits")
    _add_tree_filter(s, "restore")

    s = sub.add_parser("copy", help="copy executions to another repository, sending only what it lacks")
    s.add_argument("execution_ids", nargs="*", metavar="ID")
    s.add_argument("--to", required=True, metavar="URL", help="the target repository (created if missing)")
    s.add_argument("--to-index", default=None, metavar="URL", help="the target's index (default: one per host)")
    s.add_argument("--label", "-l", action=LabelAction, default={}, metavar="KEY=VALUE",
                   help="also copy every snapshot carrying this label (repeatable: all must match)")
    s.add_argument("--to-password-file", default=None, metavar="FILE",
                   help="the target's passphrase, if it is (or, new, will be) encrypted: the first line of FILE "
                   "(else env CAS_TO_PASSWORD, else the source's passphrase)")

    sub.add_parser("stats", help="logical and stored bytes, dedup ratio, chunk and pack counts")

    s = sub.add_parser("forget", help="remove snapshots (their data is freed by 'cas gc')")
    s.add_argument("execution_ids", nargs="*")
    s.add_argument("--keep-last", type=int, default=None, metavar="N", help="forget all but the newest N")
    s.add_argument("--keep-within", type=duration_option, default=None, metavar="DURATION", help="keep snapshots newer than e.g. 30d, 12h")
    s.add_argument("--keep-label", action=LabelAction, default={}, metavar="KEY=VALUE",
                   help="never forget a snapshot carrying this label (repeatable: any of them keeps it)")
    _add_filters(s, "forget")
    s.add_argument("--dry-run", action="store_true", help="say what would be forgotten")

    s = sub.add_parser("gc", help="free packs no snapshot references (safe while snapshots are written)")
    s.add_argument("--dry-run", action="store_true", help="say what would be freed, and why")
    s.add_argument("--grace", type=duration_option, default="1h", metavar="DURATION", help="never touch packs younger than this (default 1h)")

    s = sub.add_parser("verify", help="check snapshots, index and packs; non-zero exit if anything is wrong")
    s.add_argument("--read-data", action="store_true", help="download and re-hash stored data")
    s.add_argument("--sample", default=None, metavar="PERCENT", help="with --read-data: check only this share of packs")

    s = sub.add_parser("rebuild-index", help="rebuild the index from the backend alone")
    s.add_argument("--sync", action="store_true", help="only add what the index lacks instead of starting over")

    s = sub.add_parser("repair", help="fix what verify finds, without deleting stored data")
    s.add_argument("--read-data", action="store_true")

    s = sub.add_parser("mount", help="serve executions read-only at MOUNTPOINT through FUSE, until Ctrl-C or 'fusermount -u'")
    s.add_argument("mountpoint")
    s.add_argument("--execution", "-e", action="append", default=None, metavar="ID",
                   help="serve only this execution (repeatable; default: every execution, new ones included)")
    # -- chunk cache and prefetch (issue 14) --
    s = sub.add_parser("prefetch", help="fill this host's chunk cache with what executions need")
    s.add_argument("execution_ids", nargs="+", metavar="ID")
    s = sub.add_parser("cache", help="this host's chunk cache and files caches: size, cap, entries, hit rate")
    actions = s.add_subparsers(dest="cache_action", parser_class=_Parser)
    a = actions.add_parser("prune", help="evict least recently used chunks down to the cap (or --max-size), "
                           "drop files-cache entries not seen for --files-cache-ttl, remove leftovers")
    a.add_argument("--max-size", type=size_option, default=None, metavar="SIZE")
    a.add_argument("--files-cache-ttl", type=duration_option, default=os.environ.get("CAS_FILES_CACHE_TTL"),
                   metavar="DURATION", help="env CAS_FILES_CACHE_TTL; default 30d")
    actions.add_parser("clear", help="remove every cached chunk and the files caches")
    # -- end chunk cache and prefetch --

    # -- client-side encryption (issue 18): cas init, cas key --
    s = sub.add_parser("init", help="create a repository (encrypted with --encrypt)")
    s.add_argument("--encrypt", action="store_true",
                   help="encrypt every object on the backend with a master key opened by passphrases")
    s.add_argument("--kdf-cost", type=int, default=None, metavar="N",
                   help="scrypt cost of the first passphrase key, N = 2**N (10..18; default 17: 128 MiB, ~0.3 s of CPU)")
    s.add_argument("--chunker", choices=[c.value for c in ChunkerName], default=None,
                   help="how the repository cuts files by default")
    s = sub.add_parser("key", help="an encrypted repository's passphrases: list, add, remove")
    actions = s.add_subparsers(dest="key_action", required=True, parser_class=_Parser)
    actions.add_parser("list", help="the keys, the one this passphrase opened marked current")
    a = actions.add_parser("add", help="let another passphrase open the repository (from --new-password-file, "
                           "env CAS_NEW_PASSWORD or a prompt)")
    a.add_argument("--new-password-file", default=None, metavar="FILE")
    a.add_argument("--kdf-cost", type=int, default=None, metavar="N", help="scrypt cost, N = 2**N (10..18; default 17)")
    a = actions.add_parser("remove", help="remove a key (never the last, nor the one opened by this passphrase)")
    a.add_argument("key_id", metavar="ID")
    # -- end client-side encryption --

    # -- AIFlow bridge commands (cas/aiflow/cli.py): `cas aiflow check|upload|download|...` --
    from cas.aiflow import cli as aiflow_cli

    aiflow_cli.add_parser(sub)
    # -- end AIFlow bridge commands --
    return p


def _add_filters(s: argparse.ArgumentParser, verb: str) -> None:
    s.add_argument("--label", "-l", action=LabelAction, default={}, metavar="KEY=VALUE",
                   help=f"{verb} only snapshots carrying this label (repeatable: all must match)")
    s.add_argument("--since", type=when_option, default=None, metavar="WHEN",
                   help=f"{verb} only snapshots taken at WHEN or later: an ISO date or time (UTC unless it has an "
                   "offset), e.g. 2026-11-25, 2026-11-25T10:00, or a duration ago, e.g. 30d, 12h")
    s.add_argument("--until", type=when_option, default=None, metavar="WHEN",
                   help=f"{verb} only snapshots taken before WHEN (same forms as --since)")


def _add_snapshot_filter(s: argparse.ArgumentParser) -> None:
    s.add_argument("--exclude", action="append", default=[], metavar="PATTERN",
                   help="leave out what this gitignore-style pattern, relative to PATH, matches (repeatable)")
    s.add_argument("--include", action="append", default=[], metavar="PATTERN",
                   help="store only what these gitignore-style patterns match, and the directories leading to it "
                   "(repeatable); exclusions still apply within it")
    s.add_argument("--ignore-file", action="append", default=[], metavar="FILE",
                   help="also read ignore patterns from FILE, relative to PATH, below every .casignore in precedence "
                   "(repeatable)")
    s.add_argument("--no-ignore-files", action="store_true", help="do not honour .casignore files in the tree")
    s.add_argument("--exclude-larger-than", type=size_option, default=None, metavar="SIZE",
                   help="leave out files larger than SIZE, e.g. 500M, 2G (units of 1024)")
    s.add_argument("--one-file-system", "-x", action="store_true",
                   help="do not enter other file systems (mount points are stored as empty directories)")


def _snapshot_filter(args: argparse.Namespace) -> SnapshotFilter:
    from cas.ops.snapshot_filter import SnapshotFilter

    return SnapshotFilter(exclude=args.exclude, include=args.include, ignore_files=not args.no_ignore_files,
                          extra_ignore_files=args.ignore_file, exclude_larger_than=args.exclude_larger_than,
                          one_file_system=args.one_file_system)


def _add_tree_filter(s: argparse.ArgumentParser, verb: str) -> None:
    s.add_argument("--include", action="append", default=[], metavar="PATTERN",
                   help=f"{verb} only what these gitignore-style patterns, relative to the snapshot's root, match, and "
                   "the directories leading to it (repeatable)")
    s.add_argument("--exclude", action="append", default=[], metavar="PATTERN",
                   help=f"do not {verb} what this gitignore-style pattern matches (repeatable; wins over --include)")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(EscapingFormatter("cas: warning: %(message)s"))
    logging.basicConfig(level=logging.ERROR if (args.quiet or args.json) else logging.WARNING, handlers=[handler])
    try:
        return _run(args)
    except PartialRestore as exc:
        _error(str(exc))
        if not args.quiet:
            for _path, message in exc.failures[5:50]:
                sys.stderr.write(f"cas:   {escape(message)}\n")
        return EXIT_PARTIAL
    except CasError as exc:
        _error(str(exc))
        return EXIT_ERROR
    except KeyboardInterrupt:
        _error("interrupted")
        return 130
    except BrokenPipeError:
        return EXIT_ERROR
    except OSError as exc:
        _error(f"{exc.filename + ': ' if exc.filename else ''}{exc.strerror or exc}")
        return EXIT_ERROR
    except Exception as exc:  # noqa: BLE001 - last resort: never a traceback unless asked
        if os.environ.get("CAS_DEBUG"):
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        _error(f"internal error: {type(exc).__name__}: {first} (set CAS_DEBUG=1 for a traceback)")
        return 70


def _error(message: str) -> None:
    """One line on stderr. Names in messages come from repositories and file systems, so anything
    unprintable (newlines, terminal escapes) is shown escaped instead of cutting or driving the line."""
    sys.stderr.write(f"cas: error: {escape(message.strip()) or 'error'}\n")


def _run(args: argparse.Namespace) -> int:
    if args.command == "aiflow":  # AIFlow bridge: opens the repository its config names, not --repo's
        from cas.aiflow import cli as aiflow_cli

        return aiflow_cli.run(args)
    if args.command == "rebuild-index":
        return _rebuild_index(args)
    if args.command == "cache":  # this host's caches: no repository needed
        return cmd_cache(args)
    if args.command == "init":
        return cmd_init(args)
    # The engine's modules make some 10^5 objects that live as long as the process: import them with
    # the cycle collector paused, then freeze them out of its later passes (less CPU, same behaviour).
    gc.disable()
    try:
        from cas.store import Store
    finally:
        gc.enable()
    gc.freeze()
    with Store.open(args.repo, index=args.index, chunk_cache_max=args.cache_max, password=_password(args)) as store:
        handler: Callable[[Store, argparse.Namespace], int] = _COMMANDS[args.command]
        return handler(store, args)


def _emit(args: argparse.Namespace, data: object, text: str) -> None:
    if args.json:
        sys.stdout.write(json.dumps(data, indent=None, sort_keys=True) + "\n")
    elif text:
        sys.stdout.write(text + ("" if text.endswith("\n") else "\n"))


@contextmanager
def _progress(args: argparse.Namespace, what: str) -> Iterator[Callable[[int, int], None] | None]:
    """A rich progress line on a terminal; nothing with --json, --quiet or when piped."""
    if args.json or args.quiet or not sys.stderr.isatty():
        yield None
        return
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TransferSpeedColumn

    columns = (TextColumn(f"{what} [bold]{{task.fields[files]}}[/] files"), BarColumn(bar_width=None),
               TextColumn("{task.completed:,.0f} B"), TransferSpeedColumn(), TimeElapsedColumn())
    with Progress(*columns, transient=True, refresh_per_second=8) as bar:
        task = bar.add_task(what, total=None, files=0)

        def update(files: int, nbytes: int) -> None:
            bar.update(task, completed=nbytes, files=files)

        yield update


def cmd_snapshot(store: Store, args: argparse.Namespace) -> int:
    labels = parse_labels(args.label)
    with _progress(args, "snapshot") as progress:
        snap = store.snapshot(
            args.path, args.execution_id, labels=labels, use_files_cache=not args.no_files_cache, progress=progress,
            on_change=args.on_change, chunker=args.chunker, filter=_snapshot_filter(args),
            files_cache_ttl=args.files_cache_ttl,
        )
    st = snap.stats
    text = (
        f"snapshot {snap.execution_id}: {st.get('files', 0)} files, {human_size(st.get('logical_bytes', 0))} "
        f"({human_size(st.get('new_bytes', 0))} new, {human_size(st.get('stored_bytes', 0))} stored after compression)"
    )
    if st.get("excluded"):
        count = st["excluded"]
        text += f"; {count} {'entry' if count == 1 else 'entries'} excluded ({human_size(st.get('excluded_bytes', 0))} in files)"
    _emit(args, snap.to_dict(), text)
    return 0


def cmd_log(store: Store, args: argparse.Namespace) -> int:
    snaps = store.list(labels=args.label, since=args.since, until=args.until, limit=args.limit)
    lines = [f"{'EXECUTION':<24} {'TIME (UTC)':<20} {'FILES':>7} {'LOGICAL':>11} {'NEW':>11}  LABELS"]
    import datetime as dt

    for s in snaps:
        when = dt.datetime.fromtimestamp(s.time_ns / 1e9, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        labels = escape(",".join(f"{k}={v}" for k, v in sorted(s.labels.items())))
        if s.damaged:
            labels = "DAMAGED " + labels
        lines.append(
            f"{quote_name(s.execution_id):<24} {when:<20} {s.stats.get('files', 0):>7} {human_size(s.logical_bytes):>11} "
            f"{human_size(s.new_bytes):>11}  {labels}"
        )
    _emit(args, [s.to_dict() for s in snaps], "\n".join(lines) if snaps else "no snapshots")
    return 0


def cmd_ls(store: Store, args: argparse.Namespace) -> int:
    from cas.format.trees import DIR, FILE, SYMLINK
    from cas.ops.tree_filter import TreeFilter

    rows = []
    lines = []
    tree_filter = TreeFilter(include=args.include, exclude=args.exclude)
    for path, e in store.ls(args.execution_id, args.path, recursive=args.recursive, filter=tree_filter):
        row = {"path": path, "type": e.type, "mode": e.mode, "mtime_ns": e.mtime_ns}
        if e.type == FILE:
            row.update(size=e.size, digest=e.digest)
        elif e.type == SYMLINK:
            row["target"] = e.target
        rows.append(row)
        kind = {FILE: "-", DIR: "d", SYMLINK: "l"}[e.type]
        suffix = f" -> {quote_name(e.target)}" if e.type == SYMLINK else ("/" if e.type == DIR else "")
        lines.append(f"{kind}{e.mode:04o} {e.size if e.type == FILE else 0:>12}  {quote_name(path)}{suffix}")
    _emit(args, rows, "\n".join(lines))
    return 0


def cmd_diff(store: Store, args: argparse.Namespace) -> int:
    changes = store.diff(args.old, args.new)
    marks = {"added": "+", "removed": "-", "changed": "M"}
    _emit(
        args,
        [{"path": c.path, "change": c.kind} for c in changes],
        "\n".join(f"{marks[c.kind]} {quote_name(c.path)}" for c in changes) or "no differences",
    )
    return 0


def cmd_find(store: Store, args: argparse.Namespace) -> int:
    if args.pattern is None and args.digest is None:
        raise ConfigurationError("find needs a PATTERN, --digest HEX, or both")
    found = store.find(args.pattern, digest=args.digest, execution_ids=args.execution_id, labels=args.label,
                       since=args.since, until=args.until)
    # Streamed, one execution at a time: a search over many executions may list millions of files.
    # Each run of matches (shared by the executions holding it) becomes text once, as bytes; an
    # execution's text is then made in one pass: its lines joined with its ID before each.
    sys.stdout.flush()
    out = sys.stdout.buffer
    encoding, errors = sys.stdout.encoding, sys.stdout.errors or "strict"
    made: dict[int, tuple[list, list[bytes]]] = {}  # id(run): the run (kept, so the id stays its own), its text
    any_found = False
    if args.json:
        from json.encoder import encode_basestring_ascii as json_string  # what json.dumps does to a str

        # A run's records with a NUL where the execution ID goes (JSON escapes every control character).
        out.write(b"[")
        for execution_id, runs in found.runs():
            if not runs:
                continue
            for run in runs:
                if id(run) not in made:
                    made[id(run)] = run, [",".join([
                        f'{{"digest": "{dg}", "execution_id": \0, "path": {json_string(path)}, "size": {size}}}'
                        for path, size, dg in run]).encode("ascii")]
            body = b",".join([made[id(run)][1][0] for run in runs])
            out.write((b"," if any_found else b"") + body.replace(b"\0", json.dumps(execution_id).encode("ascii")))
            any_found = True
        out.write(b"]\n")
        return 0
    for execution_id, runs in found.runs():
        if not runs:
            continue
        lines: list[bytes] = [b""]  # so that joining puts the ID before the first line too
        for run in runs:
            text = made.get(id(run))
            if text is None:
                text = made[id(run)] = run, [f"{size:>12}  {dg}  {quote_name(path)}\n".encode(encoding, errors)
                                             for path, size, dg in run]
            lines += text[1]
        prefix = (quote_name(execution_id) + "  ").encode(encoding, errors)
        out.write(prefix.join(lines))
        any_found = True
    if not any_found and not args.quiet:
        sys.stderr.write("cas: no files found\n")
    return 0


def cmd_cat(store: Store, args: argparse.Namespace) -> int:
    stream = store.open_file(args.execution_id, args.path)
    out = sys.stdout.buffer
    while True:
        block = stream.read(1 << 20)
        if not block:
            break
        out.write(block)
    out.flush()
    return 0


def cmd_restore(store: Store, args: argparse.Namespace) -> int:
    from cas.ops.tree_filter import TreeFilter

    with _progress(args, "restore") as progress:
        report = store.restore(
            args.execution_id,
            args.dest,
            args.path,
            overwrite=args.overwrite,
            same_permissions=args.same_permissions,
            progress=progress,
            filter=TreeFilter(include=args.include, exclude=args.exclude),
            delete=args.delete,
            trust_mtime=args.trust_mtime,
            in_place=args.in_place,
        )
    text = (f"restored {report.files} files, {report.dirs} directories, {report.symlinks} symlinks, "
            f"{human_size(report.bytes)} into {escape(args.dest)}")
    if args.overwrite:
        text += (f"\n{report.written} entries written ({human_size(report.written_bytes)}, "
                 f"{human_size(report.reused_bytes)} of it from files already there), "
                 f"{report.unchanged} unchanged, {report.deleted} deleted")
    _emit(args, report.to_dict(), text)
    return 0


def cmd_copy(store: Store, args: argparse.Namespace) -> int:
    to_password = _password(args)
    if args.to_password_file or os.environ.get("CAS_TO_PASSWORD"):
        to_password = passphrase.source(args.to_password_file, env="CAS_TO_PASSWORD", prompt="target passphrase")
    report = store.copy(args.execution_ids, args.to, to_index=args.to_index, labels=args.label,
                        to_password=to_password)
    text = (f"copied {len(report.copied)} executions ({len(report.present)} already there): sent "
            f"{report.blobs_sent} blobs, {human_size(report.bytes_sent)}; {report.blobs_skipped} the target had")
    _emit(args, report.to_dict(), text)
    return 0


def cmd_stats(store: Store, args: argparse.Namespace) -> int:
    st = store.stats()
    ratio = st.logical_bytes / st.pack_bytes if st.pack_bytes else 0.0
    data = {
        "snapshots": st.snapshots,
        "logical_bytes": st.logical_bytes,
        "unique_bytes": st.chunk_raw_bytes,
        "stored_bytes": st.pack_bytes,
        "dedup_ratio": round(ratio, 3),
        "chunks": st.chunks,
        "trees": st.trees,
        "packs": st.packs,
    }
    text = (
        f"snapshots       {st.snapshots}\n"
        f"logical bytes   {human_size(st.logical_bytes)}  (sum over all snapshots)\n"
        f"unique bytes    {human_size(st.chunk_raw_bytes)}  (distinct chunks, uncompressed)\n"
        f"stored bytes    {human_size(st.pack_bytes)}  (packs on the backend)\n"
        f"ratio           {ratio:.2f}x  (logical / stored)\n"
        f"chunks          {st.chunks}\n"
        f"trees           {st.trees}\n"
        f"packs           {st.packs}"
    )
    _emit(args, data, text)
    return 0


def cmd_prefetch(store: Store, args: argparse.Namespace) -> int:
    report = store.prefetch(list(dict.fromkeys(args.execution_ids)))
    text = (f"{report.chunks} chunks ({human_size(report.bytes)}) needed: {report.already_cached} were cached, "
            f"fetched {report.fetched_chunks} ({human_size(report.fetched_bytes)} from {report.packs} packs)")
    if report.waited_for:
        text += f", {report.waited_for} packs were being fetched by another process"
    if report.cached < report.chunks:
        logging.getLogger("cas").warning(
            "the cache holds %d of the %d chunks: its cap (%s) is too small for these executions (--cache-max)",
            report.cached, report.chunks, human_size(store.repo.chunk_cache.max_bytes if store.repo.chunk_cache else 0),
        )
    _emit(args, report.to_dict(), text)
    return 0


def cmd_cache(args: argparse.Namespace) -> int:
    """``cas cache [prune|clear]``: the chunk cache of ``$CAS_HOME/cache/chunks`` and the files caches."""
    from cas.repo.chunkcache import ChunkCache
    from cas.repo.filescache import expire_files_caches, files_cache_bytes, remove_files_caches
    from cas.repo.repository import default_chunk_cache_dir

    cache_dir = os.path.dirname(default_chunk_cache_dir())
    cache = ChunkCache(default_chunk_cache_dir(), args.cache_max)
    try:
        done: dict[str, object] = {}
        if args.cache_action == "prune":
            done["evicted"] = cache.prune(args.max_size)
            done["files_cache_expired"] = expire_files_caches(cache_dir, args.files_cache_ttl)
        elif args.cache_action == "clear":
            done["removed"] = cache.clear()
            done["files_caches_removed"] = remove_files_caches(cache_dir)
        st = cache.stats()
    finally:
        cache.close()
    files_bytes = files_cache_bytes(cache_dir)
    data = {**st.to_dict(), "files_cache_bytes": files_bytes, **done}
    share = f" ({100 * st.bytes / st.max_bytes:.0f}%)" if st.max_bytes else ""
    rate = f"{100 * st.hit_rate:.1f}%" if st.hit_rate is not None else "-"
    lines = []
    if "evicted" in done:
        lines.append(f"evicted {done['evicted']} chunks; forgot {done['files_cache_expired']} files-cache entries")
    if "removed" in done:
        lines.append(f"removed {done['removed']} chunks and {done['files_caches_removed']} files caches")
    lines += [
        f"chunk cache   {escape(st.root)}",
        f"size          {human_size(st.bytes)} of {human_size(st.max_bytes)} cap{share}",
        f"entries       {st.entries}",
        f"hit rate      {rate}  ({st.hits} hits, {st.misses} misses)",
        f"files cache   {human_size(files_bytes)}",
    ]
    _emit(args, data, "\n".join(lines))
    return 0


def cmd_forget(store: Store, args: argparse.Namespace) -> int:
    """Forget the named IDs and the snapshots the filters select (all of them when only a keep rule
    is given), except those a keep rule keeps; ``--keep-last`` counts among the selected ones and
    ``--keep-label`` protects named IDs too."""
    from cas.ops.retention import KeepPolicy

    policy = KeepPolicy(last=args.keep_last, within=args.keep_within, labels=list(args.keep_label.items()))
    named = list(dict.fromkeys(args.execution_ids))
    chosen = [e for e in named if not policy.protects(store.get(e))]
    filters = bool(args.label) or args.since is not None or args.until is not None
    if filters or args.keep_last is not None or args.keep_within is not None:
        selected = store.list(labels=args.label, since=args.since, until=args.until)
        chosen.extend(e for e in policy.to_forget(selected) if e not in chosen)
    elif not named:
        sys.stderr.write("cas: name execution IDs to forget, or select them with --label/--since/--until or "
                         "--keep-last/--keep-within (see 'cas forget --help')\n")
        return EXIT_USAGE
    if args.dry_run:
        for execution_id in chosen:
            store.get(execution_id)
        _emit(args, {"would_forget": chosen}, "\n".join(f"would forget {quote_name(e)}" for e in chosen) or "nothing to forget")
        return 0
    forgotten = store.forget(chosen)
    _emit(args, {"forgotten": forgotten}, "\n".join(f"forgot {quote_name(e)}" for e in forgotten) or "nothing to forget")
    return 0


def cmd_gc(store: Store, args: argparse.Namespace) -> int:
    report = store.gc(grace=args.grace, dry_run=args.dry_run)
    verb = "would" if args.dry_run else "did"
    lines = [
        f"{report.snapshots} snapshots, {report.reachable_blobs} reachable blobs, {report.packs} packs",
        f"{verb} condemn {len(report.condemned)} packs (deleted by a later run once past the grace period)",
        f"{verb} delete {len(report.deleted)} packs, {human_size(report.deleted_bytes)}",
        f"{verb} repack {len(report.repacked)} packs ({human_size(report.repacked_bytes)} still referenced)",
    ]
    if report.rescued:
        lines.append(f"rescued {len(report.rescued)} condemned packs that a new snapshot uses")
    if args.dry_run:
        for pack_id in sorted(set(report.condemned) | set(report.deleted) | set(report.repacked)):
            lines.append(escape(f"  {pack_id[:16]}  {report.reasons.get(pack_id, '')}"))
    _emit(args, report.to_dict(), "\n".join(lines))
    return 0


def cmd_verify(store: Store, args: argparse.Namespace) -> int:
    sample = 1.0
    if args.sample:
        try:
            sample = float(args.sample.rstrip("%")) / 100.0
        except ValueError:
            raise ConfigurationError(f"invalid --sample {args.sample!r}: use a percentage like 5%") from None
        if not 0 < sample <= 1:
            raise ConfigurationError("--sample must be between 0% and 100%")
    report = store.verify(read_data=args.read_data, sample=sample)
    summary = (
        f"{report.snapshots} snapshots, {report.packs} packs"
        + (f", {report.packs_read} packs read, {report.blobs_checked} blobs re-hashed" if args.read_data else "")
    )
    if report.objects_without_rows:
        summary += (f"\n{len(report.objects_without_rows)} snapshots are on the backend but not in this index "
                    "(checked; 'cas rebuild-index --sync' adds them)")
    if report.stale_damage:
        summary += (f"\n{len(report.stale_damage)} snapshots marked damaged are intact now "
                    "('cas repair' clears the mark): " + ", ".join(quote_name(e) for e in report.stale_damage))
    problems = report.problems + report.known_damage
    count = len(problems)
    text = "\n".join([summary] + [escape(str(p)) for p in problems[:200]]
                     + ([f"... and {count - 200} more"] if count > 200 else [])
                     + ["no problems found" if report.ok else f"{count} problems found"
                        + (f" ({len(report.known_damage)} in snapshots already marked damaged)"
                           if report.known_damage else "")])
    _emit(args, report.to_dict(), text)
    return 0 if report.ok else EXIT_ERROR


def _rebuild_index(args: argparse.Namespace) -> int:
    """``cas rebuild-index``; a damaged SQLite index file is set aside and rebuilt from the backend
    (the ground truth), whether opening it or the rebuild found the damage."""
    from cas.store import Store
    from manifests.database import set_aside
    from manifests.errors import IndexDamaged

    rebind = not args.sync  # a full rebuild may take over an index of this repository elsewhere (it moved)
    try:
        with Store.open(args.repo, index=args.index, rebind_index=rebind, password=_password(args)) as store:
            store.repo.index.check_intact()
            return cmd_rebuild_index(store, args)
    except IndexDamaged as exc:
        if exc.path is None:
            raise
        damaged = exc.path
    aside = set_aside(damaged)
    logging.getLogger("cas").warning(
        "index %s is damaged; moved it to %s and rebuilding it from the repository", damaged, aside
    )
    args.sync = False
    with Store.open(args.repo, index=args.index, rebind_index=True, password=_password(args)) as store:
        return cmd_rebuild_index(store, args, set_aside_as=aside)


def cmd_rebuild_index(store: Store, args: argparse.Namespace, set_aside_as: str | None = None) -> int:
    report = store.sync() if args.sync else store.rebuild_index()
    text = f"indexed {report.packs} packs ({report.blobs} blobs) and {report.snapshots} snapshots"
    text += "".join(f"\nskipped {escape(s)}" for s in report.skipped)
    data = report.to_dict()
    if set_aside_as is not None:
        data["damaged_index_moved_to"] = set_aside_as
    _emit(args, data, text)
    return 0 if not report.skipped else EXIT_ERROR


def cmd_repair(store: Store, args: argparse.Namespace) -> int:
    found, fixed = store.repair(read_data=args.read_data)
    lines = [f"{len(found.problems)} problems found"]
    if fixed.rows_dropped:
        lines.append(f"dropped {fixed.rows_dropped} index rows of lost or corrupt blobs")
    lines += [f"marked damaged: {quote_name(e)}" for e in fixed.snapshots_marked_damaged]
    lines += [f"rewrote snapshot object: {quote_name(e)}" for e in fixed.objects_rewritten]
    lines += [f"indexed snapshot: {quote_name(e)}" for e in fixed.rows_added]
    lines += [f"intact again, damaged mark cleared: {quote_name(e)}" for e in fixed.damage_cleared]
    if fixed.rows_reindexed:
        lines.insert(1, f"re-indexed {fixed.rows_reindexed} blobs from pack trailers")
    _emit(args, {"found": found.to_dict(), "repaired": fixed.to_dict()}, "\n".join(lines))
    return 0


def cmd_mount(store: Store, args: argparse.Namespace) -> int:
    from cas import mount

    view = store.view(args.execution)

    def ready() -> None:
        if not args.quiet:
            sys.stderr.write(f"cas: serving {escape(args.mountpoint)} read-only; stop with Ctrl-C or "
                             f"'fusermount -u {escape(args.mountpoint)}'\n")
            sys.stderr.flush()

    mount.serve(view, args.mountpoint, on_ready=ready)
    return 0


# -- client-side encryption (issue 18) --
def _password(args: argparse.Namespace) -> Callable[[], str]:
    """The repository's passphrase, looked for only if it is encrypted (cas/passphrase.py)."""
    if not hasattr(args, "_password_source"):
        args._password_source = passphrase.source(args.password_file, prompt="repository passphrase")
    return args._password_source  # type: ignore[no-any-return]


def cmd_init(args: argparse.Namespace) -> int:
    from cas.store import Store

    password = passphrase.source(args.password_file, prompt="new repository passphrase", confirm=True)
    chunker = {} if args.chunker is None else {"chunker": args.chunker}
    with Store.open(args.repo, index=args.index, exclusive=True, encrypt=args.encrypt, password=password,
                    kdf_cost=args.kdf_cost, **chunker) as store:
        config = store.repo.config
        data = {"location": store.repo.describe(), "repo_id": config.repo_id, "version": config.version,
                "encrypted": config.encrypted}
        text = (f"created {'an encrypted' if config.encrypted else 'a'} repository {config.repo_id} "
                f"at {escape(store.repo.describe())}")
        _emit(args, data, text)
    return 0


def cmd_key(store: Store, args: argparse.Namespace) -> int:
    if args.key_action == "list":
        keys = store.list_keys()
        lines = [f"{'*' if k.current else ' '} {k.key_id}  scrypt 2^{k.kdf_cost}  created "
                 f"{dt.datetime.fromtimestamp(k.created_ns / 1e9, dt.timezone.utc):%Y-%m-%d %H:%M:%S} UTC"
                 for k in keys]
        _emit(args, [k.to_dict() for k in keys], "\n".join(lines))
    elif args.key_action == "add":
        store.list_keys()  # refuses an unencrypted repository before asking for a new passphrase
        new = passphrase.source(args.new_password_file, env=passphrase.NEW_ENV, prompt="new passphrase",
                                confirm=True)
        key_id = store.add_key(new, kdf_cost=args.kdf_cost)
        _emit(args, {"added": key_id}, f"added key {key_id}")
    else:
        store.remove_key(args.key_id)
        _emit(args, {"removed": args.key_id}, f"removed key {escape(args.key_id)}")
    return 0
# -- end client-side encryption --


_COMMANDS: dict[str, Callable[[Store, argparse.Namespace], int]] = {
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
