"""The project's error set (defined beside the backends, which must not import ``cas``)."""

from __future__ import annotations

from backends.errors import (
    AlreadyExists,
    CasError,
    ConfigurationError,
    IntegrityError,
    MissingDependency,
    NotFound,
    PermissionDenied,
    Unavailable,
)

__all__ = [
    "AlreadyExists",
    "CasError",
    "ConfigurationError",
    "IntegrityError",
    "MissingDependency",
    "NotFound",
    "PermissionDenied",
    "Unavailable",
]
