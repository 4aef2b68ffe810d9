"""The files cache forgets paths that no snapshot has seen for its time to live, and knows the
large files a restore created."""

from __future__ import annotations

import datetime as dt
import os
import sqlite3
import stat
import struct
import time
from pathlib import Path

import blake3
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cas import Store
from cas.repo import filescache
from cas.repo.filescache import (
    CachedFile,
    FilesCache,
    FilesRecorder,
    expire_files_caches,
    files_cache_paths,
    listing_digest,
)

OLD = 1_600_000_000_000_000_000


def _files(root: Path, n: int) -> Path:
    root.mkdir(parents=True)
    for i in range(n):
        p = root / f"f{i}"
        p.write_bytes(os.urandom(2000))
        os.utime(p, ns=(OLD, OLD))  # well past the racy window: the cache records them
    return root


def _entries(home: Path) -> int:
    (path,) = files_cache_paths(str(home / "cache"))
    with sqlite3.connect(path) as db:
        return int(db.execute("SELECT COUNT(*) FROM files").fetchone()[0])


def test_entries_expire_unless_a_snapshot_sees_their_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("CAS_HOME", str(home))
    a, b = _files(tmp_path / "a", 4), _files(tmp_path / "b", 3)
    ttl = dt.timedelta(seconds=1)
    with Store.open(str(tmp_path / "repo"), index=f"sqlite:///{tmp_path / 'i.sqlite'}") as store:
        store.snapshot(a, "a-1", files_cache_ttl=ttl)
        assert _entries(home) == 4
        time.sleep(1.2)
        # Unchanged files come from the cache, and being seen keeps them from expiring.
        assert store.snapshot(a, "a-2", files_cache_ttl=ttl).stats["files_from_cache"] == 4
        assert _entries(home) == 4
        time.sleep(1.2)
        store.snapshot(b, "b-1", files_cache_ttl=ttl)  # a/ not seen for over a second: forgotten
        assert _entries(home) == 3
        assert store.snapshot(a, "a-3").stats["files_from_cache"] == 0  # read again
        assert _entries(home) == 7  # the default time to live (30 days) keeps b/'s entries
        assert store.snapshot(b, "b-2").stats["files_from_cache"] == 3


def test_prune_expires_every_files_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("CAS_HOME", str(home))
    with Store.open(str(tmp_path / "repo"), index=f"sqlite:///{tmp_path / 'i.sqlite'}") as store:
        store.snapshot(_files(tmp_path / "a", 5), "a-1")
    assert expire_files_caches(str(home / "cache"), dt.timedelta(days=1)) == 0
    time.sleep(0.05)
    assert expire_files_caches(str(home / "cache"), dt.timedelta(0)) == 5
    assert _entries(home) == 0


def test_a_cache_from_before_expiry_is_upgraded(tmp_path: Path) -> None:
    path = tmp_path / "files-v2-x.sqlite"
    with sqlite3.connect(path) as db:  # the table as cas wrote it before entries expired
        db.execute(
            "CREATE TABLE files (dir BLOB, name BLOB, size INTEGER, mtime_ns INTEGER, ctime_ns INTEGER,"
            " inode INTEGER, dev INTEGER, digest TEXT, chunks TEXT, PRIMARY KEY (dir, name))"
        )
        db.execute("INSERT INTO files VALUES (?, ?, 1, 2, 3, 4, 5, 'd', '[\"c\"]')", (b"/x", b"y"))
    cache = FilesCache(str(path))
    assert cache.lookup(b"/x", [b"y"])[b"y"][0] == (1, 2, 3, 4, 5)
    cache.commit()
    assert cache.entries() == 1  # counted as seen at the upgrade, so nothing expires at once
    cache.close()


_NAME = st.binary(min_size=1, max_size=12) | st.text(min_size=1, max_size=6).map(os.fsencode)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.dictionaries(st.tuples(_NAME, _NAME), st.tuples(
    st.integers(0, 2**40), st.integers(0, OLD), st.integers(0, 2**62), st.integers(0, 2**62),
    st.lists(st.binary(min_size=32, max_size=32).map(bytes.hex), max_size=3)), max_size=30))
def test_what_a_snapshot_remembers_is_looked_up_exactly_whatever_the_names(
    tmp_path_factory: pytest.TempPathFactory, rows: dict[tuple[bytes, bytes], tuple[int, int, int, int, list[str]]],
) -> None:
    """Any directory and name bytes (not UTF-8, a NUL): a lookup finds each row as remembered,
    under its exact bytes."""
    cache = FilesCache(str(tmp_path_factory.mktemp("cache") / "files.sqlite"))
    try:
        for (directory, name), (size, mtime, ctime, inode, chunks) in rows.items():
            st_ = os.stat_result((0o100644, inode, 7, 1, 0, 0, size, 0, 0, 0, 0.0, 0.0, 0.0, 0, mtime, ctime))
            cache.remember(directory, name, st_, size, chunks[0] if chunks else "", tuple(chunks))
        cache.commit()
        for (directory, name), (size, mtime, ctime, inode, chunks) in rows.items():
            found = cache.lookup(directory, [name])
            assert found[name] == ((size, mtime, ctime, inode, 7), CachedFile(chunks[0] if chunks else "", tuple(chunks)))
    finally:
        cache.close()


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.dictionaries(st.tuples(_NAME, _NAME), st.tuples(
    st.integers(0, 2**40), st.integers(0, OLD), st.integers(0, 2**62), st.integers(0, 2**62),
    st.lists(st.binary(min_size=32, max_size=32).map(bytes.hex), min_size=1, max_size=3)), max_size=30),
    pending=st.sampled_from([1, 7, 2000]))
def test_what_a_restore_records_is_looked_up_exactly_whatever_the_names(
    tmp_path_factory: pytest.TempPathFactory, rows: dict[tuple[bytes, bytes], tuple[int, int, int, int, list[str]]],
    pending: int, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The recorder's rows, written in batches of any size, are what a snapshot's lookup finds."""
    monkeypatch.setattr(filescache, "_PENDING_ROWS", pending)
    path = str(tmp_path_factory.mktemp("cache") / "files.sqlite")
    recorder = FilesRecorder(path)
    for (directory, name), (size, mtime, ctime, inode, chunks) in rows.items():
        recorder.add(directory, name, (size, mtime, ctime, inode, 7), chunks[0], tuple(chunks))
    recorder.close()
    cache = FilesCache(path)
    try:
        for (directory, name), (size, mtime, ctime, inode, chunks) in rows.items():
            assert cache.lookup(directory, [name])[name] == ((size, mtime, ctime, inode, 7), CachedFile(chunks[0], tuple(chunks)))
    finally:
        cache.close()


def _tree(root: Path) -> dict[str, tuple[bytes, int, int]]:
    return {str(p.relative_to(root)): (p.read_bytes(), stat.S_IMODE(p.stat().st_mode), p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


def _old_tree(src: Path, large: dict[str, int], small: int) -> None:
    """``src`` with random files of the ``large`` sizes by path (under ``sub/`` too) and ``small``
    files of 2000 bytes, everything with an old mtime."""
    (src / "sub").mkdir(parents=True)
    for name, size in large.items():
        (src / name).write_bytes(os.urandom(size))
    for i in range(small):
        (src / f"small{i}.txt").write_bytes(os.urandom(2000))
    for p in src.rglob("*"):
        os.utime(p, ns=(OLD, OLD))


def test_a_snapshot_of_a_restore_reads_only_the_large_files_changed_since(tmp_path: Path, cas_home: Path) -> None:
    """A restore records the files it creates that a snapshot would cut into chunks (``chunk_min``
    bytes or more): a snapshot of the destination then reads none of them, but reads again one
    changed since, whatever it kept (size, mtime) of before, and one another process put in its
    place; what it stores is what the destination holds."""
    src = tmp_path / "src"
    large = {"a.bin": 300_000, "b.bin": 300_000, "sub/c.bin": 2_500_000, "sub/d.bin": 400_000}
    _old_tree(src, large, 5)
    dest = tmp_path / "dest"
    with Store.open(str(tmp_path / "repo"), index=f"sqlite:///{tmp_path / 'i.sqlite'}") as store:
        chunk_min = store.repo.config.chunk_min
        assert all(size >= chunk_min for size in large.values()) and 2000 < chunk_min
        original = store.snapshot(src, "src", use_files_cache=False)
        store.restore("src", dest)
        first = store.snapshot(dest, "dest-1")
        assert first.stats["files_from_cache"] == len(large)  # the small files were read
        assert first.root == original.root
        # Changed in place with its size and mtime as before (only its ctime tells), and replaced by
        # another file of the same size and mtime; past the coarsest timestamp tick, so that a
        # kernel without fine-grained ctimes gives the change a ctime of its own.
        time.sleep(0.05)
        with open(dest / "a.bin", "r+b") as f:
            f.write(b"changed")
        os.utime(dest / "a.bin", ns=(OLD, OLD))
        other = dest / "sub" / "other"
        other.write_bytes(os.urandom(400_000))
        os.utime(other, ns=(OLD, OLD))
        os.replace(other, dest / "sub" / "d.bin")
        second = store.snapshot(dest, "dest-2")
        assert second.stats["files_from_cache"] == len(large) + 5 - 2  # the small ones remembered by dest-1
        again = tmp_path / "again"
        store.restore("dest-2", again)
    assert _tree(again) == _tree(dest)
    assert (dest / "a.bin").read_bytes()[:7] == b"changed"


def test_a_restore_over_a_restore_reads_only_the_large_files_changed_since(tmp_path: Path, cas_home: Path) -> None:
    """A restore over the tree an earlier restore left (``overwrite``, not trusting mtimes) takes a
    large file that kept the identity that restore recorded, and its entry's content, as matching
    unread; it compares a large file changed since (even with its size and mtime put back), one
    another process put in its place, and one whose entry changed; the destination ends exactly
    the second tree. Told not to use the files cache, it compares them all."""
    src = tmp_path / "src"
    _old_tree(src, {"a.bin": 300_000, "b.bin": 300_000, "sub/c.bin": 2_500_000, "sub/d.bin": 400_000,
                    "sub/e.bin": 500_000}, 3)
    dest = tmp_path / "dest"
    with Store.open(str(tmp_path / "repo"), index=f"sqlite:///{tmp_path / 'i.sqlite'}") as store:
        store.snapshot(src, "v1", use_files_cache=False)
        with open(src / "b.bin", "r+b") as f:  # the second tree's b.bin differs from the first's
            f.write(b"second")
        os.utime(src / "b.bin", ns=(OLD, OLD))
        store.snapshot(src, "v2", use_files_cache=False)
        store.restore("v1", dest)
        # Past the coarsest timestamp tick, so that the changes below get ctimes of their own.
        time.sleep(0.05)
        with open(dest / "a.bin", "r+b") as f:
            f.write(b"changed")
        os.utime(dest / "a.bin", ns=(OLD, OLD))
        other = dest / "sub" / "other"
        held = (dest / "sub" / "d.bin").read_bytes()
        other.write_bytes(held[:-1] + bytes([held[-1] ^ 1]))  # its last byte differs, whatever it was
        os.utime(other, ns=(OLD, OLD))
        os.replace(other, dest / "sub" / "d.bin")
        report = store.restore("v2", dest, overwrite=True, delete=True)
        assert report.files_from_cache == 2  # sub/c.bin and sub/e.bin
        assert report.unchanged == 2 + 3 + 1 and report.written == 3  # + 1: the directory sub
        assert _tree(dest) == _tree(src)
        store.restore("v1", tmp_path / "again")
        report = store.restore("v2", tmp_path / "again", overwrite=True, delete=True, use_files_cache=False)
        assert report.files_from_cache == 0 and report.unchanged == 4 + 3 + 1 and report.written == 1
        assert _tree(tmp_path / "again") == _tree(src)


def _one_large_file(src: Path) -> Path:
    """A source of one file a restore records (past ``chunk_min``), with an old mtime."""
    src.mkdir()
    (src / "big").write_bytes(os.urandom(600_000))
    os.utime(src / "big", ns=(OLD, OLD))
    return src


def test_a_restore_told_not_to_records_nothing(tmp_path: Path, cas_home: Path) -> None:
    src = _one_large_file(tmp_path / "src")
    with Store.open(str(tmp_path / "repo"), index=f"sqlite:///{tmp_path / 'i.sqlite'}") as store:
        store.snapshot(src, "src", use_files_cache=False)
        store.restore("src", tmp_path / "quiet", use_files_cache=False)
        assert store.snapshot(tmp_path / "quiet", "quiet").stats["files_from_cache"] == 0
        store.restore("src", tmp_path / "loud")
        assert store.snapshot(tmp_path / "loud", "loud").stats["files_from_cache"] == 1


def test_a_restore_whose_files_cache_cannot_be_written_restores_all_the_same(
    tmp_path: Path, cas_home: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    """The files cache only spares time: a restore that cannot record in it (its directory is a
    file here) restores everything, says so in a warning, and a snapshot then reads the files."""
    src = _one_large_file(tmp_path / "src")
    with Store.open(str(tmp_path / "repo"), index=f"sqlite:///{tmp_path / 'i.sqlite'}") as store:
        store.snapshot(src, "src", use_files_cache=False)
        cas_home.mkdir(exist_ok=True)
        (cas_home / "cache").write_bytes(b"not a directory")
        store.restore("src", tmp_path / "dest")
        assert "the files cache did not take what this restore wrote" in caplog.text
        (cas_home / "cache").unlink()
        assert (tmp_path / "dest" / "big").read_bytes() == (src / "big").read_bytes()
        assert store.snapshot(tmp_path / "dest", "dest").stats["files_from_cache"] == 0


def test_a_listing_digest_takes_any_identity_a_file_system_gives() -> None:
    """Inode numbers are unsigned 64-bit (network and stacked file systems hand out ones past
    2**63) and times may be negative: each is digested as its 64 bits, little-endian, so the
    digest of an identity in the signed range is what it always was."""
    names = ["a.txt", "b.bin"]
    big = [2**64 - 1, 1, -(10**18), 5, 0o644, 2**63, 2, 3, 4, 0o600]
    signed = [-1, 1, -(10**18), 5, 0o644, -(2**63), 2, 3, 4, 0o600]
    assert listing_digest(names, big) == listing_digest(names, signed)
    expected = blake3.blake3(b"a.txt\0b.bin\0" + struct.pack("<10q", *signed)).digest()
    assert listing_digest(names, signed) == expected
    assert listing_digest(names, big) != listing_digest(names, [*big[:5], *big[5:9], 0o644])
