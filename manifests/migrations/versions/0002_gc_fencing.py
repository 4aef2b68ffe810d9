"""Garbage-collection fencing: pack states, tombstones, the fence row, damaged snapshots.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("packs") as batch:
        batch.add_column(sa.Column("state", sa.SmallInteger, nullable=False, server_default="0"))
        batch.add_column(sa.Column("condemned_epoch", sa.Integer, nullable=True))
        batch.add_column(sa.Column("condemned_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index("ix_packs_state", "packs", ["state"])
    op.create_table(
        "tombstones",
        sa.Column("pack_id", sa.String(64), primary_key=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    fence = op.create_table(
        "fence",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("epoch", sa.Integer, nullable=False),
    )
    op.bulk_insert(fence, [{"id": 1, "epoch": 0}])
    with op.batch_alter_table("snapshots") as batch:
        batch.add_column(sa.Column("damaged", sa.Boolean, nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("snapshots") as batch:
        batch.drop_column("damaged")
    op.drop_table("fence")
    op.drop_table("tombstones")
    op.drop_index("ix_packs_state", "packs")
    with op.batch_alter_table("packs") as batch:
        batch.drop_column("condemned_at")
        batch.drop_column("condemned_epoch")
        batch.drop_column("state")
