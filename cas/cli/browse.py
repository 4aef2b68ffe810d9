"""Commands that read what is stored, answered from the index where it can: ``log``, ``ls``,
``diff``, ``find``, ``cat``, ``stats``."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from typing import TYPE_CHECKING

from cas.cli.common import emit
from cas.errors import ConfigurationError
from cas.terminal import escape, human_size, quote_name

if TYPE_CHECKING:
    from cas.store import Store


def cmd_log(store: Store, args: argparse.Namespace) -> int:
    snaps = store.list(labels=args.label, since=args.since, until=args.until, limit=args.limit)
    lines = [f"{'EXECUTION':<24} {'TIME (UTC)':<20} {'FILES':>7} {'LOGICAL':>11} {'NEW':>11}  LABELS"]

    for s in snaps:
        when = dt.datetime.fromtimestamp(s.time_ns / 1e9, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        labels = escape(",".join(f"{k}={v}" for k, v in sorted(s.labels.items())))
        if s.damaged:
            labels = "DAMAGED " + labels
        lines.append(
            f"{quote_name(s.execution_id):<24} {when:<20} {s.stats.get('files', 0):>7} {human_size(s.logical_bytes):>11} "
            f"{human_size(s.new_bytes):>11}  {labels}"
        )
    emit(args, [s.to_dict() for s in snaps], "\n".join(lines) if snaps else "no snapshots")
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
    emit(args, rows, "\n".join(lines))
    return 0

def cmd_diff(store: Store, args: argparse.Namespace) -> int:
    changes = store.diff(args.old, args.new)
    marks = {"added": "+", "removed": "-", "changed": "M"}
    emit(
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
    emit(args, data, text)
    return 0
