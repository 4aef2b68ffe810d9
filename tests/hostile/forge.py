"""Writing malicious repositories directly, as an attacker with write access to the backend would.

Nothing here goes through :func:`cas.format.trees.encode_tree` or the snapshot walker: tree nodes are raw
JSON, stored as blobs and committed as snapshots, so the reader's defences are what is tested.
"""

from __future__ import annotations

import json
import time

from cas import Store
from cas.format.hashing import hexdigest
from cas.format.records import SnapshotRecord
from cas.ops import commit as commit_op
from cas.repo.blobwriter import BlobWriter
from cas.types import BlobKind

EMPTY_DIGEST = hexdigest(b"")


def put_blob(store: Store, data: bytes, kind: int = BlobKind.DATA) -> str:
    blob_id = hexdigest(data)
    with BlobWriter(store.repo) as writer:
        writer.add(blob_id, kind, data)
        writer.flush()
    return blob_id


def put_tree(store: Store, entries: list[dict[str, object]]) -> str:
    raw = json.dumps({"v": 1, "entries": entries}, separators=(",", ":")).encode()
    return put_blob(store, raw, BlobKind.TREE)


def file_entry(store: Store, name: str, content: bytes = b"pwned", **extra: object) -> dict[str, object]:
    chunk = put_blob(store, content)
    entry: dict[str, object] = {
        "name": name, "type": "file", "mode": 0o644, "mtime_ns": 0,
        "size": len(content), "digest": hexdigest(content), "chunks": [chunk],
    }
    entry.update(extra)
    return entry


def commit(store: Store, execution_id: str, root: str) -> None:
    commit_op.commit(store.repo, SnapshotRecord(execution_id, root, 0o755, 0, time.time_ns()), {root})
