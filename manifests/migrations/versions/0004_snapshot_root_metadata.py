"""The root directory's mode and mtime as columns of ``snapshots`` (they were carried in ``stats``).

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import json

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("snapshots") as batch:
        batch.add_column(sa.Column("root_mode", sa.Integer, nullable=False, server_default="493"))  # 0o755
        batch.add_column(sa.Column("root_mtime_ns", sa.BigInteger, nullable=False, server_default="0"))
    conn = op.get_bind()
    table = sa.table(
        "snapshots", sa.column("execution_id", sa.String), sa.column("stats", sa.JSON),
        sa.column("time_ns", sa.BigInteger), sa.column("root_mode", sa.Integer),
        sa.column("root_mtime_ns", sa.BigInteger),
    )
    for execution_id, stats, time_ns in conn.execute(sa.select(table.c.execution_id, table.c.stats, table.c.time_ns)):
        stats = json.loads(stats) if isinstance(stats, str) else dict(stats or {})
        mode = stats.pop("root_mode", 0o755)
        mtime = stats.pop("root_mtime_ns", time_ns)
        conn.execute(
            table.update().where(table.c.execution_id == execution_id)
            .values(root_mode=mode, root_mtime_ns=mtime, stats=stats)
        )


def downgrade() -> None:
    with op.batch_alter_table("snapshots") as batch:
        batch.drop_column("root_mtime_ns")
        batch.drop_column("root_mode")
