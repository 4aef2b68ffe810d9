"""Migrations carry existing rows forward: an index written at 0003 opens at the head revision."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, inspect

from manifests.database import SCHEMA_HEAD
from manifests.index import Index
from tests.servers.postgres import postgres_admin, postgres_url  # noqa: F401

MIGRATIONS = Path(__file__).resolve().parents[2] / "manifests" / "migrations"


def _upgrade(url: str, revision: str) -> None:
    """Run the migrations up to ``revision`` on the database at ``url``, with Alembic."""
    engine = create_engine(url)
    with engine.begin() as conn:
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        config.attributes["connection"] = conn
        command.upgrade(config, revision)
    engine.dispose()


def test_root_metadata_moves_from_stats_to_columns(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.sqlite'}"
    _upgrade(url, "0003")
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


# -- 0005: tree entries, back-filled by the engine --------------------------------------------------

PREVIOUS = "3286ce2"  # the last commit whose schema is 0004
ROOT = MIGRATIONS.parents[1]


@pytest.fixture(params=["sqlite", "postgresql"])
def index_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'index.sqlite'}"
    return str(request.getfixturevalue("postgres_url"))


def _previous_cas(tmp_path: Path) -> Path:
    """The code of the previous schema, checked out of this repository's history."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs git and this repository's history to run the previous version")
    out = tmp_path / "previous-cas"
    out.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", PREVIOUS, "cas", "backends", "manifests"],
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(out)], input=archive, check=True)
    return out


def test_an_index_written_by_the_previous_version_gets_tree_entries(
        tmp_path: Path, index_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    old = _previous_cas(tmp_path)
    repo = tmp_path / "repo"
    env = {**os.environ, "CAS_HOME": str(tmp_path / "home"), "PYTHONPATH": str(old)}

    def old_cas(*args: str) -> None:
        subprocess.run([sys.executable, "-m", "cas", "--repo", str(repo), "--index", index_url, *args],
                       check=True, env=env, cwd=tmp_path, capture_output=True)

    src = tmp_path / "src"
    (src / "code" / "pkg").mkdir(parents=True)
    (src / "code" / "pkg" / "a.py").write_text("a\n")
    (src / "code" / "b.py").write_text("b\n")
    (src / "data.bin").write_bytes(b"\x01" * 5000)
    old_cas("snapshot", str(src), "-e", "old-1", "--label", "workflow=train")
    (src / "code" / "pkg" / "a.py").write_text("a, changed\n")
    (src / "code" / "c.py").write_text("c\n")
    old_cas("snapshot", str(src), "-e", "old-2", "--label", "workflow=eval")
    engine = create_engine(index_url.replace("postgresql://", "postgresql+psycopg://"))
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar() == "0004"
    engine.dispose()

    from cas import Store
    from cas.ops import browse
    from tests.ops.test_find import CountingBackend, _by_reading

    monkeypatch.setenv("CAS_HOME", env["CAS_HOME"])
    backend = CountingBackend(str(repo))
    with Store.open(backend, index=index_url) as store:  # migrates, then fills the tree entries
        rows = store.repo.index.snapshots()
        assert {r.execution_id for r in rows} == {"old-1", "old-2"} and all(r.trees_indexed for r in rows)
        reference = _by_reading(store, ["old-2", "old-1"], "*.py")
        listings = {e: [(p, x.type, x.size, x.digest) for p, x in browse.walk(store.repo, store.get(e).root, "", True)]
                    for e in ("old-1", "old-2")}
        changes = browse.diff_trees(store.repo, store.get("old-1").root, store.get("old-2").root)
        backend.calls.clear()
        assert list(store.find("*.py")) == reference
        assert [f.path for f in reference if f.execution_id == "old-2"] == ["code/b.py", "code/c.py", "code/pkg/a.py"]
        assert [f.execution_id for f in store.find("b.py", labels={"workflow": "train"})] == ["old-1"]
        for eid, want in listings.items():
            assert [(p, x.type, x.size, x.digest) for p, x in store.ls(eid, recursive=True)] == want
        assert store.diff("old-1", "old-2") == changes
        assert backend.calls == []
        # New snapshots on the upgraded index carry their entries from the commit.
        store.snapshot(src, "new-3")
        assert store.repo.index.snapshot("new-3").trees_indexed


# -- a new index: the models' schema, the same as the migrations' -----------------------------------


def _schema(url: str) -> dict[str, object]:
    """Everything the database says of its tables: columns in order (type, nullability, server
    default), keys, indexes, constraints; and the rows of the fence and the version table."""
    from sqlalchemy import text

    engine = create_engine(url)
    try:
        inspector = inspect(engine)
        out: dict[str, object] = {}
        for table in sorted(inspector.get_table_names()):
            out[table] = {
                "columns": [(c["name"], str(c["type"]), c["nullable"], c.get("default"))
                            for c in inspector.get_columns(table)],
                "primary key": inspector.get_pk_constraint(table),
                "foreign keys": inspector.get_foreign_keys(table),
                "indexes": sorted((i["name"], tuple(i["column_names"]), bool(i["unique"]))
                                  for i in inspector.get_indexes(table)),
                "unique": inspector.get_unique_constraints(table),
                "checks": inspector.get_check_constraints(table),
            }
        with engine.connect() as conn:
            out["fence rows"] = [tuple(r) for r in conn.execute(text("SELECT id, epoch FROM fence"))]
            out["version rows"] = [tuple(r) for r in conn.execute(text("SELECT version_num FROM alembic_version"))]
        return out
    finally:
        engine.dispose()


def test_a_new_index_has_exactly_the_schema_the_migrations_build(index_url: str) -> None:
    """A new index is created from the models, without Alembic; an index created by running every
    migration on an empty database must be the same, column for column, on SQLite and PostgreSQL."""
    _upgrade(index_url, "head")
    migrated = _schema(index_url)
    engine = create_engine(index_url)
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.exec_driver_sql("DROP SCHEMA public CASCADE")
            conn.exec_driver_sql("CREATE SCHEMA public")
        else:
            for (name,) in conn.exec_driver_sql("SELECT name FROM sqlite_master WHERE type = 'table'").all():
                conn.exec_driver_sql(f'DROP TABLE "{name}"')
        assert inspect(conn).get_table_names() == []
    engine.dispose()
    Index.open(index_url).close()
    created = _schema(index_url)
    assert created == migrated
    assert set(created) >= {"packs", "blobs", "snapshots", "tree_entries", "fence", "alembic_version"}


def test_opening_a_new_index_loads_no_alembic(tmp_path: Path) -> None:
    code = """
import json, sys
from manifests.index import Index
Index.open(sys.argv[1]).close()
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in ("alembic", "mako"))))
"""
    url = f"sqlite:///{tmp_path / 'new.sqlite'}"
    proc = subprocess.run([sys.executable, "-c", code, url], capture_output=True, text=True, check=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert json.loads(proc.stdout) == []
    with sqlite3.connect(tmp_path / "new.sqlite") as db:
        assert db.execute("SELECT version_num FROM alembic_version").fetchone()[0] == SCHEMA_HEAD
        assert db.execute("SELECT id, epoch FROM fence").fetchall() == [(1, 0)]
