"""The small frozen values the index hands out and takes in; no SQL here.

Kinds and codecs are stored as the integers the engine gives (docs/FORMAT.md, "Blobs and codecs");
the index never interprets them except to count chunks and trees in :class:`IndexStats`.
"""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass
from typing import NamedTuple, Protocol


class PackState(enum.IntEnum):
    """``packs.state``: whether writers may deduplicate against a pack's blobs (docs/GC.md)."""

    LIVE = 0
    CONDEMNED = 1
    """Garbage collection judged it unreachable: still readable, never offered for deduplication."""


class BlobLocationLike(Protocol):
    """What the index reads from a blob location it is given: the engine's own location type or a
    :class:`BlobRow` both qualify. ``pack_id`` is read only where the pack is not given separately."""

    @property
    def id(self) -> str: ...
    @property
    def kind(self) -> int: ...
    @property
    def pack_id(self) -> str: ...
    @property
    def offset(self) -> int: ...
    @property
    def length(self) -> int: ...
    @property
    def raw_length(self) -> int: ...
    @property
    def codec(self) -> int: ...


class BlobRow(NamedTuple):
    """A ``blobs`` row: where a chunk or tree node is stored and how it is encoded. (A named tuple:
    a restore makes one per chunk, built from the driver's row in one call.)"""

    id: str
    kind: int
    pack_id: str
    offset: int
    length: int  # stored (encoded) bytes at ``offset`` in the pack
    raw_length: int  # bytes once decoded
    codec: int


@dataclass(frozen=True)
class SnapshotRow:
    """A ``snapshots`` row: an execution's root tree and what storing it cost."""

    execution_id: str
    root_tree: str
    time_ns: int  # when the snapshot was taken, ns since the epoch (UTC)
    labels: dict[str, str]
    stats: dict[str, int]  # the engine's counters, opaque to the index
    logical_bytes: int
    new_bytes: int
    stored_bytes: int
    root_mode: int = 0o755  # the snapshotted directory's own permission bits
    root_mtime_ns: int = 0  # and its mtime
    damaged: bool = False  # repair found blobs of it missing; cleared when they are stored again
    trees_indexed: bool = False  # every tree of it has its entries in ``tree_entries``


class TreeEntryRow(NamedTuple):
    """A ``tree_entries`` row without its tree ID: one entry of a directory as the index keeps it
    (no chunk list). ``type`` is the format's entry type string; ``name`` and ``target`` are bytes.
    A named tuple: a snapshot makes one per file, and a tuple is made and stored several times
    cheaper than a frozen dataclass."""

    name: bytes
    type: str
    mode: int
    mtime_ns: int
    size: int = 0
    digest: str | None = None  # a file's BLAKE3
    target: bytes | None = None  # a symlink's target
    child: str | None = None  # a directory's tree ID


@dataclass(frozen=True)
class PackRow:
    """A ``packs`` row as garbage collection, sync and verify read it."""

    id: str
    size: int
    state: int  # a PackState value
    condemned_epoch: int | None  # the fence's epoch when condemned (None while live)
    created_at: dt.datetime
    condemned_at: dt.datetime | None


@dataclass(frozen=True)
class GcDecision:
    """What one GC verdict transaction did, after re-checking each verdict against the rows."""

    tombstoned: list[str]
    condemned: list[str]
    rescued: list[str]


@dataclass(frozen=True)
class IndexStats:
    """Totals over the whole index (``cas stats``)."""

    snapshots: int
    packs: int
    pack_bytes: int
    blobs: int
    chunks: int
    trees: int
    chunk_raw_bytes: int
    chunk_stored_bytes: int
    logical_bytes: int
