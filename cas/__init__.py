"""cas: a content-addressed, deduplicated artifact store for ML workflows.

The public API is :class:`Store` and the types it hands out: :class:`Snapshot`, :class:`Change`,
the reports of each operation, and the error set.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

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
from cas.types import OnChange

# The rest is imported on first use (PEP 562), so ``import cas`` - and every ``cas`` command, which
# imports this package first - costs only what that command needs (``cas --help`` needs no SQL).
_LAZY = {
    "Change": "cas.ops.browse",
    "GcReport": "cas.ops.gc",
    "RepairReport": "cas.ops.repair",
    "RestoreReport": "cas.ops.restore.report",
    "SnapshotFilter": "cas.ops.snapshot.filter",
    "TreeFilter": "cas.ops.tree_filter",
    "RebuildReport": "cas.ops.sync",
    "VerifyReport": "cas.ops.verify",
    "Snapshot": "cas.store",
    "Store": "cas.store",
}

if TYPE_CHECKING:
    from cas.ops.browse import Change
    from cas.ops.gc import GcReport
    from cas.ops.repair import RepairReport
    from cas.ops.restore.report import RestoreReport
    from cas.ops.snapshot.filter import SnapshotFilter
    from cas.ops.sync import RebuildReport
    from cas.ops.tree_filter import TreeFilter
    from cas.ops.verify import VerifyReport
    from cas.store import Snapshot, Store


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'cas' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


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
