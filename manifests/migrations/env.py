"""Alembic environment: always run on a connection handed in by :mod:`manifests.index`."""

from __future__ import annotations

from alembic import context

from manifests.models import Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
