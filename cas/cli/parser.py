"""The ``cas`` command's arguments: one parser, every subcommand and option."""

from __future__ import annotations

import argparse
import os
import sys

from cas.cli.common import EXIT_USAGE
from cas.format.config import ChunkerName
from cas.options import LabelAction, duration_option, limit_option, size_option, when_option
from cas.types import OnChange


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
    s.add_argument("--execution-id", "-e", required=True, help="the execution ID the snapshot is stored under")
    s.add_argument("--label", "-l", action="append", default=[], metavar="KEY=VALUE",
                   help="a label the snapshot carries (repeatable)")
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
    s.add_argument("--jobs", "-j", type=_jobs_option, default=None, metavar="N",
                   help="processes that walk the tree's subdirectories, this one included (default: one per CPU, "
                   "at most 4, for a tree of 20,000 names or more, else one process; N: N processes whatever the "
                   "tree's size; 1: all in this process). Remote repositories always use one process")
    _add_snapshot_filter(s)

    s = sub.add_parser("log", help="executions, newest first")
    _add_filters(s, "list")
    s.add_argument("--limit", type=limit_option, default=None, metavar="N", help="at most the newest N that match")

    s = sub.add_parser("ls", help="list a stored tree")
    s.add_argument("execution_id")
    s.add_argument("path", nargs="?", default="")
    s.add_argument("--recursive", "-r", action="store_true", help="list the whole subtree, not one level")
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
    s.add_argument("--no-files-cache", action="store_true",
                   help="do not record the files written in this host's files cache (a snapshot of DEST then reads them)")
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
    s.add_argument("--read-data", action="store_true", help="download and re-hash stored data to find damage")

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
    a.add_argument("--max-size", type=size_option, default=None, metavar="SIZE",
                   help="evict least recently used chunks down to SIZE (default: the cache's cap)")
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
    a.add_argument("--new-password-file", default=None, metavar="FILE",
                   help="the new passphrase is the first line of FILE (else CAS_NEW_PASSWORD, else a prompt)")
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

def _jobs_option(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number, 1 or more, not {text!r}")
    return value


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

def _add_tree_filter(s: argparse.ArgumentParser, verb: str) -> None:
    s.add_argument("--include", action="append", default=[], metavar="PATTERN",
                   help=f"{verb} only what these gitignore-style patterns, relative to the snapshot's root, match, and "
                   "the directories leading to it (repeatable)")
    s.add_argument("--exclude", action="append", default=[], metavar="PATTERN",
                   help=f"do not {verb} what this gitignore-style pattern matches (repeatable; wins over --include)")
