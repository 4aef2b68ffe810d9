"""Snapshot records: the JSON object stored under ``snapshots/<execution id>``.

Together with the packs, these are everything needed to rebuild the index. Execution IDs and labels
are validated here, on the way in and on the way out.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from cas.errors import ConfigurationError, IntegrityError
from cas.format import jsondoc
from cas.format.hashing import is_digest
from cas.format.keys import SNAPSHOT_PREFIX

RECORD_VERSION = 1
MAX_RECORD_BYTES = 1 << 20
_EXECUTION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@+=-]{0,199}")
_LABEL_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,63}")
MAX_LABEL_VALUE = 256
MAX_LABELS = 64
_MAX_INT64 = (1 << 63) - 1  # stats go into BIGINT columns of the index


def check_execution_id(value: object, error: type[Exception] = ConfigurationError) -> str:
    if not isinstance(value, str) or not _EXECUTION_ID.fullmatch(value):
        raise error(
            f"invalid execution ID {value!r}: use 1-200 characters from letters, digits and ._:@+=- "
            "starting with a letter or digit"
        )
    return value


def check_labels(labels: object, error: type[Exception] = ConfigurationError) -> dict[str, str]:
    if not isinstance(labels, dict) or len(labels) > MAX_LABELS:
        raise error(f"labels must be a mapping of at most {MAX_LABELS} entries")
    for key, value in labels.items():
        if not isinstance(key, str) or not _LABEL_KEY.fullmatch(key):
            raise error(f"invalid label name {key!r}: letters, digits and ._/- , at most 64 characters")
        if (
            not isinstance(value, str)
            or len(value) > MAX_LABEL_VALUE
            or any(_unprintable(c) for c in value)
        ):
            raise error(f"invalid value for label {key!r}: at most {MAX_LABEL_VALUE} printable characters")
    return dict(labels)


def _unprintable(c: str) -> bool:
    """C0/C1 control characters (terminal escapes) and lone surrogates (not text: they come from
    undecodable bytes on a command line and cannot be stored as valid UTF-8 or strict JSON)."""
    code = ord(c)
    return code < 32 or 127 <= code <= 159 or 0xD800 <= code <= 0xDFFF


def snapshot_key(execution_id: str) -> str:
    return SNAPSHOT_PREFIX + check_execution_id(execution_id)


@dataclass(frozen=True)
class SnapshotRecord:
    execution_id: str
    root: str
    root_mode: int
    root_mtime_ns: int
    time_ns: int
    labels: dict[str, str] = field(default_factory=dict)
    stats: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> bytes:
        doc = {
            "v": RECORD_VERSION,
            "execution_id": self.execution_id,
            "root": self.root,
            "root_mode": self.root_mode,
            "root_mtime_ns": self.root_mtime_ns,
            "time_ns": self.time_ns,
            "labels": self.labels,
            "stats": self.stats,
        }
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes) -> SnapshotRecord:
        if len(data) > MAX_RECORD_BYTES:
            raise IntegrityError("snapshot record is too large")
        try:
            doc = jsondoc.loads(data)
        except ValueError as exc:
            raise IntegrityError("snapshot record is not valid JSON") from exc
        if not isinstance(doc, dict) or type(doc.get("v")) is not int or doc["v"] != RECORD_VERSION:
            raise IntegrityError("snapshot record has an unknown version")
        execution_id = check_execution_id(doc.get("execution_id"), IntegrityError)
        root = doc.get("root")
        if not is_digest(root):
            raise IntegrityError(f"snapshot {execution_id} has an invalid root tree id")
        ints = {}
        for name, low, high in (
            ("root_mode", 0, 0o7777),
            ("root_mtime_ns", -(1 << 63), (1 << 63) - 1),
            ("time_ns", 0, (1 << 63) - 1),
        ):
            value = doc.get(name)
            if type(value) is not int or not low <= value <= high:
                raise IntegrityError(f"snapshot {execution_id} has an invalid {name}")
            ints[name] = value
        stats = doc.get("stats")
        if not isinstance(stats, dict) or not all(
            isinstance(k, str) and type(v) is int and 0 <= v <= _MAX_INT64 for k, v in stats.items()
        ):
            raise IntegrityError(f"snapshot {execution_id} has invalid stats")
        labels = check_labels(doc.get("labels"), IntegrityError)
        return cls(execution_id, root, labels=labels, stats=stats, **ints)  # type: ignore[arg-type]
