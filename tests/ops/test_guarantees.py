"""The safety mechanisms, each shown by the interleaving or fault it exists for.

Every test here fails when its mechanism is removed (docs/GC.md, docs/FORMAT.md "Write order",
docs/SECURITY.md section 3). Writers and collectors are real :class:`cas.Store` objects on one
repository and one index, run in threads and stopped at exact points by the gates of
``tests/interleave.py``; nothing under test is replaced. GC tests run on SQLite (the fence is the
database write lock) and PostgreSQL (a row lock).
"""

from __future__ import annotations

import datetime as dt
import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from backends.errors import PermissionDenied
from backends.local import LocalBackend
from cas import Store
from cas.errors import CasError, IntegrityError
from cas.format.hashing import hexdigest
from tests.hostile import forge
from tests.interleave import GatedBackend, GatedIndex, Worker, wait_until
from tests.servers.postgres import postgres_admin, postgres_url  # noqa: F401
from tests.servers.s3 import moto_server  # noqa: F401
from tests.treeutil import describe

NOW = dt.timedelta(0)
CHUNKS = {"chunk_min": 1024, "chunk_avg": 4096, "chunk_max": 16384, "pack_size": 1 << 20}


@pytest.fixture(params=["sqlite", "postgresql"])
def index_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'index.sqlite'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture(autouse=True)
def cas_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("CAS_HOME", str(home))
    for name in ("CAS_REPO", "CAS_INDEX", "CAS_CHUNK_CACHE"):
        monkeypatch.delenv(name, raising=False)
    return home


@pytest.fixture
def open_store(tmp_path: Path) -> Iterator:  # type: ignore[type-arg]
    """Opens Stores on one local repository: each its own backend object, index connection pool
    and gates, as separate hosts or processes would have."""
    opened: list[Store] = []

    def make(index_url: str) -> Store:
        backend = GatedBackend(LocalBackend(tmp_path / "repo"))
        store = Store.open(backend, index=GatedIndex.open(index_url), **CHUNKS)  # type: ignore[arg-type]
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


def _tree(root: Path, seed: int, files: int = 6, size: int = 40_000) -> Path:
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        (root / f"f{i}.bin").write_bytes(rng.randbytes(size))
    return root


def _packs(store: Store) -> set[str]:
    return {p.id for p in store.repo.index.pack_rows()}


def _on_backend(store: Store) -> set[str]:
    return {i.key.rsplit("/", 1)[-1] for i in store.repo.backend.list("data/")}


def _assert_index_names_only_stored_packs(store: Store) -> None:
    """docs/FORMAT.md: every blob the index knows is in a pack on the backend."""
    on_backend = _on_backend(store)
    rows = _packs(store)
    blob_packs = {b.pack_id for b in store.repo.index.iter_blob_rows()}
    assert rows <= on_backend, f"index rows name packs the backend lacks: {sorted(rows - on_backend)}"
    assert blob_packs <= on_backend, f"blob rows point at missing packs: {sorted(blob_packs - on_backend)}"


def _assert_restores(store: Store, execution_id: str, src: Path, dest: Path) -> None:
    report = store.verify(read_data=True)
    assert report.ok, [str(p) for p in report.problems]
    store.restore(execution_id, dest)
    assert describe(str(dest)) == describe(str(src))


def _share_events(*stores: Store) -> list[str]:
    events: list[str] = []
    for s in stores:
        s.repo.index.events = events  # type: ignore[attr-defined]
    return events


def _pg_lock_waiters(url: str) -> int:
    import psycopg

    with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        ).fetchone()
    return int(row[0]) if row else 0


def _writer_reusing_packs_that_gc_then_condemns(
    writer: Store, collector: Store, src: Path
) -> tuple[set[str], Worker, object]:
    """run-a is stored and forgotten; a writer starts run-b with the same files and dedups every
    chunk against run-a's (live) packs, then stops before writing its snapshot record; a GC run
    then condemns those packs. Returns the packs, the writer's thread and its record gate."""
    writer.snapshot(src, "run-a")
    writer.forget(["run-a"])
    packs = _packs(writer)
    record_gate = writer.repo.backend.gate("snapshots/")  # type: ignore[attr-defined]
    w = Worker("writer", lambda: writer.snapshot(src, "run-b", use_files_cache=False))
    record_gate.wait_arrival()
    first = collector.gc(grace=NOW)
    assert packs <= set(first.condemned), "the first GC should condemn run-a's packs"
    return packs, w, record_gate


# -- the fence: a GC verdict and a snapshot commit are serialised ---------------------------------


def test_gc_verdicts_wait_for_a_writer_holding_the_fence(open_store, index_url: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """manifests/database.py Guard.__enter__: the fence row lock.

    A writer's commit has read its blob rows (all present, in condemned packs) and is about to
    rescue them; a GC run whose mark missed the writer wants to tombstone those packs. The GC's
    verdict transaction must wait for the commit. Without the lock it tombstones them in the gap
    and the commit then inserts a snapshot whose data is gone.
    """
    src = _tree(tmp_path / "src", seed=1)
    writer, collector = open_store(index_url), open_store(index_url)
    events = _share_events(writer, collector)
    packs, w, record_gate = _writer_reusing_packs_that_gc_then_condemns(writer, collector, src)

    apply_gate = collector.repo.index.gate("gc_apply")
    g = Worker("gc", lambda: collector.gc(grace=NOW))
    apply_gate.wait_arrival()  # marked before run-b existed anywhere: its verdict is "delete"
    in_commit = writer.repo.index.gate("commit:after_lookup")
    record_gate.open()  # type: ignore[attr-defined]
    in_commit.wait_arrival()  # the writer's fenced transaction is open, its blob rows read
    apply_gate.open()
    gc_index = collector.repo.index
    sqlite = index_url.startswith("sqlite")
    # Either the GC finishes its verdicts in the gap (the bug), or it has sent its fence update
    # and is waiting: on SQLite the writer holds the write lock, so sending it means waiting; on
    # PostgreSQL the server shows the wait.
    wait_until(
        lambda: g.done.is_set()
        or (gc_index.gc_fence_sent.is_set() and (sqlite or _pg_lock_waiters(index_url) > 0)),
        "GC finished its verdicts or waited for the fence",
    )
    in_commit.open()
    w.outcome()
    report = g.outcome()
    assert not packs & set(report.deleted), "GC deleted packs a committed snapshot uses"
    _assert_restores(writer, "run-b", src, tmp_path / "out")
    assert events[-2:] == ["commit run-b", f"gc_apply epoch {report.epoch}"], (
        f"GC's verdicts did not wait for the writer's commit: {events}"
    )


# -- the commit rescues condemned packs it uses ---------------------------------------------------


def test_commit_rescues_condemned_packs_before_a_gc_that_missed_it_applies(open_store, index_url: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """manifests/snapshots.py commit_snapshot: condemned packs a snapshot uses are made live.

    A GC run reads the pack rows (run-a's packs condemned, nothing referencing them) and stops
    before its verdicts; the writer commits run-b, which reuses those packs; then the GC applies.
    Only the commit's rescue stops the GC from tombstoning them (the next GC would have rescued
    them, but this one runs first).
    """
    src = _tree(tmp_path / "src", seed=2)
    writer, collector = open_store(index_url), open_store(index_url)
    packs, w, record_gate = _writer_reusing_packs_that_gc_then_condemns(writer, collector, src)

    apply_gate = collector.repo.index.gate("gc_apply")
    g = Worker("gc", lambda: collector.gc(grace=NOW))
    apply_gate.wait_arrival()  # pack_rows read; run-b is not on the backend nor in the index
    record_gate.open()  # type: ignore[attr-defined]
    assert w.outcome().stats["new_bytes"] == 0  # every chunk reused from the condemned packs
    apply_gate.open()
    report = g.outcome()
    assert not packs & set(report.deleted), "GC deleted packs the snapshot committed before it uses"
    _assert_restores(writer, "run-b", src, tmp_path / "out")


# -- condemnation stamps: only a run that began after a condemnation may act on it -----------------


def test_gc_never_tombstones_a_pack_condemned_after_its_mark_began(open_store, index_url: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """manifests/collection.py gc_apply: ``Pack.condemned_epoch < epoch``.

    Two GC runs overlap a writer (docs/GC.md, "Why nothing is lost"): run C reads the packs live
    and unreferenced and stops; another run condemns them; run G marks (no snapshot uses them),
    sees them condemned and stops; the writer commits run-b, rescuing them; C then condemns them
    again, stamped with the fence's current epoch. G's mark missed run-b, so G must not act on a
    condemnation stamped at or after its own epoch.
    """
    src = _tree(tmp_path / "src", seed=3)
    writer, c_store, g_store = open_store(index_url), open_store(index_url), open_store(index_url)
    writer.snapshot(src, "run-a")
    writer.forget(["run-a"])
    packs = _packs(writer)
    record_gate = writer.repo.backend.gate("snapshots/")  # type: ignore[attr-defined]
    w = Worker("writer", lambda: writer.snapshot(src, "run-b", use_files_cache=False))
    record_gate.wait_arrival()  # every chunk deduplicated against run-a's live packs

    c_gate = c_store.repo.index.gate("gc_apply")
    c = Worker("gc C", lambda: c_store.gc(grace=NOW))
    c_gate.wait_arrival()  # C's verdict: condemn the (live, unreferenced) packs
    assert packs <= set(g_store.gc(grace=NOW).condemned)  # another run condemns them first
    g_gate = g_store.repo.index.gate("gc_apply")
    g = Worker("gc G", lambda: g_store.gc(grace=NOW))
    g_gate.wait_arrival()  # G's verdict: delete them (condemned by an earlier run, unreferenced)

    record_gate.open()
    w.outcome()  # run-b committed, its packs rescued
    c_gate.open()
    assert packs <= set(c.outcome().condemned)  # condemned again, after run-b committed
    g_gate.open()
    g_report = g.outcome()
    assert not packs & set(g_report.deleted), "a GC acted on a condemnation newer than its mark"
    _assert_restores(writer, "run-b", src, tmp_path / "out")
    later = g_store.gc(grace=NOW)  # a run that began after run-b sees it and rescues its packs
    assert packs <= set(later.rescued) and not later.deleted


# -- write order: pack upload, then its index rows --------------------------------------------------


@pytest.mark.parametrize("when", ["before", "after"])
def test_writer_failing_around_a_pack_upload_leaves_no_row_for_a_missing_pack(
    open_store, tmp_path: Path, when: str  # type: ignore[no-untyped-def]
) -> None:
    """cas/blobwriter.py _upload: the pack is put, and only then its rows are inserted.

    The writer fails at its first pack upload ("before": the put never happens; "after": the put
    happened and the writer dies before inserting rows). Either way the index must not name a
    pack the backend lacks, ``verify`` is clean, and the same snapshot can be taken again.
    """
    src = _tree(tmp_path / "src", seed=4)
    store = open_store(f"sqlite:///{tmp_path / 'index.sqlite'}")
    failed: list[str] = []

    def fail_at_first_pack(at: str, key: str) -> None:
        if at == when and key.startswith("data/") and not failed:
            failed.append(key)
            raise PermissionDenied(f"injected failure {at} put {key}")

    store.repo.backend.on_put = fail_at_first_pack  # type: ignore[attr-defined]
    with pytest.raises(CasError, match="injected failure"):
        store.snapshot(src, "run-1", use_files_cache=False)
    assert failed
    _assert_index_names_only_stored_packs(store)
    report = store.verify()
    assert report.ok, [str(p) for p in report.problems]
    store.snapshot(src, "run-1", use_files_cache=False)
    _assert_index_names_only_stored_packs(store)
    _assert_restores(store, "run-1", src, tmp_path / "out")


# -- restore checks the whole file's BLAKE3 ---------------------------------------------------------


@pytest.mark.parametrize("chunks", [1, 2])
def test_forged_file_digest_is_refused_on_restore_and_read(open_store, tmp_path: Path, chunks: int) -> None:  # type: ignore[no-untyped-def]
    """cas/reader.py verified_content: the whole-file digest.

    A forged tree lists real, intact chunks for a file but records another content's digest (the
    size matches). Every chunk verifies; only the whole-file check can tell. Restore must fail
    naming the file and leave nothing under its name; ``open_file`` must raise.
    """
    store = open_store(f"sqlite:///{tmp_path / 'index.sqlite'}")
    parts = [os.urandom(3000) for _ in range(chunks)]
    claimed = os.urandom(sum(len(p) for p in parts))  # what the tree says the file is
    entry = {
        "name": "model.bin", "type": "file", "mode": 0o644, "mtime_ns": 0, "size": len(claimed),
        "digest": hexdigest(claimed), "chunks": [forge.put_blob(store, p) for p in parts],
    }
    forge.commit(store, "forged", forge.put_tree(store, [entry]))
    dest = tmp_path / "out"
    with pytest.raises(IntegrityError, match="model.bin"):
        store.restore("forged", dest)
    assert not (dest / "model.bin").exists()
    assert not [p.name for p in dest.rglob("*")]  # no temporary left either
    with pytest.raises(IntegrityError), store.open_file("forged", "model.bin") as f:
        f.read()


# -- AIFlow: a file-<D> URI yields only bytes whose BLAKE3 is D --------------------------------------


def test_aiflow_download_refuses_an_execution_whose_content_is_not_the_uri_digest(tmp_path: Path) -> None:
    """cas/aiflow/download.py fetch: the restored bytes are hashed against the digest the URI names.

    A forged execution ``file-<D>`` holds a consistent tree (its own digests are right) whose
    content is not D. Restore's checks all pass; only the URI check can refuse it. Nothing may
    appear under the download's name.
    """
    from cas.aiflow import CasBlobManager

    manager = CasBlobManager({"repo": str(tmp_path / "blobs"), "index_url": f"sqlite:///{tmp_path / 'i.sqlite'}"})
    try:
        genuine = tmp_path / "model.bin"
        genuine.write_bytes(os.urandom(20_000))
        uri = manager.upload(str(genuine))
        digest = hexdigest(genuine.read_bytes())
        assert uri.endswith(f"/file-{digest}/model.bin")
        # The attacker's execution takes the ID of other bytes, in a fresh repository and index.
        forged_bytes = tmp_path / "forged-src"
        forged_bytes.mkdir()
        (forged_bytes / "content").write_bytes(b"not the model " * 1000)
        other = CasBlobManager({"repo": str(tmp_path / "evil"), "index_url": f"sqlite:///{tmp_path / 'e.sqlite'}"})
        try:
            other.store.snapshot(forged_bytes, f"file-{digest}", use_files_cache=False)
            forged_uri = uri.replace(str(tmp_path / "blobs"), str(tmp_path / "evil"))
            out = tmp_path / "download"
            with pytest.raises(IntegrityError, match="digest"):
                other.download(forged_uri, str(out))
            assert not (out / "model.bin").exists()
            assert [p.name for p in out.iterdir() if not p.name.startswith(".cas-lock-")] == []
        finally:
            other.close()
        # The genuine one downloads (the check accepts what it should).
        assert Path(manager.download(uri, str(tmp_path / "ok"))).read_bytes() == genuine.read_bytes()
    finally:
        manager.close()


# -- remote repositories opened by URL retry temporary failures --------------------------------------


class _ResettingProxy:
    """Loopback TCP proxy to ``target_port`` that resets the first ``drop`` connections as soon as
    they are accepted and forwards the rest faithfully (half-closes passed on, never cut)."""

    def __init__(self, target_port: int, drop: int) -> None:
        import socket
        import threading

        self.target_port = target_port
        self.drop = drop
        self.dropped = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.endpoint_url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def __enter__(self) -> _ResettingProxy:  # noqa: PYI034 - final class in practice
        return self

    def __exit__(self, *exc: object) -> None:
        self._listener.close()

    def _accept(self) -> None:
        import socket
        import struct
        import threading

        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self.dropped < self.drop:
                self.dropped += 1
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                client.close()  # a reset: the connection dropped before any answer
                continue
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src, dst) -> None:  # type: ignore[no-untyped-def]
        import socket

        try:
            while data := src.recv(65536):
                dst.sendall(data)
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            for sock in (src, dst):
                try:
                    sock.close()
                except OSError:
                    pass


def test_s3_repository_opened_by_url_survives_dropped_connections(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, moto_server  # type: ignore[no-untyped-def]  # noqa: F811
) -> None:
    """cas/repository.py Repository.open: a remote backend opened from a URL is wrapped in
    RetryingBackend. A loopback proxy in front of moto resets its first connections; opening,
    snapshotting and restoring through ``Store.open("s3://...")`` must still succeed."""
    from tests.servers.s3 import REGION

    bucket = "retry-" + os.urandom(4).hex()
    moto_server.client().create_bucket(Bucket=bucket)
    src = _tree(tmp_path / "src", seed=6, files=3, size=20_000)
    with _ResettingProxy(moto_server.port, drop=2) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint_url)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", moto_server.access_key_id)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", moto_server.secret_access_key)
        monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
        with Store.open(f"s3://{bucket}/cas", index=f"sqlite:///{tmp_path / 'i.sqlite'}", **CHUNKS) as store:
            store.snapshot(src, "run-1")
            store.restore("run-1", tmp_path / "out")
        assert proxy.dropped == 2  # the connections really were dropped
    assert describe(str(tmp_path / "out")) == describe(str(src))
