"""Migrations carry existing rows forward: an index written at 0003 opens at the head revision."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine

from manifests.database import SCHEMA_HEAD
from manifests.index import Index

MIGRATIONS = Path(__file__).resolve().parents[2] / "manifests" / "migrations"


def test_root_metadata_moves_from_stats_to_columns(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.sqlite'}"
    engine = create_engine(url)
    with engine.begin() as conn:
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        config.attributes["connection"] = conn
        command.upgrade(config, "0003")
    engine.dispose()
    stats = {"files": 3, "root_mode": 0o750, "root_mtime_ns": 1234}
    with sqlite3.connect(tmp_path / "old.sqlite") as db:
        db.execute(
            "INSERT INTO snapshots (execution_id, root_tree, created_at, time_ns, labels, stats, logical_bytes,"
            " new_bytes, stored_bytes, damaged) VALUES ('run-1', ?, '2026-01-01 00:00:00', 99, '{}', ?, 0, 0, 0, 0)",
            ("a" * 64, json.dumps(stats)),
        )
    index = Index.open(url)
    row = index.snapshot("run-1")
    assert row is not None
    assert (row.root_mode, row.root_mtime_ns, row.stats) == (0o750, 1234, {"files": 3})
    with sqlite3.connect(tmp_path / "old.sqlite") as db:
        assert db.execute("SELECT version_num FROM alembic_version").fetchone()[0] == SCHEMA_HEAD
    index.close()
