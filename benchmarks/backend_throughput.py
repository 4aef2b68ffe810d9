"""Snapshot and restore throughput of one tree on every backend, each on its real (loopback) server.

Run explicitly (it is not part of the test suite and asserts nothing about speed):

    python -m pytest benchmarks/backend_throughput.py -q -s

It reuses the test suite's servers: the local filesystem, moto's S3 server, the OSS protocol
server and Hadoop's MiniDFSCluster. The tree is a copy of a real installed package plus a 64 MiB
float32 checkpoint. Results go to ``benchmarks/results/backends.md``. Absolute numbers on a shared
2-core machine are noisy, and the S3 and OSS servers are Python programs on the same machine, so
these compare drivers more than services.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import struct
import time
from pathlib import Path
from typing import Any

import pytest

from backends import open_backend
from cas import Store
from tests.servers.hdfs import hdfs_cluster  # noqa: F401
from tests.servers.oss import ACCESS_KEY_ID, ACCESS_KEY_SECRET, new_bucket, oss_server  # noqa: F401
from tests.servers.s3 import moto_server  # noqa: F401

RESULTS = Path(__file__).resolve().parent / "results"
_rows: dict[str, dict[str, Any]] = {}


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import sqlalchemy

    root = tmp_path_factory.mktemp("tree") / "project"
    shutil.copytree(os.path.dirname(sqlalchemy.__file__), root / "deps" / "sqlalchemy")
    (root / "model").mkdir()
    rng = random.Random(3)
    with open(root / "model" / "weights.bin", "wb") as f:
        f.writelines(struct.pack("<262144f", *(rng.gauss(0, 0.02) for _ in range(262144))) for _ in range(64))
    return root


def _size(root: Path) -> tuple[int, int]:
    files = [p for p in root.rglob("*") if p.is_file() and not p.is_symlink()]
    return len(files), sum(p.stat().st_size for p in files)


def _backend(name: str, request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    if name == "local":
        return open_backend(str(tmp_path / "repo"))
    if name == "s3":
        server = request.getfixturevalue("moto_server")
        bucket = "bench-" + os.urandom(4).hex()
        server.client().create_bucket(Bucket=bucket)
        return open_backend(f"s3://{bucket}/cas", **server.backend_options())
    if name == "oss":
        server = request.getfixturevalue("oss_server")
        bucket = new_bucket(server)
        return open_backend(f"oss://{bucket}/cas", endpoint=server.endpoint, access_key_id=ACCESS_KEY_ID,
                            access_key_secret=ACCESS_KEY_SECRET)
    cluster = request.getfixturevalue("hdfs_cluster")
    return open_backend(cluster.url(f"{cluster.home}/bench-{os.urandom(4).hex()}"), hdfs_user=cluster.user)


@pytest.mark.parametrize("name", ["local", "s3", "oss", "hdfs"])
def test_throughput(name: str, tree: Path, tmp_path: Path, request: pytest.FixtureRequest,
                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAS_HOME", str(tmp_path / "home"))
    files, size = _size(tree)
    backend = _backend(name, request, tmp_path)
    with Store.open(backend, index=f"sqlite:///{tmp_path / 'index.sqlite'}", chunk_cache=False) as store:
        started = time.perf_counter()
        store.snapshot(tree, "bench", use_files_cache=False)
        snapshot_s = time.perf_counter() - started
        started = time.perf_counter()
        store.restore("bench", tmp_path / "out")
        restore_s = time.perf_counter() - started
        stored = store.stats().pack_bytes
    _rows[name] = {"files": files, "bytes": size, "stored": stored, "snapshot_s": snapshot_s, "restore_s": restore_s}
    print(f"\n{name}: {files} files, {size / 2**20:.1f} MiB: snapshot {snapshot_s:.2f} s "
          f"({size / 2**20 / snapshot_s:.1f} MiB/s), restore {restore_s:.2f} s ({size / 2**20 / restore_s:.1f} MiB/s)")


def teardown_module() -> None:
    if not _rows:
        return
    lines = ["# Throughput per backend", "",
             ("`python -m pytest benchmarks/backend_throughput.py -q -s`: one tree (a copy of SQLAlchemy's package and a "
              "64 MiB float32 checkpoint), snapshot into an empty repository, then restore, with no chunk cache."),
             "", "| backend | files | MiB | stored MiB | snapshot s | snapshot MiB/s | restore s | restore MiB/s |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in _rows.items():
        mib = r["bytes"] / 2**20
        lines.append(f"| {name} | {r['files']} | {mib:.1f} | {r['stored'] / 2**20:.1f} | {r['snapshot_s']:.2f} | "
                     f"{mib / r['snapshot_s']:.1f} | {r['restore_s']:.2f} | {mib / r['restore_s']:.1f} |")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "backends.md").write_text("\n".join(lines) + "\n")
    (RESULTS / "backends.json").write_text(json.dumps(_rows, indent=2))
