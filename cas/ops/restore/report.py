"""What a restore reports: the counts and failures it returns (:class:`RestoreReport`), the outcome
of one file as its worker hands it back (:class:`Done`), and the error raised when entries failed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

from cas.errors import PartialRestore

ProgressFn = Callable[[int, int], None]


@dataclass
class RestoreReport:
    """``files``, ``dirs``, ``symlinks`` and ``bytes`` count what the destination holds of the tree
    afterwards; ``written``, ``unchanged`` and ``deleted`` count entries this restore wrote, found
    already matching (``meta_fixed`` of them had only their mode or mtime set) and removed;
    ``files_from_cache`` of the unchanged files were known to match by the files cache, unread."""

    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    bytes: int = 0
    written: int = 0
    unchanged: int = 0
    deleted: int = 0
    meta_fixed: int = 0
    files_from_cache: int = 0
    written_bytes: int = 0
    reused_bytes: int = 0
    """Bytes of written files taken from files already in the destination instead of fetched."""
    failures: list[tuple[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return {
            "files": self.files, "dirs": self.dirs, "symlinks": self.symlinks, "bytes": self.bytes,
            "written": self.written, "unchanged": self.unchanged, "deleted": self.deleted,
            "meta_fixed": self.meta_fixed, "files_from_cache": self.files_from_cache,
            "written_bytes": self.written_bytes, "reused_bytes": self.reused_bytes,
        }


class Done(NamedTuple):
    """What a file worker did: the file's size, whether it was written, bytes reused, metadata
    fixed, bytes it wrote when it patched the file in place (-1: written whole)."""

    size: int
    written: bool
    reused: int = 0
    meta_fixed: bool = False
    patched: int = -1


def failure_error(report: RestoreReport) -> PartialRestore:
    shown = "; ".join(msg for _path, msg in report.failures[:5])
    more = f" (and {len(report.failures) - 5} more)" if len(report.failures) > 5 else ""
    return PartialRestore(f"{len(report.failures)} entries could not be restored: {shown}{more}", report.failures)
