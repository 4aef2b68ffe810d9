"""The one ``repository`` row: which repository (ID and location) an index describes."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import select, update

from backends.errors import ConfigurationError
from manifests.connection import IndexConnection
from manifests.models import RepositoryBinding
from manifests.statements import BINDING


class BindingIndex(IndexConnection):
    """The part of :class:`~manifests.index.Index` that ties it to one repository."""

    def bind(self, repo_id: str, location: str, *, rebind: bool = False) -> bool:
        """Check that this index describes the repository ``repo_id`` at ``location``; record it when
        the index describes none yet. Returns True if it was bound now (a new index).

        A copy of a repository (``cp -a``, a bucket sync) keeps its ID; an index used with the copy
        would offer chunks the copy may not hold, so a different location is refused unless
        ``rebind`` (the repository moved, or the index is being rebuilt from this backend).
        """
        # Every command opens the index, so the usual case (bound to this repository) is one read,
        # not a write transaction (a reader's database role may have no write rights at all).
        with self._read() as conn:
            found = conn.exec_driver_sql(BINDING).first()
        if found is not None and tuple(found) == (repo_id, location):
            return False
        now = dt.datetime.now(dt.timezone.utc)
        with self._write() as conn:
            bound = conn.execute(select(RepositoryBinding).where(RepositoryBinding.id == 1)).first()
            if bound is None:
                inserted = conn.execute(
                    self._insert_ignore(RepositoryBinding, ["id"]),
                    [{"id": 1, "repo_id": repo_id, "location": location, "bound_at": now}],
                ).rowcount
                # Another process may have bound it first (rowcount 0, or -1 where the driver cannot
                # tell): what counts is the row that is there now.
                bound = conn.execute(select(RepositoryBinding).where(RepositoryBinding.id == 1)).one()
                new = inserted != 0
                if bound.repo_id == repo_id and bound.location == location:
                    return new
            if bound.repo_id == repo_id and bound.location == location:
                return False
            if rebind:
                conn.execute(
                    update(RepositoryBinding).where(RepositoryBinding.id == 1)
                    .values(repo_id=repo_id, location=location, bound_at=now)
                )
                return False
        if bound.repo_id != repo_id:
            raise ConfigurationError(
                f"index {self.describe()} describes another repository (ID {bound.repo_id} at {bound.location}), "
                f"not {repo_id} at {location}: use the index of this repository"
            )
        raise ConfigurationError(
            f"index {self.describe()} describes this repository at {bound.location}, not at {location} "
            "(a copy?): give a copy its own --index; if the repository moved, 'cas rebuild-index' rebinds the index"
        )
