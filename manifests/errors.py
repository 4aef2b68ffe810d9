"""The index's own errors, each a kind of the project's domain errors (:mod:`backends.errors`)."""

from __future__ import annotations

from backends.errors import IntegrityError, NotFound, Unavailable


class SnapshotWithdrawn(NotFound):
    """The snapshot object was removed (forgotten, or withdrawn by its writer) before its row could be
    committed; nothing was inserted."""


class PackBeingDeleted(Unavailable):
    """Garbage collection is deleting, or has deleted, a pack with this name; upload it again once
    no tombstone of that name is left."""


class IndexDamaged(IntegrityError):
    """The index database itself is damaged (SQLite: not a database, malformed pages, undecodable text).

    ``path`` is the SQLite file, or None for a server database. The message says how to recover:
    the backend is the ground truth, so the index is rebuilt from it (``cas rebuild-index`` sets a
    damaged SQLite file aside first, see :func:`manifests.database.set_aside`).
    """

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path
