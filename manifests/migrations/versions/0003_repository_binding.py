"""The repository an index describes: its ID and location, recorded when the index is first used.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "repository",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("repo_id", sa.String(64), nullable=False),
        sa.Column("location", sa.Text, nullable=False),
        sa.Column("bound_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("repository")
