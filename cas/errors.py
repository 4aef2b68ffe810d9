"""The project's error set (defined beside the backends, which must not import ``cas``)."""

from __future__ import annotations

import errno

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


class PartialRestore(IntegrityError):
    """A restore that finished with some entries not restored (each listed in ``failures`` as
    ``(path, message)``); everything else was restored. An IntegrityError, since the stored data of
    those entries could not be used; the CLI exits 3."""

    def __init__(self, message: str, failures: list[tuple[str, str]]) -> None:
        super().__init__(message)
        self.failures = failures


class ReadError(IntegrityError, OSError):
    """A read through a file interface (a range reader, fsspec, the mount) met stored data that
    failed verification or is missing: an I/O error (``errno`` EIO) for that read, naming the file.
    No bytes of the failed read are returned."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.errno = errno.EIO
        self.strerror = message

    def __str__(self) -> str:
        return self.strerror


__all__ = [
    "AlreadyExists",
    "CasError",
    "ConfigurationError",
    "IntegrityError",
    "MissingDependency",
    "NotFound",
    "PartialRestore",
    "PermissionDenied",
    "ReadError",
    "Unavailable",
]
