"""Many writers, one repository: processes snapshotting at once while gc and forget run.

Two set-ups: SQLite + local directory (writers on one host), and PostgreSQL + S3 (moto).
Afterwards `verify --read-data` is clean and every snapshot that was not forgotten restores exactly.
"""

from __future__ import annotations

import datetime as dt
import json
import multiprocessing as mp
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from cas import AlreadyExists, Store
from tests.servers.postgres import postgres_admin, postgres_url  # noqa: F401
from tests.servers.s3 import moto_server  # noqa: F401

ROOT = Path(__file__).resolve().parents[2]
CHUNKS = {"chunk_min": 1024, "chunk_avg": 4096, "chunk_max": 16384, "pack_size": 1 << 20}
WRITERS = 3
SNAPSHOTS_PER_WRITER = 4


def _open(spec: dict[str, Any]) -> Store:
    os.environ["CAS_HOME"] = spec["home"]
    if spec.get("s3"):
        from backends import open_backend

        backend = open_backend(spec["repo"], **spec["s3"])
        return Store.open(backend, index=spec["index"], **CHUNKS)
    return Store.open(spec["repo"], index=spec["index"], **CHUNKS)


def _digest_tree(root: Path) -> dict[str, str]:
    import blake3

    return {
        str(p.relative_to(root)): blake3.blake3(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*")) if p.is_file()
    }


def _writer(spec: dict[str, Any], worker: int, out: str) -> None:
    store = _open(spec)
    rng = random.Random(worker)
    base = Path(spec["work"]) / "base"
    tree = Path(spec["work"]) / f"w{worker}"
    shutil.copytree(base, tree)
    results = {}
    for i in range(SNAPSHOTS_PER_WRITER):
        (tree / f"own-{worker}.bin").write_bytes(rng.randbytes(30_000))  # unique per snapshot
        (tree / "shared-edit.bin").write_bytes(random.Random(i).randbytes(20_000))  # same across writers
        execution_id = f"w{worker}-s{i}"
        store.snapshot(tree, execution_id, use_files_cache=bool(i % 2))
        results[execution_id] = _digest_tree(tree)
    Path(out).write_text(json.dumps(results))
    store.close()


def _collector(spec: dict[str, Any], stop: Any, counts: Any) -> None:
    store = _open(spec)
    while not stop.is_set():
        report = store.gc(grace=dt.timedelta(0))
        counts["gc_runs"] = counts.get("gc_runs", 0) + 1
        counts["deleted"] = counts.get("deleted", 0) + len(report.deleted)
        counts["deleted_bytes"] = counts.get("deleted_bytes", 0) + report.deleted_bytes
        time.sleep(0.05)
    store.close()


def _forgetter(spec: dict[str, Any], stop: Any, forgotten: Any) -> None:
    store = _open(spec)
    while not stop.is_set():
        # Forget writer 0's snapshots except its newest, as they appear.
        mine = [s.execution_id for s in store.list() if s.execution_id.startswith("w0-")]
        for execution_id in mine[1:]:
            if execution_id not in forgotten:
                store.forget([execution_id])
                forgotten.append(execution_id)
        time.sleep(0.1)
    store.close()


def _run_stress(spec: dict[str, Any], tmp_path: Path) -> dict[str, int]:
    base = Path(spec["work"]) / "base"
    base.mkdir(parents=True)
    rng = random.Random(0)
    for i in range(8):
        (base / f"dep-{i}.bin").write_bytes(rng.randbytes(25_000))
    ctx = mp.get_context("spawn")
    with ctx.Manager() as manager:
        stop = manager.Event()
        counts = manager.dict()
        forgotten = manager.list()
        gc_proc = ctx.Process(target=_collector, args=(spec, stop, counts))
        forget_proc = ctx.Process(target=_forgetter, args=(spec, stop, forgotten))
        outs = [str(tmp_path / f"w{i}.json") for i in range(WRITERS)]
        writers = [ctx.Process(target=_writer, args=(spec, i, outs[i])) for i in range(WRITERS)]
        gc_proc.start()
        forget_proc.start()
        for w in writers:
            w.start()
        for w in writers:
            w.join(300)
            assert w.exitcode == 0, f"writer exited with {w.exitcode}"
        time.sleep(0.3)
        stop.set()
        gc_proc.join(120)
        forget_proc.join(120)
        assert gc_proc.exitcode == 0 and forget_proc.exitcode == 0
        stats = dict(counts)
        gone = set(forgotten)

    expected: dict[str, dict[str, str]] = {}
    for out in outs:
        expected.update(json.loads(Path(out).read_text()))
    store = _open(spec)
    try:
        # Two more GC runs so anything condemned during the stress is actually deleted now.
        for _ in range(2):
            report = store.gc(grace=dt.timedelta(0))
            stats["deleted"] = stats.get("deleted", 0) + len(report.deleted)
            stats["deleted_bytes"] = stats.get("deleted_bytes", 0) + report.deleted_bytes
        check = store.verify(read_data=True)
        assert check.ok, [str(p) for p in check.problems]
        live = {s.execution_id for s in store.list()}
        assert live == set(expected) - gone
        for execution_id in sorted(live):
            dest = tmp_path / "restore" / execution_id
            store.restore(execution_id, dest)
            assert _digest_tree(dest) == expected[execution_id], execution_id
        stats["snapshots_kept"] = len(live)
        stats["snapshots_forgotten"] = len(gone)
    finally:
        store.close()
    print(f"stress: {stats}")
    return stats


@pytest.mark.slow
def test_stress_sqlite_local(tmp_path: Path) -> None:
    spec = {"repo": str(tmp_path / "repo"), "index": f"sqlite:///{tmp_path / 'index.sqlite'}",
            "home": str(tmp_path / "home"), "work": str(tmp_path / "work")}
    stats = _run_stress(spec, tmp_path)
    assert stats["gc_runs"] >= 2 and stats["snapshots_forgotten"] >= 1


@pytest.mark.slow
def test_stress_postgres_s3(tmp_path: Path, postgres_url: str, moto_server: Any) -> None:  # noqa: F811
    client = moto_server.client()
    bucket = "stress-" + os.urandom(4).hex()
    client.create_bucket(Bucket=bucket)
    spec = {"repo": f"s3://{bucket}/cas", "s3": moto_server.backend_options(), "index": postgres_url,
            "home": str(tmp_path / "home"), "work": str(tmp_path / "work")}
    stats = _run_stress(spec, tmp_path)
    assert stats["gc_runs"] >= 2 and stats["snapshots_forgotten"] >= 1


def _claim(spec: dict[str, Any], tree: str, out: str) -> None:
    store = _open(spec)
    try:
        store.snapshot(tree, "contested", use_files_cache=False)
        Path(out).write_text("won")
    except AlreadyExists:
        Path(out).write_text("lost")
    store.close()


@pytest.mark.parametrize("index_kind", ["sqlite", "postgresql"])
def test_two_writers_claiming_one_execution_id(tmp_path: Path, index_kind: str, request: pytest.FixtureRequest) -> None:
    index = (f"sqlite:///{tmp_path / 'index.sqlite'}" if index_kind == "sqlite"
             else request.getfixturevalue("postgres_url"))
    spec = {"repo": str(tmp_path / "repo"), "index": index, "home": str(tmp_path / "home")}
    trees = []
    for i in range(2):
        t = tmp_path / f"t{i}"
        t.mkdir()
        (t / "f").write_bytes(os.urandom(50_000))
        trees.append(str(t))
    ctx = mp.get_context("spawn")
    outs = [str(tmp_path / f"o{i}") for i in range(2)]
    procs = [ctx.Process(target=_claim, args=(spec, trees[i], outs[i])) for i in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    assert sorted(Path(o).read_text() for o in outs) == ["lost", "won"]


_KILL_WRITER = """
import os, signal, sys
sys.path.insert(0, {root!r})
os.environ["CAS_HOME"] = {home!r}
from backends.local import LocalBackend
from cas import Store
from manifests.index import Index
from tests.interleave import GatedBackend

POINT = {point!r}

def die(at):
    if at == POINT:
        os.kill(os.getpid(), signal.SIGKILL)

class KillingIndex(Index):
    def add_pack(self, *args, **kwargs):
        super().add_pack(*args, **kwargs)
        die("after the first pack's rows")

    def commit_snapshot(self, row, blob_ids, **kw):
        missing = super().commit_snapshot(row, blob_ids, **kw)
        die("after the snapshot row")
        return missing

backend = GatedBackend(LocalBackend({repo!r}))
backend.on_put = lambda when, key: die(f"{{when}} put {{key.split('/')[0]}}")
s = Store.open(backend, index=KillingIndex.open({index!r}), **{chunks!r})
print("ready", flush=True)
s.snapshot({src!r}, {eid!r}, use_files_cache=False)
print("done", flush=True)
"""

#: Every step of the write order (docs/FORMAT.md), each killed at its first occurrence.
KILL_POINTS = [
    "before put data",  # a pack upload starts: nothing of it stored
    "after put data",  # a pack stored, its rows not inserted
    "after the first pack's rows",  # one pack indexed, others still to come
    "before put snapshots",  # every pack stored and indexed, no snapshot record
    "after put snapshots",  # the execution ID claimed on the backend, no snapshot row
    "after the snapshot row",  # committed, the process dies before returning
]


def test_writers_killed_at_each_step_of_the_write_order_leave_a_consistent_repository(tmp_path: Path) -> None:
    """A writer SIGKILLed at each step of the write order, in its own process. After each: the
    index names no pack the backend lacks, ``verify`` is clean, and the same execution ID can be
    snapshotted (again) and restores exactly. At the end GC reclaims every leftover."""
    src = tmp_path / "src"
    src.mkdir()
    rng = random.Random(11)
    for i in range(24):
        (src / f"f{i:02d}.bin").write_bytes(rng.randbytes(100_000))  # over two packs of new data
    repo, index, home = str(tmp_path / "repo"), f"sqlite:///{tmp_path / 'index.sqlite'}", str(tmp_path / "home")
    for point in KILL_POINTS:
        (src / "changing.bin").write_bytes(rng.randbytes(200_000))
        eid = "crash-" + point.replace(" ", "-").replace("'", "")
        code = _KILL_WRITER.format(root=str(ROOT), home=home, repo=repo, index=index, src=str(src), eid=eid,
                                   point=point, chunks=CHUNKS)
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
        assert proc.returncode == -signal.SIGKILL, f"{point}: the writer was not killed there: {proc.stdout}{proc.stderr}"
        assert proc.stdout.strip() == "ready"

        store = Store.open(repo, index=index)
        on_backend = {i.key.rsplit("/", 1)[-1] for i in store.repo.backend.list("data/")}
        indexed = {p.id for p in store.repo.index.pack_rows()} | {b.pack_id for b in store.repo.index.iter_blob_rows()}
        assert indexed <= on_backend, f"{point}: the index names packs the backend lacks"
        report = store.verify()
        assert report.ok, (point, [str(p) for p in report.problems])
        # The killed execution ID can be snapshotted (again, or for the first time).
        store.snapshot(src, eid, use_files_cache=False)
        store.restore(eid, tmp_path / "out" / eid)
        assert _digest_tree(tmp_path / "out" / eid) == _digest_tree(src), point
        store.close()
    store = Store.open(repo, index=index)
    for _ in range(2):
        store.gc(grace=dt.timedelta(0))
    # Whatever the killed writers left is gone: every pack on the backend is indexed and referenced.
    on_backend = {i.key.rsplit("/", 1)[-1] for i in store.repo.backend.list("data/")}
    assert on_backend == {p.id for p in store.repo.index.pack_rows()}
    assert store.gc(grace=dt.timedelta(0), dry_run=True).condemned == []
    assert store.verify(read_data=True).ok
    store.close()
