"""cas: a content-addressed, deduplicated artifact store for ML workflows.

The public API is :class:`Store` and the types it hands out: :class:`Snapshot`, :class:`Change`,
the reports of each operation, and the error set.
"""

from __future__ import annotations

from cas.errors import (
    AlreadyExists,
    CasError,
    ConfigurationError,
    IntegrityError,
    MissingDependency,
    NotFound,
    PartialRestore,
    PermissionDenied,
    Unavailable,
)
from cas.ops.browse import Change
from cas.ops.gc import GcReport
from cas.ops.repair import RepairReport
from cas.ops.restore import RestoreReport
from cas.ops.snapshot_filter import SnapshotFilter
from cas.ops.tree_filter import TreeFilter
from cas.ops.sync import RebuildReport
from cas.ops.tree_builder import OnChange
from cas.ops.verify import VerifyReport
from cas.store import Snapshot, Store

__version__ = "0.1.0"

__all__ = [
    "AlreadyExists",
    "CasError",
    "Change",
    "ConfigurationError",
    "GcReport",
    "IntegrityError",
    "MissingDependency",
    "NotFound",
    "OnChange",
    "PartialRestore",
    "PermissionDenied",
    "RebuildReport",
    "RepairReport",
    "RestoreReport",
    "Snapshot",
    "SnapshotFilter",
    "Store",
    "TreeFilter",
    "Unavailable",
    "VerifyReport",
]
