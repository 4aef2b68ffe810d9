"""The engine's small value types, below every layer that uses them: where a blob is, and the
enumerations the formats store as integers or strings (docs/FORMAT.md)."""

from __future__ import annotations

import enum
from typing import NamedTuple


class BlobKind(enum.IntEnum):
    """What a blob holds; stored as the ``kind`` byte of a pack trailer entry."""

    DATA = 0
    TREE = 1


class Codec(enum.IntEnum):
    """How a blob is encoded in its pack; the ``codec`` byte of a pack trailer entry."""

    RAW = 0
    ZSTD = 1


class EntryType(str, enum.Enum):
    """The ``type`` of a tree entry (a ``str``, so entries compare and encode as their JSON text)."""

    FILE = "file"
    DIR = "dir"
    SYMLINK = "symlink"

    def __str__(self) -> str:
        return self.value


class BlobLocation(NamedTuple):
    """Where one blob is: its pack and byte range, and how it is encoded."""

    id: str
    kind: int
    pack_id: str
    offset: int
    length: int
    raw_length: int
    codec: int


class OnChange(str, enum.Enum):
    """What a snapshot does with a file that kept changing while it was read (after the re-reads)."""

    WARN = "warn"
    """Store what the last read saw (it may mix old and new content), warn naming the file, count it."""
    RETRY = "retry"
    """Keep re-reading with growing pauses (about 10 s) until the file holds still; fail if it never does."""
    FAIL = "fail"
    """Fail the snapshot, naming the file."""


__all__ = ["BlobKind", "BlobLocation", "Codec", "EntryType", "OnChange"]

