"""Tree entries in the index, keyed by tree ID, so ls, find and diff are queries (issue 15).

Revision ID: 0005
Revises: 0004

Existing snapshots get ``trees_indexed`` false: a migration cannot read trees (they are on the
backend, and ``manifests`` knows neither backends nor the tree format), so the engine fills their
entries when it next opens the repository (``cas.ops.tree_index.fill_tree_index``).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "tree_entries",
        sa.Column("tree_id", sa.String(64), primary_key=True),
        sa.Column("name", sa.LargeBinary, primary_key=True),
        sa.Column("type", sa.String(8), nullable=False),
        sa.Column("mode", sa.Integer, nullable=False),
        sa.Column("mtime_ns", sa.BigInteger, nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("digest", sa.String(64), nullable=True),
        sa.Column("target", sa.LargeBinary, nullable=True),
        sa.Column("child", sa.String(64), nullable=True),
    )
    op.create_index("ix_tree_entries_digest", "tree_entries", ["digest"])
    with op.batch_alter_table("snapshots") as batch:
        batch.add_column(sa.Column("trees_indexed", sa.Boolean, nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("snapshots") as batch:
        batch.drop_column("trees_indexed")
    op.drop_index("ix_tree_entries_digest", "tree_entries")
    op.drop_table("tree_entries")
