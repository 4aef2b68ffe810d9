"""``cas copy``: executions replicated between a local and an S3 (moto server) repository, sending
only what the target lacks, safe to interrupt and re-run, and restoring byte-exact from the copy."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import pytest

from backends.base import Backend, ObjectInfo
from backends.faulty import FaultyBackend
from backends.local import LocalBackend
from backends.s3 import from_url
from cas import Store
from cas.errors import AlreadyExists, CasError, NotFound
from cas.format.packs import FOOTER_SIZE, parse_footer, parse_trailer
from tests.engine import SMALL_CHUNKS
from tests.servers import s3 as s3_servers
from tests.servers.s3 import MotoServer
from tests.treeutil import describe

moto_server = s3_servers.moto_server
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _no_ambient_aws(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    s3_servers.isolate_from_ambient_aws(monkeypatch, str(tmp_path))


@pytest.fixture
def s3_url(moto_server: MotoServer) -> str:
    bucket = f"cas-{uuid.uuid4().hex[:16]}"
    moto_server.client().create_bucket(Bucket=bucket)
    return f"s3://{bucket}/replica"


class CountingBackend(Backend):
    """Passes every call to ``inner``; keeps each pack put, to count the blobs sent."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.capabilities = inner.capabilities
        self.pack_puts: list[bytes] = []
        self.puts = 0

    def put(self, key: str, data: bytes | memoryview | BinaryIO, *, overwrite: bool = True) -> None:
        self.puts += 1
        if key.startswith("data/"):
            if not isinstance(data, (bytes, bytearray, memoryview)):  # a pack file (cas/repo/packfile.py)
                data = data.read()
            self.pack_puts.append(bytes(data))
        self.inner.put(key, data, overwrite=overwrite)

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        return self.inner.get(key, offset, length)

    def stat(self, key: str) -> ObjectInfo:
        return self.inner.stat(key)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        return self.inner.list(prefix)

    def delete(self, key: str) -> None:
        self.inner.delete(key)

    def describe(self) -> str:
        return self.inner.describe()

    def close(self) -> None:
        self.inner.close()

    def blobs_sent(self) -> Counter[str]:
        sent: Counter[str] = Counter()
        for pack in self.pack_puts:
            trailer_len = parse_footer(pack[-FOOTER_SIZE:])
            data_size = len(pack) - FOOTER_SIZE - trailer_len
            sent.update(e.id for e in parse_trailer(pack[data_size : len(pack) - FOOTER_SIZE], data_size))
        return sent


def _series(store: Store, tmp_path: Path, count: int = 4) -> dict[str, Path]:
    """Executions of one evolving project: most files carried over, some edited, some added."""
    rng = random.Random(7)
    src = tmp_path / "project"
    (src / "data").mkdir(parents=True)
    (src / "empty").mkdir()
    os.symlink("data/weights.bin", src / "latest")
    weights = bytearray(rng.randbytes(60_000))
    copies: dict[str, Path] = {}
    for i in range(count):
        weights[i * 5000 : i * 5000 + 100] = rng.randbytes(100)
        (src / "data" / "weights.bin").write_bytes(weights)
        (src / f"log-{i}.txt").write_text(f"epoch {i}\n" * 300)
        (src / "config.yaml").write_text(f"lr: 0.{i}\n")
        os.chmod(src / "config.yaml", 0o640 if i % 2 else 0o600)
        execution_id = f"run-{i}"
        store.snapshot(src, execution_id, labels={"team": "vision", "step": str(i)}, use_files_cache=False)
        copies[execution_id] = tmp_path / f"expected-{i}"
        store.restore(execution_id, copies[execution_id])
    return copies


def _source(tmp_path: Path) -> Store:
    return Store.open(str(tmp_path / "source"), index=f"sqlite:///{tmp_path / 'source.sqlite'}", **SMALL_CHUNKS)


def _s3_target(url: str, server: MotoServer, tmp_path: Path, name: str = "target") -> tuple[Store, CountingBackend]:
    backend = CountingBackend(from_url(url, **server.backend_options()))
    return Store.open(backend, index=f"sqlite:///{tmp_path / (name + '.sqlite')}"), backend


def test_copy_local_to_s3_sends_each_blob_once_and_rerun_sends_nothing(
    tmp_path: Path, cas_home: Path, moto_server: MotoServer, s3_url: str
) -> None:
    with _source(tmp_path) as source:
        expected = _series(source, tmp_path)
        target, counting = _s3_target(s3_url, moto_server, tmp_path)
        with target:
            first = source.copy(["run-0", "run-1"], target)
            assert first.copied == ["run-0", "run-1"]
            report = source.copy(labels={"team": "vision"}, to=target)
            assert report.copied == ["run-2", "run-3"] and report.present == ["run-0", "run-1"]
            sent = counting.blobs_sent()
            assert sent and max(sent.values()) == 1  # no chunk or tree node put twice
            # Exactly the blobs the executions reference, no more.
            assert set(sent) == {row.id for row in source.repo.index.locate(list(sent)).values()}
            assert first.blobs_sent + report.blobs_sent == len(sent)
            puts = counting.puts
            again = source.copy(labels={"team": "vision"}, to=target)
            assert again.copied == [] and again.blobs_sent == 0 and counting.puts == puts
            assert target.verify(read_data=True).ok
            for execution_id, copy in expected.items():
                src_snap, dst_snap = source.get(execution_id), target.get(execution_id)
                assert (dst_snap.root, dst_snap.time_ns, dst_snap.labels) == (
                    src_snap.root, src_snap.time_ns, src_snap.labels)
                out = tmp_path / f"from-s3-{execution_id}"
                target.restore(execution_id, out)
                assert describe(str(out)) == describe(str(copy))


def test_copy_s3_to_local_and_url_target(
    tmp_path: Path, cas_home: Path, moto_server: MotoServer, s3_url: str
) -> None:
    s3_store = Store.open(from_url(s3_url, **moto_server.backend_options()),
                          index=f"sqlite:///{tmp_path / 's3.sqlite'}", **SMALL_CHUNKS)
    with s3_store:
        expected = _series(s3_store, tmp_path, count=2)
        report = s3_store.copy(["run-0", "run-1"], str(tmp_path / "local"),
                               to_index=f"sqlite:///{tmp_path / 'local.sqlite'}")
        assert report.copied == ["run-0", "run-1"]
    with Store.open(str(tmp_path / "local"), index=f"sqlite:///{tmp_path / 'local.sqlite'}") as local:
        assert local.repo.config.chunk_avg == SMALL_CHUNKS["chunk_avg"]  # created with the source's chunking
        assert local.verify(read_data=True).ok
        for execution_id, copy in expected.items():
            local.restore(execution_id, tmp_path / f"out-{execution_id}")
            assert describe(str(tmp_path / f"out-{execution_id}")) == describe(str(copy))


def test_interrupted_copy_then_rerun_completes(tmp_path: Path, cas_home: Path) -> None:
    target_dir = str(tmp_path / "target")
    target_index = f"sqlite:///{tmp_path / 'target.sqlite'}"
    with _source(tmp_path) as source:
        expected = _series(source, tmp_path)
        Store.open(target_dir, index=target_index, **SMALL_CHUNKS).close()
        interruptions = 0
        for seed in range(6):
            faulty = FaultyBackend(LocalBackend(target_dir), fail_rate=0.4, seed=seed, operations={"put"})
            with Store.open(faulty, index=target_index) as target:
                try:
                    source.copy(list(expected), target)
                except CasError:
                    interruptions += 1
                    # Whatever was committed is whole: nothing references a blob the target lacks.
                    found = target.verify()
                    assert not (found.missing_packs or found.corrupt_blobs or found.damaged or found.unindexed_blobs), found
        assert interruptions >= 3
        with Store.open(target_dir, index=target_index) as target:
            report = source.copy(list(expected), target)
            assert sorted(report.copied + report.present) == sorted(expected)
            assert target.verify(read_data=True).ok
            for execution_id, copy in expected.items():
                target.restore(execution_id, tmp_path / f"out-{execution_id}")
                assert describe(str(tmp_path / f"out-{execution_id}")) == describe(str(copy))


def test_copy_refuses_an_id_holding_another_tree(tmp_path: Path, cas_home: Path) -> None:
    with _source(tmp_path) as source:
        _series(source, tmp_path, count=1)
        with Store.open(str(tmp_path / "other"), index=f"sqlite:///{tmp_path / 'other.sqlite'}") as other:
            (tmp_path / "different").mkdir()
            other.snapshot(tmp_path / "different", "run-0")
            with pytest.raises(AlreadyExists, match="different tree"):
                source.copy(["run-0"], other)
            with pytest.raises(NotFound):
                source.copy(["no-such-run"], other)


def test_cli_copy(tmp_path: Path, cas_home: Path) -> None:
    with _source(tmp_path) as source:
        _series(source, tmp_path, count=2)
    env = {**os.environ, "CAS_HOME": str(cas_home), "PYTHONPATH": str(ROOT)}
    base = [sys.executable, "-m", "cas", "--repo", str(tmp_path / "source"),
            "--index", f"sqlite:///{tmp_path / 'source.sqlite'}"]
    target = ["--to", str(tmp_path / "copy"), "--to-index", f"sqlite:///{tmp_path / 'copy.sqlite'}"]
    done = subprocess.run([*base, "copy", "run-0", *target], capture_output=True, text=True, env=env, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("copied 1 executions (0 already there)")
    done = subprocess.run([*base, "--json", "copy", "--label", "team=vision", *target],
                          capture_output=True, text=True, env=env, check=False)
    assert done.returncode == 0, done.stderr
    assert '"copied": ["run-1"]' in done.stdout and '"present": ["run-0"]' in done.stdout
    done = subprocess.run([*base, "copy", "missing", *target], capture_output=True, text=True, env=env, check=False)
    assert done.returncode == 1 and done.stderr.strip() == "cas: error: unknown execution ID: missing"


def test_cli_copy_without_to_index_uses_the_targets_own_index_not_cas_index(
    tmp_path: Path, cas_home: Path
) -> None:
    """``$CAS_INDEX`` names the source's index: a copy without ``--to-index`` must not take it for
    the target (the index would refuse a second repository and the copy would fail)."""
    with _source(tmp_path) as source:
        _series(source, tmp_path, count=1)
    source_index = f"sqlite:///{tmp_path / 'source.sqlite'}"
    env = {**os.environ, "CAS_HOME": str(cas_home), "PYTHONPATH": str(ROOT),
           "CAS_REPO": str(tmp_path / "source"), "CAS_INDEX": source_index}
    done = subprocess.run([sys.executable, "-m", "cas", "copy", "run-0", "--to", str(tmp_path / "copy")],
                          capture_output=True, text=True, env=env, check=False)
    assert done.returncode == 0, done.stderr
    host_indexes = list((cas_home / "index").glob("*.sqlite"))
    assert len(host_indexes) == 1
    with Store.open(str(tmp_path / "copy"), index=f"sqlite:///{host_indexes[0]}", create=False) as copy:
        assert [s.execution_id for s in copy.list()] == ["run-0"]
    with Store.open(str(tmp_path / "source"), index=source_index, create=False) as again:
        assert [s.execution_id for s in again.list()] == ["run-0"]
