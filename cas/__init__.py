"""cas: a content-addressed, deduplicated artifact store for ML workflows."""

from __future__ import annotations

from cas.errors import (
    AlreadyExists,
    CasError,
    ConfigurationError,
    IntegrityError,
    MissingDependency,
    NotFound,
    PermissionDenied,
    Unavailable,
)
from cas.store import Change, Snapshot, Store

__version__ = "0.1.0"

__all__ = [
    "AlreadyExists",
    "CasError",
    "Change",
    "ConfigurationError",
    "IntegrityError",
    "MissingDependency",
    "NotFound",
    "PermissionDenied",
    "Snapshot",
    "Store",
    "Unavailable",
]
