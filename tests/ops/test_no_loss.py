"""Nothing committed is ever lost: the ways an adversarial run lost committed snapshots, each replayed.

1. a directory whose tree node outgrew the limit readers enforce (then verify/repair/gc deleted it);
2. GC judging packs by index rows that a damaged or restored index had lost;
3. two copies of one repository sharing one default index;
4. a sync committing a writer's row outside the writer's fenced commit, and a sync undoing a forget;
5. GC deleting a pack between a writer's upload of it and the writer's insert of its rows, and an
   overlapping GC run deleting a pack that another run deleted and a writer stored again.
The state machine in tests/ops/test_no_loss_model.py drives all of these operations at random.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import sqlite3
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from backends.base import Backend
from backends.local import LocalBackend
from cas import Store
from cas.format.trees import MAX_NODE_BYTES, SPLIT_BYTES
from cas.repo.reader import read_trees
from tests.inprocess import run_main, text
from tests.treeutil import describe

ROOT = Path(__file__).resolve().parents[2]
NOW = dt.timedelta(0)
DEADLOCK_GUARD = 60.0


def run_cas(home: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """``cas ARGS`` with its own CAS_HOME, through its real ``main`` in this process (tests.inprocess)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CAS_", "AWS_", "OSS_"))}
    env.update({"CAS_HOME": str(home), "PYTHONPATH": str(ROOT)})
    status, out, err = run_main(args, env, os.getcwd(), timeout=timeout)
    return subprocess.CompletedProcess(list(args), status, text(out), text(err))


def ok(home: Path, *args: str) -> str:
    proc = run_cas(home, *args)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def packs_on_disk(repo: Path) -> set[str]:
    return {p.name for p in (repo / "data").glob("*/*")}


# -- 1. a directory larger than one tree node ---------------------------------------------------


def test_huge_flat_directory_survives_verify_repair_and_gc(tmp_path: Path) -> None:
    """A directory whose one node would be ~70 MB, over the 64 MiB blob limit readers enforce (the
    adversarial run used 230,000 files with 207-byte names; 17,000 symlinks with 4,000-byte targets
    make as large a node in a fraction of the time). The writer splits it into parts; verify, repair
    and gc accept every node, and nothing the snapshot uses is deleted."""
    src = tmp_path / "flat"
    src.mkdir()
    count = 17_000
    for i in range(count):
        os.symlink(f"{i:05d}/" + "t" * 3994, src / f"{i:05d}-{'n' * 40}")
    home, repo = tmp_path / "home", tmp_path / "repo"
    args = ("--repo", str(repo))
    ok(home, *args, "snapshot", str(src), "-e", "flat")
    packs = packs_on_disk(repo)
    assert "no problems found" in ok(home, *args, "verify", "--read-data")
    ok(home, *args, "repair", "--read-data")
    ok(home, *args, "gc", "--grace", "0s")
    ok(home, *args, "gc", "--grace", "0s")
    assert packs_on_disk(repo) == packs  # nothing the snapshot uses was deleted
    ok(home, *args, "rebuild-index")  # from the backend alone, the index knows every part again
    assert "no problems found" in ok(home, *args, "verify", "--read-data")
    ok(home, *args, "restore", "flat", str(tmp_path / "out"))
    assert describe(str(tmp_path / "out")) == describe(str(src))


def test_split_directory_round_trip(tmp_path: Path) -> None:
    """A directory over SPLIT_BYTES restores byte for byte; each stored node is within the limit, and
    a file added to it changes one part, not every part after it."""
    src = tmp_path / "wide"
    src.mkdir()
    for i in range(30_000):
        (src / f"{i:06d}-{'x' * 150}").write_bytes(str(i % 7).encode() * (i % 3))
    store = Store.open(str(tmp_path / "repo"), index=f"sqlite:///{tmp_path / 'i.sqlite'}")
    snap = store.snapshot(src, "wide-1")
    entries, parts = store.repo.read_directory(snap.root)
    assert len(entries) == 30_000 and len(parts) > 3
    assert read_trees(store.repo, [(snap.root, store.repo.locate([snap.root])[snap.root])]) == {snap.root: entries}
    sizes = [store.repo.locate([p])[p].raw_length for p in parts]
    assert max(sizes) <= MAX_NODE_BYTES and sum(sizes) > SPLIT_BYTES
    (src / "000100-added").write_bytes(b"new")
    snap2 = store.snapshot(src, "wide-2")
    parts2 = store.repo.read_directory(snap2.root)[1]
    assert len(set(parts2) - set(parts)) <= 2  # the part that gained the name (maybe split in two)
    store.restore("wide-2", tmp_path / "out")
    assert describe(str(tmp_path / "out")) == describe(str(src))
    store.close()


# -- 2. GC with index rows missing ------------------------------------------------------------


def _two_runs(tmp_path: Path, home: Path, args: tuple[str, ...]) -> Path:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    for i in range(40):
        (src / "sub" / f"f{i}").write_bytes(os.urandom(3000 + i))
    (src / "big").write_bytes(os.urandom(700_000))
    ok(home, *args, "snapshot", str(src), "-e", "run-1")
    (src / "extra").write_bytes(os.urandom(5000))
    ok(home, *args, "snapshot", str(src), "-e", "run-2")
    return src


@pytest.mark.parametrize("damage", ["blob rows", "pack and blob rows", "every row"])
def test_gc_never_deletes_a_pack_whose_index_rows_were_lost(tmp_path: Path, damage: str) -> None:
    home, repo, index = tmp_path / "home", tmp_path / "repo", tmp_path / "index.sqlite"
    args = ("--repo", str(repo), "--index", f"sqlite:///{index}")
    src = _two_runs(tmp_path, home, args)
    packs = packs_on_disk(repo)
    with sqlite3.connect(index) as db:  # what a restored backup of the database looks like
        victim = db.execute("SELECT pack_id FROM blobs GROUP BY pack_id ORDER BY count(*) DESC").fetchone()[0]
        if damage == "every row":
            db.execute("DELETE FROM blobs")
            db.execute("DELETE FROM packs")
        else:
            db.execute("DELETE FROM blobs WHERE pack_id = ?", (victim,))
            if damage == "pack and blob rows":
                db.execute("DELETE FROM packs WHERE id = ?", (victim,))
    ok(home, *args, "gc", "--grace", "0s")
    ok(home, *args, "gc", "--grace", "0s")
    ok(home, *args, "gc", "--grace", "0s")
    assert packs_on_disk(repo) == packs
    for run in ("run-1", "run-2"):
        ok(home, *args, "restore", run, str(tmp_path / f"out-{run}"))
    assert describe(str(tmp_path / "out-run-2")) == describe(str(src))
    assert "no problems found" in ok(home, *args, "verify", "--read-data")


def test_repair_reindexes_from_trailers_instead_of_declaring_damage(tmp_path: Path) -> None:
    home, repo, index = tmp_path / "home", tmp_path / "repo", tmp_path / "index.sqlite"
    args = ("--repo", str(repo), "--index", f"sqlite:///{index}")
    _two_runs(tmp_path, home, args)
    with sqlite3.connect(index) as db:
        rows = db.execute("SELECT count(*) FROM blobs").fetchone()[0]
        db.execute("DELETE FROM blobs WHERE rowid % 2 = 0")
    proc = run_cas(home, *args, "verify")
    assert proc.returncode == 1 and "re-indexes it" in proc.stdout
    assert "damaged" not in proc.stdout
    out = ok(home, *args, "repair")
    assert "re-indexed" in out and "marked damaged" not in out
    with sqlite3.connect(index) as db:
        assert db.execute("SELECT count(*) FROM blobs").fetchone()[0] == rows
        assert db.execute("SELECT count(*) FROM snapshots WHERE damaged").fetchone()[0] == 0
    assert "no problems found" in ok(home, *args, "verify", "--read-data")


# -- 3. a copy of a repository ------------------------------------------------------------------


def test_a_copy_of_a_repository_never_shares_the_original_index(tmp_path: Path) -> None:
    home, original, copy = tmp_path / "home", tmp_path / "original", tmp_path / "copy"
    data = tmp_path / "data"
    data.mkdir()
    (data / "base").write_bytes(os.urandom(300_000))
    ok(home, "--repo", str(original), "snapshot", str(data), "-e", "base")
    shutil.copytree(original, copy, symlinks=True)  # cp -a: same repository ID, other place
    (data / "new").write_bytes(os.urandom(400_000))
    ok(home, "--repo", str(copy), "snapshot", str(data), "-e", "on-copy")
    out = ok(home, "--json", "--repo", str(original), "snapshot", str(data), "-e", "on-original")
    assert '"new_bytes": 0' not in out  # the original does not hold the copy's chunks
    ok(home, "--repo", str(original), "restore", "on-original", str(tmp_path / "out"))
    assert describe(str(tmp_path / "out")) == describe(str(data))

    # An index named explicitly is bound to the repository it describes: used with the copy, refused.
    shared = f"sqlite:///{tmp_path / 'shared.sqlite'}"
    ok(home, "--repo", str(original), "--index", shared, "log")
    proc = run_cas(home, "--repo", str(copy), "--index", shared, "log")
    assert proc.returncode == 1 and len(proc.stderr.splitlines()) == 1
    assert "describes this repository at" in proc.stderr and "rebuild-index" in proc.stderr
    # A repository that moved: a full rebuild takes the index over.
    moved = tmp_path / "moved"
    os.rename(original, moved)
    ok(home, "--repo", str(moved), "--index", shared, "rebuild-index")
    ok(home, "--repo", str(moved), "--index", shared, "restore", "on-original", str(tmp_path / "out2"))


# -- 4. sync racing a writer's commit, and a forget ---------------------------------------------


class PausingBackend(Backend):
    """A real local backend that can stop a thread right after a chosen operation on a chosen key."""

    def __init__(self, inner: LocalBackend) -> None:
        self.inner = inner
        self.hooks: dict[tuple[str, str], list[Callable[[], None] | None]] = {}
        """Per (operation, key): what to run after each of its next calls, in order (None: nothing)."""

    def _after(self, op: str, key: str) -> None:
        queue = self.hooks.get((op, key))
        if queue is None:  # a hook for every key under a prefix: (op, "prefix/*")
            queue = next((q for (o, k), q in self.hooks.items()
                          if o == op and k.endswith("*") and key.startswith(k[:-1])), None)
        if queue:
            hook = queue.pop(0)
            if hook is not None:
                hook()

    def put(self, key, data, *, overwrite=True):  # type: ignore[no-untyped-def]
        try:
            self.inner.put(key, data, overwrite=overwrite)
        finally:  # a put that found the name taken counts too
            self._after("put", key)

    def get(self, key, offset=0, length=None):  # type: ignore[no-untyped-def]
        data = self.inner.get(key, offset, length)
        self._after("get", key)
        return data

    def __getattr__(self, name):  # type: ignore[no-untyped-def]
        return getattr(self.inner, name)

    def exists(self, key):  # type: ignore[no-untyped-def]
        return self.inner.exists(key)

    def stat(self, key):  # type: ignore[no-untyped-def]
        return self.inner.stat(key)

    def list(self, prefix=""):  # type: ignore[no-untyped-def]
        return self.inner.list(prefix)

    def delete(self, key):  # type: ignore[no-untyped-def]
        return self.inner.delete(key)

    def describe(self) -> str:
        return self.inner.describe()


def _pause_point() -> tuple[Callable[[], None], threading.Event, threading.Event]:
    """A hook that announces it was reached and waits to be released."""
    reached, release = threading.Event(), threading.Event()

    def hook() -> None:
        reached.set()
        assert release.wait(DEADLOCK_GUARD), "test deadlocked"

    return hook, reached, release


def _thread(target: Callable[[], object]) -> tuple[threading.Thread, list[BaseException]]:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            target()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            errors.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, errors


def test_a_sync_between_claim_and_commit_cannot_cost_the_writer_its_packs(tmp_path: Path) -> None:
    """The writer reuses chunks GC condemns meanwhile; a sync inserts its row between its claim and
    its commit; a GC that marked before the claim then applies its verdicts. The writer's packs survive."""
    url = f"sqlite:///{tmp_path / 'index.sqlite'}"
    backend = PausingBackend(LocalBackend(str(tmp_path / "repo")))
    opts = {"chunk_min": 1024, "chunk_avg": 4096, "chunk_max": 16384, "pack_size": 1 << 20}
    writer = Store.open(backend, index=url, **opts)
    other = Store.open(str(tmp_path / "repo"), index=url)
    collector = Store.open(str(tmp_path / "repo"), index=url)
    src = tmp_path / "src"
    src.mkdir()
    (src / "model.bin").write_bytes(os.urandom(200_000))
    writer.snapshot(src, "old")
    writer.forget(["old"])  # the chunks are now garbage, but still live: a writer may reuse them
    (src / "note.txt").write_bytes(b"a new file, so the new snapshot has a tree of its own")

    claim, claimed, release_claim = _pause_point()
    before_put, at_put, release_put = _pause_point()
    # Pause the writer once its packs are stored and indexed (after deduplicating against the old
    # chunks), before it claims its ID; and again right after the claim, before its row commit.
    original_add_pack = writer.repo.index.add_pack
    first_tree_pack = {"done": False}

    def add_pack_then_pause(pack_id, size, blobs, **kw):  # type: ignore[no-untyped-def]
        original_add_pack(pack_id, size, blobs, **kw)
        if not first_tree_pack["done"] and any(b.kind == 1 for b in blobs):
            first_tree_pack["done"] = True
            before_put()

    writer.repo.index.add_pack = add_pack_then_pause  # type: ignore[method-assign]
    backend.hooks[("put", "snapshots/new")] = [claim]
    w, w_errors = _thread(lambda: writer.snapshot(src, "new"))
    assert at_put.wait(DEADLOCK_GUARD)
    # The writer has deduplicated against the old chunks. GC 1 condemns their packs.
    first = collector.gc(grace=NOW)
    assert first.condemned
    # GC 2 marks now (no snapshot uses the chunks yet) and stops just before applying its verdicts.
    apply_reached, apply_release = threading.Event(), threading.Event()
    original_apply = collector.repo.index.gc_apply

    def paused_apply(*a, **kw):  # type: ignore[no-untyped-def]
        apply_reached.set()
        assert apply_release.wait(DEADLOCK_GUARD)
        return original_apply(*a, **kw)

    collector.repo.index.gc_apply = paused_apply  # type: ignore[method-assign]
    g, g_errors = _thread(lambda: collector.gc(grace=NOW))
    assert apply_reached.wait(DEADLOCK_GUARD)
    release_put.set()
    assert claimed.wait(DEADLOCK_GUARD)  # the writer's snapshot object exists; its row does not
    other.sync()  # another process syncs the index from the backend: the row goes in here
    release_claim.set()
    w.join(DEADLOCK_GUARD)
    assert not w_errors, w_errors
    apply_release.set()
    g.join(DEADLOCK_GUARD)
    assert not g_errors, g_errors
    collector.repo.index.gc_apply = original_apply  # type: ignore[method-assign]
    collector.gc(grace=NOW)
    collector.gc(grace=NOW)
    other.restore("new", tmp_path / "out")
    assert describe(str(tmp_path / "out")) == describe(str(src))
    assert other.verify(read_data=True).ok
    for s in (writer, other, collector):
        s.close()


def test_a_sync_racing_forget_does_not_bring_the_snapshot_back(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'index.sqlite'}"
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_bytes(b"a" * 1000)
    first = Store.open(str(tmp_path / "repo"), index=url)
    first.snapshot(src, "gone")
    with sqlite3.connect(tmp_path / "index.sqlite") as db:  # as if its writer died before its row
        db.execute("DELETE FROM snapshots")
    backend = PausingBackend(LocalBackend(str(tmp_path / "repo")))
    syncer = Store.open(backend, index=url)
    hook, reached, release = _pause_point()
    # The sync lists the record, reads it to learn its root, then reads it again to index it:
    # stop it after that last read, when it is about to insert the row.
    backend.hooks[("get", "snapshots/gone")] = [None, hook]
    t, errors = _thread(syncer.sync)
    assert reached.wait(DEADLOCK_GUARD)
    assert first.forget(["gone"]) == ["gone"]
    release.set()
    t.join(DEADLOCK_GUARD)
    assert not errors, errors
    assert [s.execution_id for s in first.list()] == []
    assert not (tmp_path / "repo" / "snapshots" / "gone").exists()
    with pytest.raises(FileNotFoundError):
        first.get("gone")
    first.close()
    syncer.close()


@pytest.mark.parametrize("found", ["absent", "already stored"])
def test_gc_deleting_a_pack_between_its_upload_and_its_rows_costs_the_writer_nothing(
    tmp_path: Path, found: str
) -> None:
    """Two GC runs pass while a writer is between putting a pack and inserting its rows: the first
    indexes the object as an interrupted writer's pack and condemns it (nothing references it), the
    second tombstones and deletes it and clears the tombstone. The writer's rows must not then name a pack that is gone.
    ``already stored``: an identical pack was on the backend before the writer's put (the writer's
    own earlier attempt), so the put finds it, reads it back, and stores nothing."""
    url = f"sqlite:///{tmp_path / 'index.sqlite'}"
    backend = PausingBackend(LocalBackend(str(tmp_path / "repo")))
    opts = {"chunk_min": 1024, "chunk_avg": 4096, "chunk_max": 16384, "pack_size": 1 << 20}
    writer = Store.open(backend, index=url, **opts)
    collector = Store.open(str(tmp_path / "repo"), index=url)
    src = tmp_path / "src"
    src.mkdir()
    (src / "model.bin").write_bytes(os.urandom(200_000))
    if found == "already stored":
        writer.snapshot(src, "earlier")
        with sqlite3.connect(tmp_path / "index.sqlite") as db:  # as if that writer died before its rows
            db.execute("DELETE FROM snapshots")
            db.execute("DELETE FROM blobs")
            db.execute("DELETE FROM packs")
        shutil.rmtree(tmp_path / "repo" / "snapshots")
    hook, reached, release = _pause_point()
    # The first pack: stop after its put (absent), or after the read that found the stored object
    # the same as the writer's (already stored); before its rows either way.
    backend.hooks[("put" if found == "absent" else "get", "data/*")] = [hook]
    t, errors = _thread(lambda: writer.snapshot(src, "new"))
    assert reached.wait(DEADLOCK_GUARD)
    first = collector.gc(grace=NOW)
    assert first.condemned
    second = collector.gc(grace=NOW)
    assert second.deleted, "the second run deletes the orphan"
    release.set()
    t.join(DEADLOCK_GUARD)
    assert not errors, errors
    collector.gc(grace=NOW)
    check = collector.verify(read_data=True)
    assert check.ok, [str(p) for p in check.problems]
    collector.restore("new", tmp_path / "out")
    assert describe(str(tmp_path / "out")) == describe(str(src))
    writer.close()
    collector.close()


def test_a_gc_run_never_deletes_a_pack_another_run_deleted_and_a_writer_stored_again(tmp_path: Path) -> None:
    """Two GC runs overlap. Run A tombstones a forgotten snapshot's packs; run B starts and reads
    A's tombstones; A deletes the objects and clears the tombstones; a writer stores the same files
    again, so the same packs (same bytes, same names) are uploaded and indexed; then B reaches its
    deletions. B must not delete the writer's packs."""
    url = f"sqlite:///{tmp_path / 'index.sqlite'}"
    repo = str(tmp_path / "repo")
    writer = Store.open(repo, index=url)
    run_a = Store.open(repo, index=url)
    run_b = Store.open(repo, index=url)
    src = tmp_path / "src"
    src.mkdir()
    (src / "model.bin").write_bytes(os.urandom(200_000))
    writer.snapshot(src, "old")
    writer.forget(["old"])
    assert run_a.gc(grace=NOW).condemned

    def pause_after_apply(store: Store) -> tuple[threading.Event, threading.Event]:
        reached, release = threading.Event(), threading.Event()
        original = store.repo.index.gc_apply

        def paused(*a, **kw):  # type: ignore[no-untyped-def]
            decision = original(*a, **kw)
            reached.set()
            assert release.wait(DEADLOCK_GUARD), "test deadlocked"
            return decision

        store.repo.index.gc_apply = paused  # type: ignore[method-assign]
        return reached, release

    a_applied, a_release = pause_after_apply(run_a)
    a, a_errors = _thread(lambda: run_a.gc(grace=NOW))
    assert a_applied.wait(DEADLOCK_GUARD)  # A's tombstones are written; the objects are still there
    tombstoned = set(writer.repo.index.tombstones())
    assert tombstoned
    b_applied, b_release = pause_after_apply(run_b)
    b, b_errors = _thread(lambda: run_b.gc(grace=NOW))
    assert b_applied.wait(DEADLOCK_GUARD)  # B read the same tombstones at its start
    a_release.set()
    a.join(DEADLOCK_GUARD)
    assert not a_errors, a_errors
    assert not packs_on_disk(tmp_path / "repo") & tombstoned
    writer.snapshot(src, "new")
    assert packs_on_disk(tmp_path / "repo") >= tombstoned  # the very same packs, stored again
    b_release.set()
    b.join(DEADLOCK_GUARD)
    assert not b_errors, b_errors
    check = writer.verify(read_data=True)
    assert check.ok, [str(p) for p in check.problems]
    writer.restore("new", tmp_path / "out")
    assert describe(str(tmp_path / "out")) == describe(str(src))
    for store in (writer, run_a, run_b):
        store.close()


def test_reading_never_writes_index_rows(tmp_path: Path) -> None:
    """A host whose index lacks another host's snapshot reads it from the backend without syncing."""
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "f").write_bytes(os.urandom(50_000))
    writer = Store.open(str(tmp_path / "repo"), index=f"sqlite:///{tmp_path / 'writer.sqlite'}")
    reader = Store.open(str(tmp_path / "repo"), index=f"sqlite:///{tmp_path / 'reader.sqlite'}")
    writer.snapshot(src, "elsewhere")
    assert reader.get("elsewhere").root == writer.get("elsewhere").root
    assert [p for p, _ in reader.ls("elsewhere", recursive=True)] == ["d", "d/f"]
    reader.restore("elsewhere", tmp_path / "out")
    assert describe(str(tmp_path / "out")) == describe(str(src))
    with sqlite3.connect(tmp_path / "reader.sqlite") as db:
        assert db.execute("SELECT count(*) FROM snapshots").fetchone()[0] == 0
        assert db.execute("SELECT count(*) FROM blobs").fetchone()[0] == 0
    writer.close()
    reader.close()

