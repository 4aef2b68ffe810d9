"""Commands that move data: ``snapshot``, ``restore``, ``copy``, ``prefetch``, ``mount``."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import TYPE_CHECKING

from cas import passphrase
from cas.cli.common import emit, password, progress_bar
from cas.options import parse_labels
from cas.terminal import escape, human_size

if TYPE_CHECKING:
    from cas.ops.snapshot.filter import SnapshotFilter
    from cas.store import Store


def snapshot_filter(args: argparse.Namespace) -> SnapshotFilter:
    from cas.ops.snapshot.filter import SnapshotFilter

    return SnapshotFilter(exclude=args.exclude, include=args.include, ignore_files=not args.no_ignore_files,
                          extra_ignore_files=args.ignore_file, exclude_larger_than=args.exclude_larger_than,
                          one_file_system=args.one_file_system)

def cmd_snapshot(store: Store, args: argparse.Namespace) -> int:
    from cas.allocator import limit_arenas

    limit_arenas()  # before the writer's threads start: less memory held by their arenas
    labels = parse_labels(args.label)
    with progress_bar(args, "snapshot") as progress:
        snap = store.snapshot(
            args.path, args.execution_id, labels=labels, use_files_cache=not args.no_files_cache, progress=progress,
            on_change=args.on_change, chunker=args.chunker, filter=snapshot_filter(args),
            files_cache_ttl=args.files_cache_ttl, jobs=args.jobs,
        )
    st = snap.stats
    text = (
        f"snapshot {snap.execution_id}: {st.get('files', 0)} files, {human_size(st.get('logical_bytes', 0))} "
        f"({human_size(st.get('new_bytes', 0))} new, {human_size(st.get('stored_bytes', 0))} stored after compression)"
    )
    if st.get("excluded"):
        count = st["excluded"]
        text += f"; {count} {'entry' if count == 1 else 'entries'} excluded ({human_size(st.get('excluded_bytes', 0))} in files)"
    emit(args, snap.to_dict(), text)
    return 0

def hash_destination_early(args: argparse.Namespace) -> None:
    """A restore over a destination that holds something compares the files there with the tree:
    start the child that hashes them (:mod:`cas.ops.restore.hash_ahead`) now, before the engine
    loads (a few hundred milliseconds of the command), when the restore will use it (``--overwrite``
    of the whole tree, without ``--trust-mtime`` or a selection)."""
    if args.overwrite and not args.trust_mtime and args.path is None and not args.include and not args.exclude:
        from cas.ops.restore.hash_ahead import start_early

        start_early(args.dest)

def cmd_restore(store: Store, args: argparse.Namespace) -> int:
    from cas.ops.tree_filter import TreeFilter

    with progress_bar(args, "restore") as progress:
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
            use_files_cache=not args.no_files_cache,
        )
    text = (f"restored {report.files} files, {report.dirs} directories, {report.symlinks} symlinks, "
            f"{human_size(report.bytes)} into {escape(args.dest)}")
    if args.overwrite:
        text += (f"\n{report.written} entries written ({human_size(report.written_bytes)}, "
                 f"{human_size(report.reused_bytes)} of it from files already there), "
                 f"{report.unchanged} unchanged, {report.deleted} deleted")
    emit(args, report.to_dict(), text)
    return 0

def cmd_copy(store: Store, args: argparse.Namespace) -> int:
    to_password = password(args)
    if args.to_password_file or os.environ.get("CAS_TO_PASSWORD"):
        to_password = passphrase.source(args.to_password_file, env="CAS_TO_PASSWORD", prompt="target passphrase")
    report = store.copy(args.execution_ids, args.to, to_index=args.to_index, labels=args.label,
                        to_password=to_password)
    text = (f"copied {len(report.copied)} executions ({len(report.present)} already there): sent "
            f"{report.blobs_sent} blobs, {human_size(report.bytes_sent)}; {report.blobs_skipped} the target had")
    emit(args, report.to_dict(), text)
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
    emit(args, report.to_dict(), text)
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
