"""Garbage collection: frees what nothing references, never what a writer is about to reference.

Each test runs on SQLite and on PostgreSQL (the fence is a row lock there, the write lock here).
"""

from __future__ import annotations

import datetime as dt
import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from cas import Store
from cas.format.keys import pack_key
from cas.ops.snapshot import take as snapshot_op
from manifests.rows import PackState
from tests.engine import REPO_KINDS, repo_options
from tests.servers.postgres import postgres_admin, postgres_url  # noqa: F401
from tests.treeutil import describe

NOW = dt.timedelta(0)


@pytest.fixture(params=["sqlite", "postgresql"])
def index_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'index.sqlite'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture(params=REPO_KINDS)
def store(
    request: pytest.FixtureRequest, tmp_path: Path, index_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Store]:
    monkeypatch.setenv("CAS_HOME", str(tmp_path / "home"))
    s = Store.open(str(tmp_path / "repo"), index=index_url, chunk_min=1024, chunk_avg=4096,
                   chunk_max=16384, pack_size=1 << 20, **repo_options(request.param))  # type: ignore[arg-type]
    yield s
    s.close()


def _tree(root: Path, seed: int, files: int = 6, size: int = 40_000) -> Path:
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        (root / f"f{i}.bin").write_bytes(rng.randbytes(size))
    return root


def _packs_on_backend(store: Store) -> set[str]:
    return {i.key.rsplit("/", 1)[-1] for i in store.repo.backend.list("data/")}


def test_forget_then_gc_frees_only_unreferenced_packs(store: Store, tmp_path: Path) -> None:
    a = _tree(tmp_path / "a", seed=1)
    b = _tree(tmp_path / "b", seed=2)
    store.snapshot(a, "run-a")
    store.snapshot(b, "run-b")
    before = _packs_on_backend(store)
    store.forget(["run-a"])
    first = store.gc(grace=NOW)
    assert first.condemned and not first.deleted  # two steps: condemn, then delete next run
    second = store.gc(grace=NOW)
    assert second.deleted and second.deleted_bytes > 0
    after = _packs_on_backend(store)
    assert after < before
    store.restore("run-b", tmp_path / "out")
    assert describe(str(tmp_path / "out")) == describe(str(b))
    assert store.verify(read_data=True).ok


def test_dry_run_changes_nothing(store: Store, tmp_path: Path) -> None:
    store.snapshot(_tree(tmp_path / "a", seed=1), "run-a")
    store.forget(["run-a"])
    before = _packs_on_backend(store)
    report = store.gc(grace=NOW, dry_run=True)
    assert report.condemned and all("references" in report.reasons[p] for p in report.condemned)
    assert _packs_on_backend(store) == before
    assert store.gc(grace=NOW, dry_run=True).condemned == report.condemned


def test_grace_period_spares_young_packs(store: Store, tmp_path: Path) -> None:
    store.snapshot(_tree(tmp_path / "a", seed=1), "run-a")
    store.forget(["run-a"])
    report = store.gc(grace=dt.timedelta(hours=1))
    assert not report.condemned and not report.deleted


def test_writer_that_reused_a_condemned_pack_rescues_it(store: Store, tmp_path: Path) -> None:
    src = _tree(tmp_path / "a", seed=1)
    store.snapshot(src, "run-a")
    store.forget(["run-a"])
    # A writer starts, finds every chunk stored (live), and reuses it; GC condemns the packs
    # before the writer commits. The commit must rescue them, and later GCs must keep them.
    original = snapshot_op.commit

    def commit_after_gc(repo, record, referenced, *rest):  # type: ignore[no-untyped-def]
        condemned = store.gc(grace=NOW).condemned
        assert condemned, "GC should have condemned the reused packs"
        return original(repo, record, referenced, *rest)

    snapshot_op.commit = commit_after_gc  # type: ignore[assignment]
    try:
        snap = store.snapshot(src, "run-b", use_files_cache=False)
    finally:
        snapshot_op.commit = original  # type: ignore[assignment]
    assert snap.stats["new_bytes"] == 0  # everything was reused
    # The commit itself made them live again, before any later GC could see the snapshot (a GC
    # whose mark missed the snapshot would otherwise delete them: tests/ops/test_guarantees.py).
    assert {p.state for p in store.repo.index.pack_rows()} == {PackState.LIVE}
    after = store.gc(grace=NOW)
    assert not after.rescued and not after.deleted  # nothing left for GC to rescue
    for _ in range(2):
        assert not store.gc(grace=NOW).deleted
    store.restore("run-b", tmp_path / "out")
    assert describe(str(tmp_path / "out")) == describe(str(src))


def test_writer_whose_reused_pack_was_deleted_stores_again(store: Store, tmp_path: Path) -> None:
    src = _tree(tmp_path / "a", seed=1)
    store.snapshot(src, "run-a")
    store.forget(["run-a"])
    original = snapshot_op.commit
    calls = []

    def commit_after_two_gcs(repo, record, referenced, *rest):  # type: ignore[no-untyped-def]
        if not calls:
            store.gc(grace=NOW)
            assert store.gc(grace=NOW).deleted, "the second GC should delete the condemned packs"
        calls.append(record.execution_id)
        return original(repo, record, referenced, *rest)

    snapshot_op.commit = commit_after_two_gcs  # type: ignore[assignment]
    try:
        snap = store.snapshot(src, "run-b", use_files_cache=False)
    finally:
        snapshot_op.commit = original  # type: ignore[assignment]
    assert calls == ["run-b", "run-b"]  # the first commit found its blobs gone and was redone
    assert snap.stats["new_bytes"] > 0
    store.restore("run-b", tmp_path / "out")
    assert describe(str(tmp_path / "out")) == describe(str(src))
    assert store.verify(read_data=True).ok


def test_orphan_pack_from_an_interrupted_writer_is_reclaimed(store: Store, tmp_path: Path) -> None:
    store.snapshot(_tree(tmp_path / "a", seed=1), "run-a")
    from cas.format.packs import PackBuilder

    builder = PackBuilder()
    builder.add("ab" * 32, 0, 0, b"orphan bytes", 12)
    pack_id, data, _ = builder.seal()
    # Uploaded in part and never indexed: the writer died mid-upload on a backend without atomic
    # puts. Its trailer cannot be read, so GC's sync cannot index it: GC adopts it as an orphan.
    store.repo.backend.put(pack_key(pack_id), bytes(data)[: len(data) // 2])
    first = store.gc(grace=NOW)
    assert "interrupted writer" in first.reasons[pack_id]
    adopted = {p.id: p for p in store.repo.index.pack_rows()}.get(pack_id)
    assert adopted is not None and adopted.state == PackState.CONDEMNED and adopted.condemned_epoch == first.epoch
    assert first.orphans_adopted == 1
    assert pack_id not in first.deleted  # condemned in this run's epoch: only a later run deletes it
    assert store.repo.backend.exists(pack_key(pack_id))
    second = store.gc(grace=NOW)
    assert pack_id in second.deleted
    assert not store.repo.backend.exists(pack_key(pack_id))
    assert store.verify(read_data=True).ok


def test_complete_unindexed_pack_is_indexed_then_collected(store: Store, tmp_path: Path) -> None:
    """A whole pack that no row names (writer died between upload and index insert) is indexed by
    GC's sync, then goes through condemn and delete like any unreferenced pack."""
    store.snapshot(_tree(tmp_path / "a", seed=1), "run-a")
    from cas.format.packs import PackBuilder

    builder = PackBuilder()
    builder.add("cd" * 32, 0, 0, b"orphan bytes", 12)
    pack_id, data, _ = builder.seal()
    store.repo.backend.put(pack_key(pack_id), data)
    first = store.gc(grace=NOW)
    assert pack_id in first.condemned and pack_id not in first.deleted
    assert pack_id in store.gc(grace=NOW).deleted
    assert not store.repo.backend.exists(pack_key(pack_id))


def test_mostly_dead_pack_is_repacked_and_data_survives(store: Store, tmp_path: Path) -> None:
    src = tmp_path / "mix"
    src.mkdir()
    rng = random.Random(5)
    (src / "keep.bin").write_bytes(rng.randbytes(10_000))
    (src / "drop.bin").write_bytes(rng.randbytes(200_000))
    store.snapshot(src, "run-1")
    (src / "drop.bin").unlink()
    store.snapshot(src, "run-2")
    store.forget(["run-1"])
    report = store.gc(grace=NOW)
    assert report.repacked
    for _ in range(2):  # condemn the emptied pack, then delete it
        store.gc(grace=NOW)
    assert not set(report.repacked) & _packs_on_backend(store)
    store.restore("run-2", tmp_path / "out")
    assert (tmp_path / "out" / "keep.bin").read_bytes() == (src / "keep.bin").read_bytes()
    assert store.verify(read_data=True).ok


def test_forget_keep_policies_via_cli_shape(store: Store, tmp_path: Path) -> None:
    for i in range(4):
        store.snapshot(_tree(tmp_path / f"t{i}", seed=i, files=1, size=100), f"run-{i}")
    store.forget([s.execution_id for s in store.list()[2:]])
    assert [s.execution_id for s in store.list()] == ["run-3", "run-2"]
    assert not store.repo.backend.exists("snapshots/run-0")


def test_files_cache_naming_collected_chunks_is_not_trusted(store: Store, tmp_path: Path) -> None:
    src = _tree(tmp_path / "a", seed=9)
    old = 1_600_000_000_000_000_000
    for p in src.iterdir():
        os.utime(p, ns=(old, old))  # old enough for the files cache to remember them
    store.snapshot(src, "run-a")
    store.forget(["run-a"])
    store.gc(grace=NOW)
    assert store.gc(grace=NOW).deleted  # the cached files' chunks are gone now
    snap = store.snapshot(src, "run-b")  # the cache still vouches for every file
    assert snap.stats["new_bytes"] > 0
    store.restore("run-b", tmp_path / "out")
    assert describe(str(tmp_path / "out")) == describe(str(src))
    assert store.verify(read_data=True).ok
