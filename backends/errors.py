"""The small, fixed set of errors every layer of cas speaks.

Backends translate their SDK's failures into these (one table per backend), the engine raises them
for its own failures, and the CLI turns any of them into one line on stderr. Whether an error is
worth retrying is a property of the error (``temporary``), so a retry wrapper asks one question.
Each class has a default answer and a translation table may give another for one error: a full
disk is :class:`Unavailable` but retrying it will not help, so it is raised ``temporary=False``.
"""

from __future__ import annotations


class CasError(Exception):
    """Base of every error cas raises on purpose. ``temporary`` errors may succeed when retried.

    ``temporary`` defaults to the class's answer; pass it to decide for this one error.
    """

    temporary: bool = False

    def __init__(self, message: str, *, request_id: str | None = None, temporary: bool | None = None) -> None:
        if request_id:
            message = f"{message} (request id {request_id})"
        super().__init__(message)
        self.request_id = request_id
        if temporary is not None:
            self.temporary = temporary


class NotFound(CasError, FileNotFoundError):
    """The object, execution ID or path does not exist."""


class AlreadyExists(CasError, FileExistsError):
    """A put that must not overwrite found the name taken, or an execution ID is already used."""


class PermissionDenied(CasError, PermissionError):
    """Credentials were refused or the caller may not do this."""


class IntegrityError(CasError):
    """Stored bytes do not match their hash, or a stored structure is malformed."""


class Unavailable(CasError):
    """The storage could not be reached or failed; retrying may help unless ``temporary`` is
    false (a full disk, an exceeded quota)."""

    temporary = True


class MissingDependency(CasError, ImportError):
    """An optional SDK is not installed; the message names the pip extra to install."""


class ConfigurationError(CasError, ValueError):
    """A URL, option or configuration value is wrong; the message names it."""


#: Every error class above: the whole set, so a new one cannot be left out of it.
__all__ = [
    name for name, value in sorted(globals().items()) if isinstance(value, type) and issubclass(value, CasError)
]
