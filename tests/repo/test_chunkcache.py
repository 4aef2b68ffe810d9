"""The bounded chunk cache: real processes hammering one cache with a small cap."""

from __future__ import annotations

import multiprocessing
import os
import random
import shutil
import sqlite3
import tempfile
import threading
import time
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from cas.errors import ConfigurationError
from cas.format.hashing import hexdigest
from cas.repo.chunkcache import BLOCK, ChunkCache, allocated, parse_size

CAP = 256 * 1024
LARGEST = 48 * 1024
POOL = 120


def _chunk(n: int) -> bytes:
    """The n-th chunk of a pool every process agrees on (so they race for the same entries)."""
    rng = random.Random(n)
    return rng.randbytes(rng.randint(1, LARGEST))


def _hammer(root: str, seed: int, rounds: int, errors: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    """Read through the cache as a restore does: get, and on a miss put what was 'fetched'."""
    cache = ChunkCache(root, max_bytes=CAP)
    rng = random.Random(seed)
    ids = [hexdigest(_chunk(n)) for n in range(POOL)]
    try:
        for i in range(rounds):
            n = int(rng.paretovariate(1.2)) % POOL  # some chunks far more used than others
            got = cache.get(ids[n])
            if got is None:
                cache.put(ids[n], _chunk(n))
            elif got != _chunk(n):
                errors.put(f"chunk {n} read back wrong")
            if seed == 0 and i % 150 == 149:
                cache.prune(CAP // 2)  # a maintenance run racing the readers
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which fails the test
        errors.put(repr(exc))
    finally:
        cache.close()


def _on_disk(root: Path) -> int:
    """Bytes allocated to every file under the cache's entry directories, temporaries included.
    Counted once per (inode, chunk): a temporary renamed into place while the directory is listed
    can show under both names (the listing is in hash order, not an instant), and is one file."""
    blocks: dict[tuple[int, str], int] = {}
    for sub in root.iterdir():
        if sub.is_dir() and len(sub.name) == 2:
            for f in sub.iterdir():
                try:
                    st = f.stat()
                except FileNotFoundError:
                    continue
                blocks[(st.st_ino, f.name.partition(".tmp-")[0])] = st.st_blocks * 512
    return sum(blocks.values())


def test_processes_sharing_a_small_cache_stay_under_its_cap(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    ChunkCache(str(root), max_bytes=CAP).close()
    ctx = multiprocessing.get_context("spawn")
    errors = ctx.Queue()
    workers = [ctx.Process(target=_hammer, args=(str(root), seed, 600, errors)) for seed in range(4)]
    samples: list[int] = []
    done = threading.Event()

    def sample() -> None:
        # A directory walk is not an instant: under churn it counts entries evicted after it passed
        # them and entries written where it goes next. Holding the ledger's write lock while walking
        # stops evictions and new reservations (files already reserved may still be renamed into
        # place), so each sample is what was on disk at one moment.
        ledger = sqlite3.connect(root / "ledger.sqlite", timeout=60, isolation_level=None)
        while not done.is_set():
            ledger.execute("BEGIN IMMEDIATE")
            samples.append(_on_disk(root))
            ledger.execute("COMMIT")
            time.sleep(0.002)
        ledger.close()

    sampler = threading.Thread(target=sample)
    sampler.start()
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
    done.set()
    sampler.join()
    assert [w.exitcode for w in workers] == [0, 0, 0, 0]
    problems = []
    while not errors.empty():
        problems.append(errors.get())
    assert problems == []
    assert len(samples) > 20
    # Entries are reserved before they are written, so the files never exceed the cap; the
    # allowance is one entry, for a file system that allocates differently from the accounting.
    assert max(samples) <= CAP + allocated(LARGEST), (max(samples), CAP)
    assert max(samples) > CAP // 2  # the cap was actually reached: eviction ran

    # Afterwards: no temporaries, no claims, and the ledger agrees with the files.
    names = [p.name for sub in root.iterdir() if sub.is_dir() for p in sub.iterdir()]
    assert not [n for n in names if ".tmp-" in n]
    assert not (root / "claims").exists() or os.listdir(root / "claims") == []
    cache = ChunkCache(str(root), max_bytes=CAP)
    stats = cache.stats()
    files = {p.name: p.stat().st_size for sub in root.iterdir() if sub.is_dir() for p in sub.iterdir()}
    assert stats.entries == len(files)
    assert stats.bytes == sum(allocated(s) for s in files.values()) <= CAP
    assert stats.hits > 0 and stats.misses > 0
    for chunk_id in files:
        assert cache.get(chunk_id) is not None  # every entry verifies
    cache.close()


def test_a_damaged_entry_is_dropped_and_unaccounted(tmp_path: Path) -> None:
    cache = ChunkCache(str(tmp_path / "c"), max_bytes=1 << 20)
    data = os.urandom(10_000)
    chunk_id = hexdigest(data)
    cache.put(chunk_id, data)
    assert cache.stats().bytes == allocated(10_000)
    Path(cache._path(chunk_id)).write_bytes(b"garbage")
    assert cache.get(chunk_id) is None
    assert chunk_id not in cache
    assert cache.stats().bytes == 0 and cache.stats().entries == 0
    cache.close()


def test_least_recently_used_goes_first(tmp_path: Path) -> None:
    cache = ChunkCache(str(tmp_path / "c"), max_bytes=3 * BLOCK)
    blobs = [os.urandom(100) + bytes([i]) for i in range(4)]
    ids = [hexdigest(b) for b in blobs]
    for chunk_id, blob in zip(ids[:3], blobs[:3]):
        cache.put(chunk_id, blob)
        time.sleep(0.002)
    assert cache.get(ids[0]) == blobs[0]  # now the first is the most recently used
    cache.flush()
    cache.put(ids[3], blobs[3])
    assert [i in cache for i in ids] == [True, False, True, True]
    cache.close()


def test_an_old_cache_without_ledger_is_adopted_and_pruned(tmp_path: Path) -> None:
    root = tmp_path / "c"
    blobs = [os.urandom(5000) for _ in range(6)]
    for blob in blobs:  # the layout an older cas wrote, with no ledger
        chunk_id = hexdigest(blob)
        (root / chunk_id[:2]).mkdir(parents=True, exist_ok=True)
        (root / chunk_id[:2] / chunk_id).write_bytes(blob)
    (root / "ab").mkdir(exist_ok=True)
    (root / "ab" / ("ab" + "0" * 62 + ".tmp-deadbeef")).write_bytes(b"left by a crash")
    cache = ChunkCache(str(root), max_bytes=1 << 20)
    assert cache.stats().entries == 6 and cache.stats().bytes == 6 * allocated(5000)
    assert cache.prune(2 * allocated(5000)) == 4
    assert cache.stats().entries == 2
    assert not list((root / "ab").glob("*.tmp-*"))
    cache.close()


def test_a_chunk_larger_than_the_cap_is_not_cached(tmp_path: Path) -> None:
    cache = ChunkCache(str(tmp_path / "c"), max_bytes=BLOCK)
    blob = os.urandom(BLOCK + 1)
    cache.put(hexdigest(blob), blob)
    assert hexdigest(blob) not in cache and cache.stats().bytes == 0
    cache.close()


def test_the_cap_comes_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAS_CACHE_MAX", "3MiB")
    assert ChunkCache(str(tmp_path / "a")).max_bytes == 3 << 20
    monkeypatch.delenv("CAS_CACHE_MAX")

    def free() -> int:
        st = os.statvfs(tmp_path)
        return st.f_bavail * st.f_frsize

    before = free()
    default = ChunkCache(str(tmp_path / "b")).max_bytes
    after = free()  # other processes write to this disk too: the default lies between the two
    assert min(10 << 30, min(before, after) // 10) - 1 <= default <= min(10 << 30, max(before, after) // 10 + 1)


@pytest.mark.parametrize(
    "text, expected",
    [("10GiB", 10 << 30), ("2G", 2 << 30), ("500MB", 500_000_000), ("1.5KiB", 1536), ("4096", 4096), ("0", 0)],
)
def test_sizes(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "ten", "5 parsecs", "-1G", "1iB", "1e3"])
def test_bad_sizes(text: str) -> None:
    with pytest.raises(ConfigurationError, match="size"):
        parse_size(text)


def test_a_damaged_ledger_is_rebuilt_from_the_entries(tmp_path: Path) -> None:
    root = tmp_path / "c"
    cache = ChunkCache(str(root), max_bytes=1 << 20)
    blobs = [os.urandom(3000) for _ in range(3)]
    for blob in blobs:
        cache.put(hexdigest(blob), blob)
    cache.close()
    (root / "ledger.sqlite").write_bytes(b"this is not a database" * 100)
    cache = ChunkCache(str(root), max_bytes=1 << 20)
    assert cache.stats().entries == 3 and cache.stats().bytes == 3 * allocated(3000)
    assert all(cache.get(hexdigest(b)) == b for b in blobs)
    cache.close()


class CacheMachine(RuleBasedStateMachine):
    """Random puts, gets, damage, prunes and clears against one cache (and a second handle on it,
    as another process would have): whatever happens, the ledger matches the files, the files stay
    under the cap, and a get returns the chunk's bytes or nothing."""

    def __init__(self) -> None:
        super().__init__()
        self.root = tempfile.mkdtemp(prefix="cache-machine-")
        self.cap = 6 * BLOCK
        self.handles = [ChunkCache(self.root, max_bytes=self.cap), ChunkCache(self.root, max_bytes=self.cap)]
        self.blobs: dict[str, bytes] = {}

    def teardown(self) -> None:
        for handle in self.handles:
            handle.close()
        shutil.rmtree(self.root, ignore_errors=True)

    @rule(size=st.integers(1, 3 * BLOCK), seed=st.integers(0, 7), which=st.integers(0, 1))
    def put(self, size: int, seed: int, which: int) -> None:
        blob = random.Random(seed).randbytes(size)
        self.blobs[hexdigest(blob)] = blob
        self.handles[which].put(hexdigest(blob), blob)

    @rule(data=st.data(), which=st.integers(0, 1))
    def get(self, data: st.DataObject, which: int) -> None:
        if self.blobs:
            chunk_id = data.draw(st.sampled_from(sorted(self.blobs)))
            assert self.handles[which].get(chunk_id) in (None, self.blobs[chunk_id])

    @rule(data=st.data())
    def damage(self, data: st.DataObject) -> None:
        present = [c for c in sorted(self.blobs) if c in self.handles[0]]
        if present:
            chunk_id = data.draw(st.sampled_from(present))
            Path(self.handles[0]._path(chunk_id)).write_bytes(b"bad")
            assert self.handles[1].get(chunk_id) is None

    @rule(size=st.integers(0, 8 * BLOCK))
    def prune(self, size: int) -> None:
        self.handles[0].prune(size)
        assert self.handles[0].stats().bytes <= size

    @rule()
    def clear(self) -> None:
        self.handles[1].clear()

    @invariant()
    def ledger_matches_files(self) -> None:
        files = {p.name: p.stat().st_size for p in Path(self.root).glob("??/*")}
        stats = self.handles[0].stats()
        assert stats.entries == len(files) and not [n for n in files if ".tmp-" in n]
        assert stats.bytes == sum(allocated(s) for s in files.values()) <= self.cap
        for chunk_id, size in files.items():
            assert size == len(self.blobs[chunk_id]) or size == 3  # a damaged entry not yet read


TestCacheMachine = CacheMachine.TestCase
TestCacheMachine.settings = settings(max_examples=40, stateful_step_count=25, deadline=None)
