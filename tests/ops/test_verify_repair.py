"""verify, repair and rebuild-index, with the backend as the ground truth."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from cas import IntegrityError, Store
from cas.format.keys import pack_key
from tests.engine import REPO_KINDS, TEST_PASSWORD, object_file, repo_options
from tests.treeutil import describe

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(params=REPO_KINDS)
def store(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Store]:
    monkeypatch.setenv("CAS_HOME", str(tmp_path / "home"))
    s = Store.open(str(tmp_path / "repo"), index=f"sqlite:///{tmp_path / 'index.sqlite'}",
                   chunk_min=1024, chunk_avg=4096, chunk_max=16384, pack_size=1 << 20,
                   **repo_options(request.param))  # type: ignore[arg-type]
    yield s
    s.close()


def _two_runs(store: Store, tmp_path: Path) -> tuple[Path, Path]:
    rng = random.Random(3)
    a = tmp_path / "a"
    a.mkdir()
    (a / "shared.bin").write_bytes(rng.randbytes(30_000))
    store.snapshot(a, "run-a")
    b = tmp_path / "b"
    b.mkdir()
    (b / "own.bin").write_bytes(rng.randbytes(30_000))
    store.snapshot(b, "run-b")
    return a, b


def _pack_of(store: Store, execution_id: str, path: str) -> str:
    entry = store.entry(execution_id, path)
    assert entry is not None
    return store.repo.locate(entry.chunks)[entry.chunks[0]].pack_id


def _pack_file(store: Store, pack_id: str) -> Path:
    return object_file(store, pack_key(pack_id))


def test_clean_repository_verifies(store: Store, tmp_path: Path) -> None:
    _two_runs(store, tmp_path)
    report = store.verify(read_data=True)
    assert report.ok and report.snapshots == 2 and report.blobs_checked > 0


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_damage_is_named_by_execution_and_path_and_repair_is_consistent(
    store: Store, tmp_path: Path, damage: str
) -> None:
    _a, b = _two_runs(store, tmp_path)
    victim = _pack_of(store, "run-a", "shared.bin")
    path = _pack_file(store, victim)
    if damage == "flip":
        data = bytearray(path.read_bytes())
        data[10] ^= 0xFF
        path.write_bytes(bytes(data))
    elif damage == "truncate":
        path.write_bytes(path.read_bytes()[:1000])
    else:
        path.unlink()

    report = store.verify(read_data=True)
    assert not report.ok
    assert ("run-a", "shared.bin") in {(p.execution_id, p.path) for p in report.problems}
    assert "run-b" not in report.damaged

    store.restore("run-b", tmp_path / "out-b")  # the other execution is untouched
    assert describe(str(tmp_path / "out-b")) == describe(str(b))

    _, fixed = store.repair(read_data=True)
    assert "run-a" in fixed.snapshots_marked_damaged
    assert store.get("run-a").damaged
    assert path.exists() or damage == "delete"  # repair never deletes stored data
    after = store.verify(read_data=True)
    assert after.problems == [], [str(p) for p in after.problems]  # nothing new...
    assert not after.ok  # ...but a damaged snapshot that cannot be restored is never "ok"
    assert any(p.execution_id == "run-a" for p in after.known_damage)
    with pytest.raises(IntegrityError, match="shared.bin"):
        store.restore("run-a", tmp_path / "out-a")

    # A later snapshot of the same content stores it again instead of reusing the lost chunks.
    again = store.snapshot(tmp_path / "a", "run-a2", use_files_cache=False)
    assert again.stats["new_bytes"] > 0
    store.restore("run-a2", tmp_path / "out-a2")
    # That also makes run-a whole again: verify says its damaged mark is stale, repair clears it.
    store.restore("run-a", tmp_path / "out-a-again")
    assert describe(str(tmp_path / "out-a-again")) == describe(str(tmp_path / "a"))
    healed = store.verify(read_data=True)
    assert healed.ok and healed.stale_damage == ["run-a"]
    _, fixed = store.repair()
    assert fixed.damage_cleared == ["run-a"] and not store.get("run-a").damaged


def test_rebuild_index_from_the_backend_alone(store: Store, tmp_path: Path) -> None:
    a, b = _two_runs(store, tmp_path)
    os.unlink(tmp_path / "index.sqlite")
    fresh = Store.open(str(tmp_path / "repo"), index=f"sqlite:///{tmp_path / 'index.sqlite'}", password=TEST_PASSWORD)
    assert {s.execution_id for s in fresh.list()} == {"run-a", "run-b"}  # a new index starts as a sync
    report = fresh.rebuild_index()
    assert report.snapshots == 2 and report.packs > 0 and not report.skipped
    for execution_id, src in (("run-a", a), ("run-b", b)):
        fresh.restore(execution_id, tmp_path / f"out-{execution_id}")
        assert describe(str(tmp_path / f"out-{execution_id}")) == describe(str(src))
    assert fresh.verify(read_data=True).ok
    fresh.close()


def test_a_host_with_its_own_index_finds_other_hosts_snapshots(store: Store, tmp_path: Path) -> None:
    _a, b = _two_runs(store, tmp_path)
    other = Store.open(str(tmp_path / "repo"), index=f"sqlite:///{tmp_path / 'other-host.sqlite'}",
                       password=TEST_PASSWORD)
    other.restore("run-b", tmp_path / "out")  # not in its index: synced from the backend on demand
    assert describe(str(tmp_path / "out")) == describe(str(b))
    assert {s.execution_id for s in other.list()} == {"run-a", "run-b"}
    other.close()


def test_snapshot_object_without_row_is_a_root_and_repair_indexes_it(store: Store, tmp_path: Path) -> None:
    _a, b = _two_runs(store, tmp_path)
    store.repo.index.remove_snapshot("run-b")  # as if the writer died between object and row
    report = store.verify()
    assert report.ok and "run-b" in report.objects_without_rows
    _found, fixed = store.repair()
    assert fixed.rows_added == ["run-b"]
    assert store.verify().ok and not store.verify().objects_without_rows

    import datetime as dt

    store.repo.index.remove_snapshot("run-b")
    for _ in range(3):  # GC counts the object as a root (and indexes it again): nothing of it goes
        assert not store.gc(grace=dt.timedelta(0)).deleted
    store.restore("run-b", tmp_path / "out")
    assert describe(str(tmp_path / "out")) == describe(str(b))


def test_cli_verify_exit_status(store: Store, tmp_path: Path) -> None:
    _two_runs(store, tmp_path)
    env = {**os.environ, "CAS_HOME": str(tmp_path / "home"), "PYTHONPATH": str(ROOT), "CAS_PASSWORD": TEST_PASSWORD}
    args = [sys.executable, "-m", "cas", "--repo", str(tmp_path / "repo"), "--index",
            f"sqlite:///{tmp_path / 'index.sqlite'}", "verify", "--read-data"]
    assert subprocess.run(args, env=env, capture_output=True, check=False).returncode == 0
    _pack_file(store, _pack_of(store, "run-a", "shared.bin")).unlink()
    proc = subprocess.run(args, env=env, capture_output=True, text=True, check=False)
    assert proc.returncode == 1
    assert "run-a:shared.bin" in proc.stdout
