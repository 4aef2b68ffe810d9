"""The maintainer's commands: ``forget``, ``gc``, ``verify``, ``rebuild-index``, ``repair``."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import TYPE_CHECKING

from cas.cli.common import EXIT_ERROR, EXIT_USAGE, emit, password
from cas.errors import ConfigurationError
from cas.terminal import escape, human_size, quote_name

if TYPE_CHECKING:
    from cas.store import Store


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
        emit(args, {"would_forget": chosen}, "\n".join(f"would forget {quote_name(e)}" for e in chosen) or "nothing to forget")
        return 0
    forgotten = store.forget(chosen)
    emit(args, {"forgotten": forgotten}, "\n".join(f"forgot {quote_name(e)}" for e in forgotten) or "nothing to forget")
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
    emit(args, report.to_dict(), "\n".join(lines))
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
    emit(args, report.to_dict(), text)
    return 0 if report.ok else EXIT_ERROR

def rebuild_index_command(args: argparse.Namespace) -> int:
    """``cas rebuild-index``; a damaged SQLite index file is set aside and rebuilt from the backend
    (the ground truth), whether opening it or the rebuild found the damage."""
    from cas.store import Store
    from manifests.database import set_aside
    from manifests.errors import IndexDamaged

    rebind = not args.sync  # a full rebuild may take over an index of this repository elsewhere (it moved)
    try:
        with Store.open(args.repo, index=args.index, rebind_index=rebind, password=password(args)) as store:
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
    with Store.open(args.repo, index=args.index, rebind_index=True, password=password(args)) as store:
        return cmd_rebuild_index(store, args, set_aside_as=aside)

def cmd_rebuild_index(store: Store, args: argparse.Namespace, set_aside_as: str | None = None) -> int:
    report = store.sync() if args.sync else store.rebuild_index()
    text = f"indexed {report.packs} packs ({report.blobs} blobs) and {report.snapshots} snapshots"
    text += "".join(f"\nskipped {escape(s)}" for s in report.skipped)
    data = report.to_dict()
    if set_aside_as is not None:
        data["damaged_index_moved_to"] = set_aside_as
    emit(args, data, text)
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
    emit(args, {"found": found.to_dict(), "repaired": fixed.to_dict()}, "\n".join(lines))
    return 0
