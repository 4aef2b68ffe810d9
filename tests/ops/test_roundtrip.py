"""Snapshot then restore gives back the tree exactly: bytes, modes, mtimes, symlinks, empty dirs."""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cas import Store
from cas.format.hashing import HASH_BESIDE_FROM
from tests.engine import SMALL_CHUNKS
from tests.treeutil import describe


@pytest.fixture
def store(either_store: Store) -> Store:
    """Every test here holds for a plain and an encrypted repository (tests/conftest.py)."""
    return either_store


_names = st.one_of(
    st.text(
        alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="/\x00"),
        min_size=1,
        max_size=12,
    ),
    st.sampled_from(["a", "b.py", " space", "-dash", ".hidden", "üñï", "日本", "x" * 200, "..dots"]),
).filter(lambda n: n not in (".", "..") and len(n.encode()) < 250)

# Sizes cluster around the test repository's chunk limits (64 / 256 / 1024) and zero.
_sizes = st.one_of(
    st.sampled_from([0, 1, 63, 64, 65, 255, 256, 257, 1023, 1024, 1025, 4096]),
    st.integers(0, 20_000),
)


@st.composite
def _trees(draw: st.DrawFn, depth: int = 0) -> dict[str, object]:
    names = draw(st.lists(_names, max_size=5 if depth < 2 else 3, unique_by=lambda n: n.lower()))
    tree: dict[str, object] = {}
    for name in names:
        kind = draw(st.sampled_from(["file", "file", "dir", "link"] if depth < 3 else ["file", "link"]))
        if kind == "file":
            size = draw(_sizes)
            seed = draw(st.integers(0, 2**32 - 1))
            mode = draw(st.sampled_from([0o644, 0o600, 0o755, 0o700, 0o444, 0o640]))
            tree[name] = ("file", size, seed, mode)
        elif kind == "dir":
            tree[name] = ("dir", draw(_trees(depth + 1)), draw(st.sampled_from([0o755, 0o700, 0o750])))
        else:
            tree[name] = ("link", draw(st.sampled_from(["target", "../up", "/abs/path", "a/b/c", name])))
    return tree


def _content(size: int, seed: int) -> bytes:
    import random

    rng = random.Random(seed)
    # Half random, half repetitive, so both zstd and raw codecs are exercised.
    if seed % 2:
        return rng.randbytes(size)
    return (rng.randbytes(16) * (size // 16 + 1))[:size]


def _materialise(root: str, tree: dict[str, object], times: list[int]) -> None:
    os.makedirs(root, exist_ok=True)
    for name, spec in tree.items():
        path = os.path.join(root, name)
        if spec[0] == "file":
            _, size, seed, mode = spec  # type: ignore[misc]
            with open(path, "wb") as f:
                f.write(_content(size, seed))
            os.chmod(path, mode)
            t = times[len(path) % len(times)]
            os.utime(path, ns=(t, t))
        elif spec[0] == "dir":
            _materialise(path, spec[1], times)  # type: ignore[arg-type]
            os.chmod(path, spec[2])  # type: ignore[misc]
        else:
            os.symlink(spec[1], path)  # type: ignore[arg-type]
            t = times[0]
            os.utime(path, ns=(t, t), follow_symlinks=False)
    t = times[-1]
    os.utime(root, ns=(t, t))


_example_ids = itertools.count()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tree=_trees(), times=st.lists(st.integers(0, 4_000_000_000_000_000_000), min_size=1, max_size=3))
def test_random_trees_round_trip_exactly(store: Store, tree: dict[str, object], times: list[int]) -> None:
    work = tempfile.mkdtemp()
    try:
        src = os.path.join(work, "src")
        _materialise(src, tree, times)
        # One ID per example (not a hash of it: Python hashes 0 and 2**61 - 1 alike, so two examples
        # could share an ID and the second restore the first's snapshot).
        execution_id = f"run-{next(_example_ids)}"
        store.snapshot(src, execution_id, use_files_cache=False)
        dest = os.path.join(work, "dest")
        store.restore(execution_id, dest)
        assert describe(dest) == describe(src)
        assert os.stat(dest).st_mtime_ns == os.stat(src).st_mtime_ns
    finally:
        shutil.rmtree(work)


def test_empty_directory_tree_round_trips(store: Store, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "a" / "b" / "c").mkdir(parents=True)
    (src / "empty").mkdir()
    store.snapshot(src, "empty-dirs")
    store.restore("empty-dirs", tmp_path / "out")
    assert describe(str(tmp_path / "out")) == describe(str(src))


def test_non_utf8_names_round_trip(store: Store, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    raw = os.path.join(os.fsencode(str(src)), b"caf\xe9-latin1")
    with open(raw, "wb") as f:
        f.write(b"bytes name")
    store.snapshot(src, "latin1")
    store.restore("latin1", tmp_path / "out")
    with open(os.path.join(os.fsencode(str(tmp_path / "out")), b"caf\xe9-latin1"), "rb") as f:
        assert f.read() == b"bytes name"


def test_single_file_snapshot_restores_under_its_name(store: Store, tmp_path: Path) -> None:
    f = tmp_path / "model.bin"
    f.write_bytes(os.urandom(5000))
    os.chmod(f, 0o640)
    store.snapshot(f, "one-file")
    store.restore("one-file", tmp_path / "out")
    assert (tmp_path / "out" / "model.bin").read_bytes() == f.read_bytes()
    assert os.stat(tmp_path / "out" / "model.bin").st_mode & 0o777 == 0o640


def test_restore_of_one_path_and_open_file(store: Store, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "pkg" / "sub").mkdir(parents=True)
    (src / "pkg" / "sub" / "train.py").write_bytes(b"print('train')\n" * 300)
    (src / "other.txt").write_text("other")
    store.snapshot(src, "sel")
    store.restore("sel", tmp_path / "one", path="pkg/sub/train.py")
    assert sorted(os.listdir(tmp_path / "one")) == ["train.py"]
    assert (tmp_path / "one" / "train.py").read_bytes() == (src / "pkg" / "sub" / "train.py").read_bytes()
    store.restore("sel", tmp_path / "subtree", path="pkg")
    assert (tmp_path / "subtree" / "pkg" / "sub" / "train.py").exists()
    with store.open_file("sel", "/pkg/sub/train.py") as stream:
        assert stream.read() == (src / "pkg" / "sub" / "train.py").read_bytes()


def test_file_digest_is_plain_blake3_of_content(store: Store, tmp_path: Path) -> None:
    import blake3

    src = tmp_path / "src"
    src.mkdir()
    # "large" is hashed whole on a thread beside its chunks (HashBeside), the chunker's buffer
    # reused from piece to piece; and so it is again as it is restored.
    for name, size in (("small", 10), ("multi", 50_000), ("empty", 0), ("large", HASH_BESIDE_FROM + 12_345)):
        (src / name).write_bytes(os.urandom(size))
    store.snapshot(src, "digests")
    for path, entry in store.ls("digests"):
        assert entry.digest == blake3.blake3((src / path).read_bytes()).hexdigest()
    store.restore("digests", tmp_path / "back")
    assert (tmp_path / "back" / "large").read_bytes() == (src / "large").read_bytes()


def test_special_files_are_skipped_with_a_warning(store: Store, tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    src = tmp_path / "src"
    src.mkdir()
    (src / "ok").write_text("ok")
    os.mkfifo(src / "pipe")
    snap = store.snapshot(src, "fifo")
    assert snap.stats["skipped"] == 1
    assert any("pipe" in r.getMessage() for r in caplog.records)
    assert [p for p, _ in store.ls("fifo")] == ["ok"]


def test_resnapshot_uses_files_cache_and_stays_exact(store: Store, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    old = 1_600_000_000_000_000_000
    for i in range(5):
        p = src / f"f{i}"
        p.write_bytes(os.urandom(3000))
        os.utime(p, ns=(old, old))
    first = store.snapshot(src, "cache-1")
    assert first.stats["files_from_cache"] == 0
    (src / "f0").write_bytes(os.urandom(3000))
    os.utime(src / "f0", ns=(old, old))  # same mtime: ctime and the racy rule must catch it
    second = store.snapshot(src, "cache-2")
    assert second.stats["files_from_cache"] == 4
    store.restore("cache-2", tmp_path / "out")
    assert (tmp_path / "out" / "f0").read_bytes() == (src / "f0").read_bytes()


def test_chunk_cache_serves_repeated_restores_and_survives_damage(tmp_path: Path, cas_home: Path) -> None:
    from backends.local import LocalBackend

    class CountingBackend(LocalBackend):
        gets = 0

        def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
            if key.startswith("data/"):
                CountingBackend.gets += 1
            return super().get(key, offset, length)

    src = tmp_path / "deps"
    src.mkdir()
    for i in range(5):
        (src / f"lib{i}.so").write_bytes(os.urandom(20_000))
    backend = CountingBackend(tmp_path / "repo")
    with Store.open(backend, index=f"sqlite:///{tmp_path / 'i.sqlite'}", chunk_cache=str(tmp_path / "cc"),
                    **SMALL_CHUNKS) as store:
        store.snapshot(src, "exec-1")
        store.snapshot(src, "exec-2")
        store.restore("exec-1", tmp_path / "o1")
        first = CountingBackend.gets
        assert first > 0
        store.restore("exec-2", tmp_path / "o2")  # same chunks: all from the cache
        assert CountingBackend.gets == first
        # A damaged cache entry is detected, dropped and fetched again, never restored.
        entries = sorted(p for p in (tmp_path / "cc").rglob("*") if p.is_file())
        assert entries
        victim = entries[0]
        good = victim.read_bytes()
        victim.write_bytes(b"garbage")
        store.restore("exec-2", tmp_path / "o3")
        assert CountingBackend.gets > first  # the damaged chunk came from the backend again
        assert victim.read_bytes() == good  # and the cache holds the verified chunk once more
    assert describe(str(tmp_path / "o3")) == describe(str(src))
