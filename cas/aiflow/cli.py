"""``cas aiflow ...``: the AIFlow blob managers of :mod:`cas.aiflow`, one call per process.

This is the wire protocol of the ``cas-aiflow-bridge`` distribution (``integrations/aiflow-bridge``),
which runs inside AIFlow's own Python (3.7/3.8, where cas cannot be installed) and calls the ``cas``
executable of a separate environment. Each command builds the named manager from a JSON
``blob_manager_config`` (``--config JSON``, ``--config @file`` or ``--config -`` for stdin, so
secrets never appear in a process listing) and makes one call, so every guarantee of
:mod:`cas.aiflow` (content-addressed URIs, the caller's file untouched, verified downloads renamed
into place, one fetch for concurrent downloads on a host) holds unchanged.

With ``--json`` a success prints one object on stdout; a failure prints
``{"error": {"type": ..., "message": ...}}`` on stdout and, as every cas command, one line on
stderr and exit status 1. ``PROTOCOL`` changes only when a command or field is removed or changes
meaning; the bridge refuses a cas whose protocol it does not speak.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import cas
from cas.errors import CasError, ConfigurationError

PROTOCOL = 1
MANAGERS = ("LocalBlobManager", "OssBlobManager", "HDFSBlobManager", "S3BlobManager", "CasBlobManager")


def add_parser(sub: Any) -> None:
    """Register ``cas aiflow`` and its commands on the top-level subparsers."""
    p = sub.add_parser("aiflow", help="AIFlow blob manager calls (used by the cas-aiflow-bridge distribution)")
    ops = p.add_subparsers(dest="aiflow_command", required=True, parser_class=type(p))

    def op(name: str, help_text: str) -> argparse.ArgumentParser:
        s = ops.add_parser(name, help=help_text)
        s.add_argument("--manager", default="CasBlobManager", choices=MANAGERS,
                       help="the cas.aiflow class (default CasBlobManager, on --repo/--index)")
        s.add_argument("--config", default=None, metavar="JSON|@FILE|-",
                       help="blob_manager_config as JSON, @file, or - to read it from stdin")
        return s

    op("check", "build the manager (config errors surface here); print protocol, version and root")
    s = op("upload", "store one file by content; print its URI")
    s.add_argument("file")
    s = op("download", "fetch one URI into a directory, verified; print the local path")
    s.add_argument("uri")
    s.add_argument("local_dir", nargs="?", default=None)
    s = op("upload-project", "snapshot a project directory (AIFlow 0.2 upload_project)")
    s.add_argument("workflow_snapshot_id")
    s.add_argument("path")
    s = op("download-project", "restore a project (AIFlow 0.2 download_project)")
    s.add_argument("workflow_snapshot_id")
    s.add_argument("uri")
    s.add_argument("local_path", nargs="?", default=None)


def run(args: argparse.Namespace) -> int:
    """Run one ``cas aiflow`` command. Errors propagate to ``cas.cli.main`` (one line, exit 1)."""
    try:
        result = _dispatch(args)
    except (CasError, OSError) as exc:
        if args.json:
            kind = type(exc).__name__ if isinstance(exc, CasError) else "OSError"
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else kind
            _print({"error": {"type": kind, "message": message}})
        raise
    if args.json:
        _print(result)
    else:
        sys.stdout.write(str(result.get("uri") or result.get("path") or result.get("root_dir")) + "\n")
    return 0


def _dispatch(args: argparse.Namespace) -> dict[str, Any]:
    from cas.aiflow import managers

    config = _load_config(args.config)
    if args.manager == "CasBlobManager":
        if args.repo and "repo" not in config:
            config["repo"] = args.repo
        if args.index and "index_url" not in config:
            config["index_url"] = args.index
    manager = getattr(managers, args.manager)(config)
    try:
        command = args.aiflow_command
        if command == "check":
            return {"protocol": PROTOCOL, "cas_version": cas.__version__, "manager": args.manager,
                    "root_dir": manager.root_dir}
        if command == "upload":
            uri = manager.upload(args.file)
            return {"uri": uri, **_snapshot_numbers(manager)}
        if command == "download":
            path = manager.download(args.uri, args.local_dir)
            return {"path": path, "fetched": manager.last_download_fetched}
        if command == "upload-project":
            uri = manager.upload_project(args.workflow_snapshot_id, args.path)
            return {"uri": uri, **_snapshot_numbers(manager)}
        if command == "download-project":
            path = manager.download_project(args.workflow_snapshot_id, args.uri, args.local_path)
            return {"path": path, "fetched": manager.last_download_fetched}
        raise ConfigurationError(f"unknown aiflow command {command!r}")  # argparse prevents this
    finally:
        manager.close()


def _snapshot_numbers(manager: Any) -> dict[str, Any]:
    snap = manager.last_snapshot
    stats = snap.stats if snap is not None else {}
    return {
        "execution_id": snap.execution_id if snap is not None else None,
        "logical_bytes": int(stats.get("logical_bytes", 0)),
        "new_bytes": int(stats.get("new_bytes", 0)),
        "stored_bytes": int(stats.get("stored_bytes", 0)),
    }


def _load_config(text: str | None) -> dict[str, Any]:
    if text is None:
        return {}
    source = "--config"
    if text == "-":
        text, source = sys.stdin.read(), "the config on stdin"
    elif text.startswith("@"):
        path = text[1:]
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except OSError as exc:
            raise ConfigurationError(f"cannot read --config file {path}: {exc.strerror or exc}") from None
        source = path
    try:
        config = json.loads(text) if text.strip() else {}
    except ValueError as exc:
        raise ConfigurationError(f"{source} is not valid JSON: {exc}") from None
    if not isinstance(config, dict):
        raise ConfigurationError(f"{source} must be a JSON object (the blob_manager_config mapping)")
    return config


def _print(data: object) -> None:
    sys.stdout.write(json.dumps(data, sort_keys=True) + "\n")
    sys.stdout.flush()
