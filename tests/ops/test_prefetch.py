"""Prefetch against a real S3 server (moto): afterwards a restore reads nothing from the backend."""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from backends import open_backend
from backends.faulty import FaultyBackend
from cas import Store
from cas.errors import CasError
from tests.servers.s3 import REGION, moto_server  # noqa: F401
from tests.treeutil import describe

ROOT = Path(__file__).resolve().parents[2]
CHUNKS = {"chunk_min": 1024, "chunk_avg": 4096, "chunk_max": 16384, "pack_size": 1 << 20}


def _tree(root: Path, seed: int, shared: Path | None = None) -> Path:
    rng = random.Random(seed)
    (root / "src").mkdir(parents=True)
    for i in range(6):
        (root / "src" / f"m{i}.py").write_bytes(rng.randbytes(rng.randint(100, 30_000)))
    (root / "model.bin").write_bytes(rng.randbytes(700_000))
    if shared is not None:  # dependencies every execution has
        (root / "deps").mkdir()
        for f in sorted(shared.iterdir()):
            (root / "deps" / f.name).write_bytes(f.read_bytes())
    return root


@pytest.fixture
def s3_repo(tmp_path: Path, moto_server: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:  # noqa: F811
    """Three executions in a fresh bucket; their sources; how to reach it (env for the CLI)."""
    bucket = "prefetch-" + os.urandom(4).hex()
    moto_server.client().create_bucket(Bucket=bucket)
    env = {"AWS_ENDPOINT_URL": moto_server.endpoint_url, "AWS_ACCESS_KEY_ID": moto_server.access_key_id,
           "AWS_SECRET_ACCESS_KEY": moto_server.secret_access_key, "AWS_DEFAULT_REGION": REGION,
           "CAS_HOME": str(tmp_path / "home")}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("CAS_CACHE_MAX", raising=False)
    monkeypatch.delenv("CAS_CHUNK_CACHE", raising=False)
    shared = tmp_path / "shared"
    shared.mkdir()
    rng = random.Random(99)
    for i in range(4):
        (shared / f"lib{i}.so").write_bytes(rng.randbytes(400_000))
    url, index = f"s3://{bucket}/cas", f"sqlite:///{tmp_path / 'index.sqlite'}"
    sources = {}
    with Store.open(url, index=index, chunk_cache=False, **CHUNKS) as store:
        for n in range(3):
            sources[f"exec-{n}"] = _tree(tmp_path / f"src{n}", n, shared)
            store.snapshot(sources[f"exec-{n}"], f"exec-{n}")
    yield {"url": url, "index": index, "env": env, "sources": sources}


def _offline_restore(spec: dict[str, Any], execution_id: str, dest: Path, cache: str | bool = True) -> None:
    """Restore with every backend call failing (reads from the cache only, or an error)."""
    backend = FaultyBackend(open_backend(spec["url"]), fail_rate=0.0)
    with Store.open(backend, index=spec["index"], chunk_cache=cache) as store:
        backend.fail_rate = 1.0  # opened (the config was read); from now on the backend is unreachable
        calls = backend.calls
        store.restore(execution_id, dest)
        assert backend.calls == calls  # not even a failed attempt
    assert describe(str(dest)) == describe(str(spec["sources"][execution_id]))


def test_prefetch_then_restore_with_the_backend_unreachable(s3_repo: dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(CasError):  # without prefetch, the same restore needs the backend
        _offline_restore(s3_repo, "exec-0", tmp_path / "before", cache=str(tmp_path / "empty-cache"))

    with Store.open(s3_repo["url"], index=s3_repo["index"]) as store:
        report = store.prefetch(["exec-0", "exec-1"])
        assert report.executions == 2 and report.failures == []
        assert report.fetched_chunks == report.chunks > 0 and report.already_cached == 0
        assert report.cached == report.chunks
        again = store.prefetch(["exec-1", "exec-0"])
        assert again.fetched_chunks == 0 and again.already_cached == again.chunks == report.chunks
        third = store.prefetch(["exec-2"])  # shares deps/: only what is new is fetched
        assert 0 < third.fetched_chunks < third.chunks and third.already_cached > 0
    for n in range(3):
        _offline_restore(s3_repo, f"exec-{n}", tmp_path / f"out{n}")


def test_prefetch_through_the_cli(s3_repo: dict[str, Any], tmp_path: Path) -> None:
    env = {**os.environ, **s3_repo["env"], "PYTHONPATH": str(ROOT)}
    base = [sys.executable, "-m", "cas", "--repo", s3_repo["url"], "--index", s3_repo["index"]]
    proc = subprocess.run([*base, "--json", "prefetch", "exec-1", "exec-2"], check=False, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["fetched_chunks"] == report["chunks"] == report["cached"] > 0
    proc = subprocess.run([*base, "prefetch", "exec-1"], check=False, capture_output=True, text=True, env=env)
    assert proc.returncode == 0 and "fetched 0 " in proc.stdout
    _offline_restore(s3_repo, "exec-2", tmp_path / "out")

    # A cap too small for the executions: said on stderr, still exit 0 (the cache is best effort).
    proc = subprocess.run([*base, "--cache-max", "64KiB", "prefetch", "exec-0"], check=False, capture_output=True, text=True,
                          env=env)
    assert proc.returncode == 0 and "too small" in proc.stderr
    proc = subprocess.run([*base, "prefetch", "no-such-exec"], check=False, capture_output=True, text=True, env=env)
    assert proc.returncode == 1 and proc.stderr.startswith("cas: error:") and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def _prefetcher(spec: dict[str, Any], barrier: Any, out: Any) -> None:
    os.environ.update(spec["env"])
    with Store.open(spec["url"], index=spec["index"]) as store:
        barrier.wait()
        out.put(store.prefetch(["exec-0", "exec-1", "exec-2"]).to_dict())


def test_processes_prefetching_at_once_fetch_each_chunk_once(s3_repo: dict[str, Any], tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    barrier, out = ctx.Barrier(3), ctx.Queue()
    spec = {k: s3_repo[k] for k in ("url", "index", "env")}
    procs = [ctx.Process(target=_prefetcher, args=(spec, barrier, out)) for _ in range(3)]
    for p in procs:
        p.start()
    reports = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(30)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    chunks = {r["chunks"] for r in reports}
    assert len(chunks) == 1
    # Between them the processes fetched every chunk exactly once.
    assert sum(r["fetched_chunks"] for r in reports) == chunks.pop()
    claims = Path(s3_repo["env"]["CAS_HOME"]) / "cache" / "chunks" / "claims"
    assert os.listdir(claims) == []  # every claim removed by its holder
    for n in range(3):
        _offline_restore(s3_repo, f"exec-{n}", tmp_path / f"out{n}")


def test_prefetch_reports_a_missing_pack(s3_repo: dict[str, Any], moto_server: Any) -> None:  # noqa: F811
    bucket = s3_repo["url"].split("/")[2]
    client = moto_server.client()
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix="cas/data/")["Contents"]]
    with Store.open(s3_repo["url"], index=s3_repo["index"]) as store:
        sizes = {k: client.head_object(Bucket=bucket, Key=k)["ContentLength"] for k in keys}
        client.delete_object(Bucket=bucket, Key=max(sizes, key=sizes.__getitem__))  # a data pack
        with pytest.raises(CasError, match="missing"):
            store.prefetch(["exec-0", "exec-1", "exec-2"])


def test_prefetch_reads_the_trees_of_a_level_together(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The trees of executions are read level by level, a level's nodes with one request per
    stretch of a tree pack: a tree of 40 directories costs a few reads of tree packs, not 41."""
    from backends.counting import CountingBackend
    from backends.local import LocalBackend
    from cas.format.keys import pack_key
    from cas.types import BlobKind

    monkeypatch.setenv("CAS_HOME", str(tmp_path / "home"))
    src = tmp_path / "src"
    for i in range(40):
        (src / f"d{i:02}").mkdir(parents=True)
        (src / f"d{i:02}" / "f").write_bytes(os.urandom(100 + i))
    backend = CountingBackend(LocalBackend(str(tmp_path / "repo")))
    with Store.open(backend, index=f"sqlite:///{tmp_path / 'index.sqlite'}",
                    chunk_cache=str(tmp_path / "cache")) as store:
        store.snapshot(src, "run")
        trees = [e.tree for e in store.repo.read_tree(store.get("run").root)] + [store.get("run").root]
        tree_packs = {pack_key(loc.pack_id) for loc in store.repo.locate(trees).values() if loc.kind == BlobKind.TREE}
        backend.reset()
        report = store.prefetch(["run"])
        assert report.failures == [] and report.cached == report.chunks == 40
        tree_reads = [key for key, _offset, _length in backend.gets if key in tree_packs]
    assert len(tree_reads) <= 2 * len(tree_packs) < len(trees)
    restored = tmp_path / "out"
    with Store.open(str(tmp_path / "repo"), index=f"sqlite:///{tmp_path / 'index.sqlite'}",
                    chunk_cache=str(tmp_path / "cache")) as store:
        store.restore("run", restored)
    assert describe(str(restored)) == describe(str(src))
