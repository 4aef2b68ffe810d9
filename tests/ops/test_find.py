"""``cas find``, and ``ls``/``diff`` answered from the index's tree entries (issue 15), on SQLite and
PostgreSQL: the answers equal what reading the trees from the backend gives, and reading them
makes no backend call at all (counted on a real local backend)."""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backends.local import LocalBackend
from cas import Store
from cas.errors import ConfigurationError, NotFound
from cas.format import trees as tree_format
from cas.format.hashing import hexdigest
from cas.ops import browse
from cas.ops.find import Found, compile_pattern
from cas.terminal import quote_name
from tests.inprocess import cas
from tests.servers.postgres import postgres_admin, postgres_url  # noqa: F401


class CountingBackend(LocalBackend):
    """A real local backend that counts the calls made to it."""

    def __init__(self, root: str) -> None:
        super().__init__(root)
        self.calls: list[str] = []

    def get(self, key, offset=0, length=None):  # type: ignore[no-untyped-def]
        self.calls.append(f"get {key}")
        return super().get(key, offset, length)

    def list(self, prefix=""):  # type: ignore[no-untyped-def]
        self.calls.append(f"list {prefix}")
        return super().list(prefix)

    def stat(self, key):  # type: ignore[no-untyped-def]
        self.calls.append(f"stat {key}")
        return super().stat(key)

    def exists(self, key):  # type: ignore[no-untyped-def]
        self.calls.append(f"exists {key}")
        return super().exists(key)

    def put(self, key, data, *, overwrite=True):  # type: ignore[no-untyped-def]
        self.calls.append(f"put {key}")
        return super().put(key, data, overwrite=overwrite)

    def delete(self, key):  # type: ignore[no-untyped-def]
        self.calls.append(f"delete {key}")
        return super().delete(key)


@pytest.fixture(params=["sqlite", "postgresql"])
def index_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'index.sqlite'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def backend(tmp_path: Path) -> CountingBackend:
    return CountingBackend(str(tmp_path / "repo"))


@pytest.fixture
def store(tmp_path: Path, index_url: str, backend: CountingBackend, monkeypatch: pytest.MonkeyPatch) -> Iterator[Store]:
    monkeypatch.setenv("CAS_HOME", str(tmp_path / "home"))
    with Store.open(backend, index=index_url) as s:
        yield s


def _write(root: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)


PROJECT = {
    "train.py": b"train\n",
    "code/model.py": b"model\n",
    "code/util/io.py": b"io\n",
    "code/util/io.pyc": b"compiled\n",
    "code/README.md": b"readme\n",
    "data/x.bin": b"\x00" * 100,
    "data/deep/er/model.py": b"model\n",  # same content as code/model.py
}


def _take_three(store: Store, tmp_path: Path) -> Path:
    """run-1 (train), run-2 (eval, one file changed, one added), run-3 (train, one file removed)."""
    src = tmp_path / "project"
    _write(src, PROJECT)
    os.symlink("train.py", src / "main.py")
    (src / "empty").mkdir()
    store.snapshot(src, "run-1", labels={"workflow": "train"})
    (src / "code" / "model.py").write_bytes(b"model v2\n")
    (src / "code" / "util" / "new.py").write_bytes(b"new\n")
    store.snapshot(src, "run-2", labels={"workflow": "eval"})
    (src / "train.py").unlink()
    store.snapshot(src, "run-3", labels={"workflow": "train"})
    return src


def _by_reading(store: Store, execution_ids: list[str], pattern: str | None, digest: str | None = None) -> list[Found]:
    """The reference answer: walk each snapshot's trees as read from the backend."""
    compiled = compile_pattern(pattern) if pattern else None
    out = []
    for eid in execution_ids:
        for path, e in browse.walk(store.repo, store.get(eid).root, "", True):
            if e.type == tree_format.FILE and (compiled is None or compiled.matches(path)) and (
                    digest is None or e.digest == digest):
                out.append(Found(eid, path, e.size, e.digest))
    return out


def test_find_by_name_path_and_digest_newest_first(store: Store, tmp_path: Path, backend: CountingBackend) -> None:
    _take_three(store, tmp_path)
    reference = _by_reading(store, ["run-3", "run-2", "run-1"], "*.py")
    backend.calls.clear()
    found = list(store.find("*.py"))
    assert [(f.execution_id, f.path) for f in found] == [
        ("run-3", "code/model.py"), ("run-3", "code/util/io.py"), ("run-3", "code/util/new.py"),
        ("run-3", "data/deep/er/model.py"),
        ("run-2", "code/model.py"), ("run-2", "code/util/io.py"), ("run-2", "code/util/new.py"),
        ("run-2", "data/deep/er/model.py"), ("run-2", "train.py"),
        ("run-1", "code/model.py"), ("run-1", "code/util/io.py"), ("run-1", "data/deep/er/model.py"),
        ("run-1", "train.py"),
    ]
    model = hexdigest(b"model\n")
    assert found[-4] == Found("run-1", "code/model.py", 6, model)
    assert found == reference
    # A pattern with '/' is the whole path from the root; '**' spans directories.
    assert [f.path for f in store.find("code/*.py", execution_ids=["run-1"])] == ["code/model.py"]
    assert [f.path for f in store.find("/code/*.py", execution_ids=["run-1"])] == ["code/model.py"]
    assert [f.path for f in store.find("code/**/*.py", execution_ids=["run-1"])] == ["code/model.py", "code/util/io.py"]
    assert [f.path for f in store.find("**/model.py", execution_ids=["run-1"])] == ["code/model.py", "data/deep/er/model.py"]
    assert [f.path for f in store.find("data/**", execution_ids=["run-1"])] == ["data/deep/er/model.py", "data/x.bin"]
    assert [f.path for f in store.find("io.py?", execution_ids=["run-1"])] == ["code/util/io.pyc"]
    assert [f.path for f in store.find("[mt]*.py", execution_ids=["run-1"])] == [
        "code/model.py", "data/deep/er/model.py", "train.py"]
    assert list(store.find("main.py")) == [] and list(store.find("empty")) == []  # files only
    # --digest: every execution holding this content, wherever it is.
    assert [(f.execution_id, f.path) for f in store.find(digest=model.upper())] == [
        ("run-3", "data/deep/er/model.py"), ("run-2", "data/deep/er/model.py"),
        ("run-1", "code/model.py"), ("run-1", "data/deep/er/model.py"),
    ]
    assert [f.path for f in store.find("code/*", digest=model)] == ["code/model.py"]
    assert backend.calls == []


def test_find_filters_by_execution_labels_and_time(store: Store, tmp_path: Path, backend: CountingBackend) -> None:
    _take_three(store, tmp_path)
    backend.calls.clear()
    assert [f.execution_id for f in store.find("train.py", labels={"workflow": "train"})] == ["run-1"]
    assert {f.execution_id for f in store.find("*.py", labels={"workflow": "train"})} == {"run-1", "run-3"}
    assert [f.execution_id for f in store.find("train.py", execution_ids=["run-1", "run-2"])] == ["run-2", "run-1"]
    assert [f.execution_id for f in store.find("train.py", execution_ids=["run-1", "run-2"],
                                               labels={"workflow": "eval"})] == ["run-2"]
    t2 = store.get("run-2").time_ns
    since = dt.datetime.fromtimestamp(t2 // 1000 / 1e6, dt.timezone.utc).replace(microsecond=t2 // 1000 % 1_000_000)
    assert {f.execution_id for f in store.find("*.py", since=since)} == {"run-2", "run-3"}
    assert {f.execution_id for f in store.find("*.py", until=since)} == {"run-1"}
    assert list(store.find("*.py", since=dt.timedelta(seconds=-3600))) == []  # the future
    assert backend.calls == []
    with pytest.raises(NotFound):
        list(store.find("*.py", execution_ids=["nope"]))
    with pytest.raises(ConfigurationError):
        store.find()
    with pytest.raises(ConfigurationError):
        store.find(digest="xyz")
    with pytest.raises(ConfigurationError):
        store.find("")


def test_ls_and_diff_answer_from_the_index(store: Store, tmp_path: Path, backend: CountingBackend) -> None:
    _take_three(store, tmp_path)
    expected_ls = {eid: [(p, e.type, e.mode, e.mtime_ns, e.size, e.digest, e.target, e.tree)
                         for p, e in browse.walk(store.repo, store.get(eid).root, "", True)]
                   for eid in ("run-1", "run-2", "run-3")}
    expected_diff = browse.diff_trees(store.repo, store.get("run-1").root, store.get("run-3").root)
    backend.calls.clear()
    for eid, want in expected_ls.items():
        got = [(p, e.type, e.mode, e.mtime_ns, e.size, e.digest, e.target, e.tree)
               for p, e in store.ls(eid, recursive=True)]
        assert got == want
    assert [p for p, _ in store.ls("run-1", "code")] == ["code/README.md", "code/model.py", "code/util"]
    assert [p for p, _ in store.ls("run-1", "code/model.py")] == ["code/model.py"]
    assert list(store.ls("run-1", "empty")) == []
    assert store.diff("run-1", "run-3") == expected_diff
    assert {(c.path, c.kind) for c in expected_diff} >= {
        ("train.py", "removed"), ("code/model.py", "changed"), ("code/util/new.py", "added")}
    with pytest.raises(NotFound):
        list(store.ls("run-1", "code/nothing"))
    assert backend.calls == []


def test_snapshots_without_tree_entries_are_answered_by_reading_trees(
        store: Store, tmp_path: Path, backend: CountingBackend) -> None:
    _take_three(store, tmp_path)
    indexed_find = list(store.find("*.py"))
    indexed_ls = [(p, e.type, e.size, e.digest) for p, e in store.ls("run-2", recursive=True)]
    indexed_diff = store.diff("run-1", "run-2")
    from sqlalchemy import text

    with store.repo.index.engine.begin() as conn:  # as a row written before migration 0005 is
        conn.execute(text("UPDATE snapshots SET trees_indexed = false WHERE execution_id = 'run-2'"))
    backend.calls.clear()
    assert list(store.find("*.py")) == indexed_find
    assert [(p, e.type, e.size, e.digest) for p, e in store.ls("run-2", recursive=True)] == indexed_ls
    assert store.diff("run-1", "run-2") == indexed_diff
    assert backend.calls  # read from the backend this time
    store.sync()
    assert store.repo.index.snapshot("run-2").trees_indexed


def test_gc_drops_rows_of_trees_no_snapshot_reaches_and_rebuild_restores_them(
        store: Store, tmp_path: Path) -> None:
    _take_three(store, tmp_path)
    index = store.repo.index
    before = {eid: store.get(eid).root for eid in ("run-1", "run-2", "run-3")}
    assert index.indexed_trees(before.values()) == set(before.values())
    store.forget(["run-1"])
    report = store.gc()
    assert report.tree_rows_pruned > 0
    assert index.indexed_trees(before.values()) == {before["run-2"], before["run-3"]}
    assert list(store.find("train.py")) == [Found("run-2", "train.py", 6, hexdigest(b"train\n"))]
    assert store.gc().tree_rows_pruned == 0
    counts = _row_count(store)
    assert store.rebuild_index().trees_indexed == 2
    assert _row_count(store) == counts
    assert all(r.trees_indexed for r in index.snapshots())
    assert list(store.find("*.py")) == _by_reading(store, ["run-3", "run-2"], "*.py")


def test_a_commit_racing_a_prune_leaves_its_snapshot_to_be_filled(
        store: Store, tmp_path: Path, backend: CountingBackend, index_url: str) -> None:
    from cas.ops.snapshot import take as snapshot_op

    src = tmp_path / "p"
    # More directories than the spool holds before asking the index which it has (256), so it asks
    # while the tree is built, before the commit.
    _write(src, {f"d{i:03d}/f.py": f"{i}".encode() for i in range(300)})
    store.snapshot(src, "run-a")
    store.forget(["run-a"])
    original = snapshot_op.commit

    def commit_after_gc(repo, record, referenced, *rest):  # type: ignore[no-untyped-def]
        # The writer's spool found run-a's trees indexed and left them out; GC prunes them now.
        assert store.gc().tree_rows_pruned > 0
        return original(repo, record, referenced, *rest)

    snapshot_op.commit = commit_after_gc  # type: ignore[assignment]
    try:
        store.snapshot(src, "run-b")
    finally:
        snapshot_op.commit = original  # type: ignore[assignment]
    assert not store.repo.index.snapshot("run-b").trees_indexed  # not marked over missing rows
    reference = _by_reading(store, ["run-b"], "*")
    assert list(store.find("*")) == reference  # answered by reading its trees meanwhile
    with Store.open(backend, index=index_url) as reopened:  # the next open fills it
        assert reopened.repo.index.snapshot("run-b").trees_indexed
        backend.calls.clear()
        assert list(reopened.find("*")) == reference
        assert backend.calls == []


def _row_count(store: Store) -> int:
    from sqlalchemy import text

    with store.repo.index.engine.connect() as conn:
        return int(conn.execute(text("SELECT count(*) FROM tree_entries")).scalar())


def _deep_tree(src: Path) -> None:
    _write(src, {f"d{i:02d}/e{j}/f{k}.py": f"{i} {j} {k}".encode() for i in range(12) for j in range(3) for k in range(4)})
    (src / "empty").mkdir()  # an empty tree: no rows, ever


def _orphan_children(store: Store) -> list[str]:
    """Subdirectories named by some tree's rows that have no rows themselves (empty trees aside)."""
    from sqlalchemy import text

    from cas.ops.tree_index import EMPTY_TREE

    with store.repo.index.engine.connect() as conn:
        return [r[0] for r in conn.execute(text(
            "SELECT DISTINCT child FROM tree_entries WHERE child IS NOT NULL AND child != :empty"
            " AND child NOT IN (SELECT tree_id FROM tree_entries)"), {"empty": EMPTY_TREE})]


def test_a_first_snapshot_s_rows_are_written_as_its_walk_goes_not_in_its_commit(
        store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cas.ops import tree_index

    monkeypatch.setattr(tree_index, "_CHECK_EVERY", 7)
    src = tmp_path / "p"
    _deep_tree(src)
    index = store.repo.index
    real = index.commit_snapshot
    at_commit = []

    def commit_snapshot(row, blob_ids, **kwargs):  # type: ignore[no-untyped-def]
        kwargs["trees"] = list(kwargs["trees"])
        at_commit.append((_row_count(store), kwargs["trees"]))
        return real(row, blob_ids, **kwargs)

    monkeypatch.setattr(index, "commit_snapshot", commit_snapshot)
    store.snapshot(src, "walked")
    assert index.snapshot("walked").trees_indexed
    # Every row was in before the commit's transaction, which was handed none to write.
    assert at_commit == [(1 + 12 + 12 * 3 + 12 * 3 * 4, [])] and _row_count(store) == at_commit[0][0]
    listing = [(p, e.type, e.size, e.digest) for p, e in browse.walk(store.repo, store.get("walked").root, "", True)]
    assert [(p, e.type, e.size, e.digest) for p, e in store.ls("walked", recursive=True)] == listing


def test_a_prune_between_the_walk_s_batches_never_leaves_a_tree_with_rows_above_one_without(
        store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, backend: CountingBackend, index_url: str,
) -> None:
    from cas.ops import tree_index

    monkeypatch.setattr(tree_index, "_CHECK_EVERY", 7)
    monkeypatch.setattr(tree_index, "_SPILL_ROWS", 50)  # refused batches' rows spill to the temporary file
    src = tmp_path / "p"
    _deep_tree(src)
    index = store.repo.index
    real = index.add_tree_rows
    answers = []

    def add_tree_rows(trees, below):  # type: ignore[no-untyped-def]
        if len(answers) == 3:
            # GC prunes the rows written so far: no snapshot row reaches them yet.
            assert store.gc().tree_rows_pruned > 0
        answers.append(real(trees, below))
        assert _orphan_children(store) == []  # after every batch, written or refused
        return answers[-1]

    monkeypatch.setattr(index, "add_tree_rows", add_tree_rows)
    store.snapshot(src, "raced")
    assert answers[:3] == [True] * 3 and False in answers  # a batch above the pruned ones refused
    assert _orphan_children(store) == []
    assert not index.snapshot("raced").trees_indexed  # not marked over the pruned rows
    reference = _by_reading(store, ["raced"], "*")
    assert list(store.find("*")) == reference  # answered by reading its trees meanwhile
    with Store.open(backend, index=index_url) as reopened:  # the next open fills it
        assert reopened.repo.index.snapshot("raced").trees_indexed
        assert list(reopened.find("*")) == reference
        assert _orphan_children(reopened) == []


def test_names_that_are_not_utf8_are_kept_exactly(store: Store, tmp_path: Path, backend: CountingBackend) -> None:
    src = tmp_path / "p"
    (src / "dir\u00e9").mkdir(parents=True)
    raw = os.path.join(os.fsencode(src / "dir\u00e9"), b"bad\xff name.py")
    with open(raw, "wb") as f:
        f.write(b"x")
    os.symlink(b"target\xfe", os.path.join(os.fsencode(src), b"link\xfd"))
    store.snapshot(src, "odd")
    reference = _by_reading(store, ["odd"], "*.py")
    listing = [(p, e.type, e.target) for p, e in browse.walk(store.repo, store.get("odd").root, "", True)]
    backend.calls.clear()
    found = list(store.find("*.py"))
    assert found == reference and os.fsencode(found[0].path) == b"dir\xc3\xa9/bad\xff name.py"
    assert [(p, e.type, e.target) for p, e in store.ls("odd", recursive=True)] == listing
    assert os.fsencode(listing[-1][2]) == b"target\xfe"
    assert backend.calls == []


def test_unchanged_directories_add_no_rows(store: Store, tmp_path: Path) -> None:
    src = tmp_path / "p"
    _write(src, {f"d{i}/f{j}": f"{i}/{j}".encode() for i in range(5) for j in range(10)})
    store.snapshot(src, "a")
    first = _row_count(store)
    assert first == 5 + 50
    (src / "d3" / "f0").write_bytes(b"changed")
    store.snapshot(src, "b")
    assert _row_count(store) == first + 5 + 10  # a new root and a new d3, nothing else
    store.snapshot(src, "c")
    assert _row_count(store) == first + 15


def test_a_second_host_syncs_tree_entries(tmp_path: Path, store: Store, backend: CountingBackend) -> None:
    _take_three(store, tmp_path)
    other = Store.open(backend, index=f"sqlite:///{tmp_path / 'other.sqlite'}")
    try:
        assert all(r.trees_indexed for r in other.repo.index.snapshots())
        backend.calls.clear()
        assert list(other.find("*.py")) == list(store.find("*.py"))
        assert other.diff("run-1", "run-2") == store.diff("run-1", "run-2")
        assert backend.calls == []
    finally:
        other.close()


def test_a_directory_stored_as_parts_is_listed_by_its_logical_entries(store: Store, tmp_path: Path) -> None:
    src = tmp_path / "big"
    src.mkdir()
    names = [f"{i:06d}-" + "n" * 240 for i in range(13000)]
    for name in names:
        (src / name).write_bytes(b"")
    store.snapshot(src, "big")
    root = store.get("big").root
    node = tree_format.decode_node(store.repo.read_blob(root))
    assert isinstance(node, tuple) and len(node) > 1  # stored as parts
    assert store.repo.index.indexed_trees(list(node)) == set()  # parts have no rows of their own
    assert [p for p, _ in store.ls("big")] == names
    assert len(list(store.find("*-n*"))) == 13000


# -- round trips: random trees, index against reading ------------------------------------------

_names = st.sampled_from(["a", "b", "c.py", "d.py", "e.txt", "sub", "x y", "ünï.py"])
_trees = st.recursive(
    st.binary(max_size=8),
    lambda kids: st.dictionaries(_names, kids, max_size=4),
    max_leaves=12,
).filter(lambda t: isinstance(t, dict))


def _materialise(root: Path, tree: dict) -> None:  # type: ignore[type-arg]
    root.mkdir(parents=True, exist_ok=True)
    for name, sub in tree.items():
        if isinstance(sub, dict):
            _materialise(root / name, sub)
        else:
            (root / name).write_bytes(sub)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(versions=st.lists(_trees, min_size=1, max_size=3), pattern=st.sampled_from(["*", "*.py", "sub/*", "**/a", "?"]))
def test_index_answers_equal_reading_the_trees(
        tmp_path_factory: pytest.TempPathFactory, versions: list[dict], pattern: str) -> None:  # type: ignore[type-arg]
    """On SQLite (PostgreSQL runs the examples above)."""
    work = tmp_path_factory.mktemp("rt")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CAS_HOME", str(work / "home"))
        _round_trip(work, versions, pattern)


def _round_trip(work: Path, versions: list[dict], pattern: str) -> None:  # type: ignore[type-arg]
    with Store.open(str(work / "repo"), index=f"sqlite:///{work / 'i.sqlite'}") as store:
        ids = []
        for n, tree in enumerate(versions):
            src = work / f"v{n}"
            _materialise(src, tree)
            store.snapshot(src, f"e{n}")
            ids.append(f"e{n}")
        newest_first = [s.execution_id for s in store.list()]
        assert list(store.find(pattern)) == _by_reading(store, newest_first, pattern)
        for eid in ids:
            got = [(p, e.type, e.size, e.digest, e.tree) for p, e in store.ls(eid, recursive=True)]
            want = [(p, e.type, e.size, e.digest, e.tree) for p, e in browse.walk(store.repo, store.get(eid).root, "", True)]
            assert got == want
        assert store.diff(ids[0], ids[-1]) == browse.diff_trees(
            store.repo, store.get(ids[0]).root, store.get(ids[-1]).root)


def test_runs_shared_between_executions_give_each_its_answer_in_path_order(
        store: Store, tmp_path: Path, backend: CountingBackend) -> None:
    """Versions of one directory whose files lie between its subdirectories' (``d/a.py``, ``d/m/``,
    ``d/z.py``): each execution's answer, put together from runs shared with others, is what reading
    its trees gives, however the versions interleave."""
    src = tmp_path / "p"
    _write(src, {"d/a.py": b"a", "d/m/x.py": b"x", "d/m/y.txt": b"y", "d/z.py": b"z", "d/zz/q.py": b"q",
                 "top.py": b"t", "e/'quoted'.py": b"q", "e/caf\u00e9.py".encode().decode("unicode_escape"): b"c"})
    ids = []
    for n, (rel, data) in enumerate([("d/a.py", b"a2"), ("d/m/x.py", b"x2"), ("d/z.py", b"z2"), ("d/a.py", b"a3"),
                                      ("d/zz/q.py", b"q2"), ("top.py", b"t2")]):
        (src / rel).write_bytes(data)
        store.snapshot(src, f"e{n}", labels={"workflow": "train" if n % 3 else "eval"})
        ids.append(f"e{n}")
    assert [s.execution_id for s in store.list()] == list(reversed(ids))
    for pattern, labels in [("*.py", {}), ("*.py", {"workflow": "train"}), ("d/*.py", {}), ("**/m/*", {}), ("*", {})]:
        chosen = [s.execution_id for s in store.list(labels=labels)]
        want = [(eid, _by_reading(store, [eid], pattern)) for eid in chosen]
        backend.calls.clear()
        rows = list(store.find(pattern, labels=labels))
        by_execution = [(eid, [Found(eid, *m) for m in matches])
                        for eid, matches in store.find(pattern, labels=labels).by_execution()]
        runs = [(eid, [Found(eid, *m) for run in rs for m in run]) for eid, rs in store.find(pattern, labels=labels).runs()]
        assert backend.calls == []
        assert rows == [f for _, found in want for f in found]
        assert by_execution == runs == want


# -- the command line ---------------------------------------------------------------------------


def test_find_on_the_command_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "project"
    _write(src, PROJECT)
    base = ("--repo", str(tmp_path / "repo"))
    cas(tmp_path, *base, "snapshot", str(src), "-e", "run-1", "--label", "workflow=train")
    (src / "code" / "model.py").write_bytes(b"model v2\n")
    cas(tmp_path, *base, "snapshot", str(src), "-e", "run-2", "--label", "workflow=eval")
    lines = cas(tmp_path, *base, "find", "*.py", "--label", "workflow=train").stdout.splitlines()
    assert [line.split()[0] for line in lines] == ["run-1"] * 4
    assert lines[0].split() == ["run-1", "6", hexdigest(b"model\n"), "code/model.py"]
    rows = json.loads(cas(tmp_path, *base, "find", "model.py", "--json").stdout)
    assert [(r["execution_id"], r["path"]) for r in rows] == [
        ("run-2", "code/model.py"), ("run-2", "data/deep/er/model.py"),
        ("run-1", "code/model.py"), ("run-1", "data/deep/er/model.py")]
    assert json.loads(cas(tmp_path, *base, "--json", "find", "model.py", "-e", "run-1").stdout)[0] == {
        "execution_id": "run-1", "path": "code/model.py", "size": 6, "digest": hexdigest(b"model\n")}
    by_digest = cas(tmp_path, *base, "find", "--digest", hexdigest(b"model\n"), "-e", "run-2").stdout.split()
    assert by_digest == ["run-2", "6", hexdigest(b"model\n"), "data/deep/er/model.py"]
    since = cas(tmp_path, *base, "find", "train.py", "--since", "1h", "--until", "2999-01-01").stdout
    assert [line.split()[0] for line in since.splitlines()] == ["run-2", "run-1"]
    # Many versions of a directory, a quoted name and a non-ASCII one: the lines and the JSON are the
    # API's answer, row for row.
    (src / "code" / "it's.py").write_bytes(b"quote\n")
    (src / "code" / "caf\u00e9.py").write_bytes(b"cafe\n")
    for n in range(3, 7):
        (src / "code" / "util" / "io.py").write_bytes(b"io %d\n" % n)
        (src / "data" / "deep" / f"n{n}.py").write_bytes(b"n\n")
        cas(tmp_path, *base, "snapshot", str(src), "-e", f"run-{n}", "--label", f"workflow={'train' if n % 2 else 'eval'}")
    monkeypatch.setenv("CAS_HOME", str(tmp_path / "home"))  # the index the commands made
    for args in (("*.py",), ("*.py", "--label", "workflow=train"), ("code/**",), ("--digest", hexdigest(b"n\n"))):
        text = cas(tmp_path, *base, "find", *args).stdout
        rows = json.loads(cas(tmp_path, *base, "find", *args, "--json").stdout)
        with Store.open(str(tmp_path / "repo")) as opened:
            pattern = None if args[0] == "--digest" else args[0]
            want = list(opened.find(pattern, digest=args[1] if pattern is None else None,
                                    labels=dict([args[2].split("=")]) if len(args) > 2 else None))
        assert want and text == "".join(f"{f.execution_id}  {f.size:>12}  {f.digest}  {quote_name(f.path)}\n" for f in want)
        assert rows == [f._asdict() for f in want]
    none = cas(tmp_path, *base, "find", "nothing-like-this")
    assert none.stdout == "" and "no files found" in none.stderr
    for bad, message in [
        ((), "find needs a PATTERN"),
        (("--digest", "abc"), "64 hex digits"),
        (("*.py", "-e", "run-9"), "unknown execution ID"),
        (("x\\",), "lone"),
    ]:
        proc = cas(tmp_path, *base, "find", *bad, check=False)
        assert proc.returncode == 1 and message in proc.stderr and "Traceback" not in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1
