"""The snapshot's walk stats a directory's names, and reads its small files, a batch at a time
through the compiled helper (``cas/ops/snapshot/batch.py``): the calls it makes are recorded on
the way to the real helper, and what they stored is restored and compared with the source."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from cas import Store
from cas.ops.snapshot import batch as snapshot_batch
from cas.ops.snapshot.filter import SnapshotFilter
from tests.treeutil import describe


class _Calls:
    """The walk's calls of the helper: the names of each ``stat_names`` call, and the names and
    sizes seen of each ``read_files`` call."""

    def __init__(self) -> None:
        self.stats: list[list[bytes]] = []
        self.reads: list[list[tuple[bytes, int]]] = []

    def read_names(self) -> set[bytes]:
        return {name for call in self.reads for name, _ in call}


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> _Calls:
    recorded = _Calls()
    real_stat, real_read = snapshot_batch.stat_names, snapshot_batch.read_files

    def stat_names(dir_fd: int, names: list[bytes]) -> object:
        recorded.stats.append(list(names))
        return real_stat(dir_fd, names)

    def read_files(dir_fd: int, names: list[bytes], seen: list[tuple[int, ...]]) -> object:
        recorded.reads.append([(n, s[2]) for n, s in zip(names, seen)])
        return real_read(dir_fd, names, seen)

    monkeypatch.setattr(snapshot_batch, "stat_names", stat_names)
    monkeypatch.setattr(snapshot_batch, "read_files", read_files)
    return recorded


def _tree(root: Path, files: int, size: int) -> Path:
    """``files`` small files of ``size`` bytes (each its own content), a large file, a symlink, an
    empty file and a subdirectory holding a few more, all dated a minute back (past the files
    cache's racy window)."""
    src = root / "src"
    (src / "sub").mkdir(parents=True)
    for i in range(files):
        (src / f"f{i:05d}").write_bytes(i.to_bytes(4, "big") * (size // 4))
    for i in range(3):
        (src / "sub" / f"s{i}").write_bytes(b"sub %d" % i)
    (src / "large").write_bytes(os.urandom(300 << 10))  # past the minimum chunk size: cut
    (src / "empty").write_bytes(b"")
    (src / "link").symlink_to("f00000")
    old = 1_600_000_000 * 10**9
    for path in [*src.rglob("*"), src]:
        if not path.is_symlink():
            os.utime(path, ns=(old, old))
    return src


def test_a_directory_s_names_are_stat_ed_and_its_small_files_read_a_batch_at_a_time(
    plain_store: Store, tmp_path: Path, calls: _Calls, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(snapshot_batch, "READ_BYTES", 10_000)
    src = _tree(tmp_path, 1200, 3000)
    plain_store.snapshot(src, "e1", use_files_cache=False)

    top = sorted(os.fsencode(p.name) for p in src.iterdir())
    top_calls = [c for c in calls.stats if c[0] in top]
    assert [len(c) for c in top_calls] == [500, 500, len(top) - 1000]  # the names in order, 500 a call
    assert [n for c in top_calls for n in c] == top
    small = {os.fsencode(p.relative_to(src).name) for p in src.rglob("*")
             if p.is_file() and not p.is_symlink() and p.stat().st_size < 256 << 10}
    assert calls.read_names() == small  # not the large file, the symlink or the directory
    for call in calls.reads:  # at most READ_BYTES a call, or a single file
        assert len(call) == 1 or sum(size for _, size in call) <= 10_000
    assert max(sum(size == 3000 for _, size in c) for c in calls.reads) == 3  # three of them to a call

    plain_store.restore("e1", tmp_path / "out")
    assert describe(str(tmp_path / "out")) == describe(str(src))


def test_files_left_out_or_vouched_for_by_the_files_cache_are_not_read(
    plain_store: Store, tmp_path: Path, calls: _Calls,
) -> None:
    src = _tree(tmp_path, 20, 100)
    for i in range(5):
        (src / f"x{i}.log").write_bytes(b"left out")
    first = plain_store.snapshot(src, "e1", filter=SnapshotFilter(exclude=["*.log"]))
    assert not any(name.endswith(b".log") for name in calls.read_names())
    assert b"f00000" in calls.read_names()
    assert first.stats["excluded_by_pattern"] == 5  # counted once, when the batch was stat'ed

    calls.reads.clear()
    plain_store.snapshot(src, "e2", filter=SnapshotFilter(exclude=["*.log"]))
    # Every file is unchanged since e1: the files cache vouches for all but the empty one (it has no
    # chunks to vouch for, and reading it costs nothing more than looking it up).
    assert calls.read_names() == {b"empty"}
    plain_store.restore("e2", tmp_path / "out")
    expected = {k: v for k, v in describe(str(src)).items() if not k.endswith(".log")}
    assert describe(str(tmp_path / "out")) == expected


def test_a_file_changed_after_its_batch_was_stat_ed_is_read_again_and_stored_as_it_is_now(
    plain_store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    src = _tree(tmp_path, 10, 100)
    real_read = snapshot_batch.read_files
    changed = []

    def read_files(dir_fd: int, names: list[bytes], seen: list[tuple[int, ...]]) -> object:
        if b"f00003" in names and not changed:
            (src / "f00003").write_bytes(b"N" * 100)  # same size, new content, after the stat
            changed.append(True)
        return real_read(dir_fd, names, seen)

    monkeypatch.setattr(snapshot_batch, "read_files", read_files)
    snapshot = plain_store.snapshot(src, "e1")
    assert changed and snapshot.stats["changed"] == 0  # read again the slow way, and it held still
    plain_store.restore("e1", tmp_path / "out")
    assert (tmp_path / "out" / "f00003").read_bytes() == b"N" * 100
    assert describe(str(tmp_path / "out")) == describe(str(src))


def test_a_name_that_vanished_after_its_batch_was_stat_ed_is_not_stored(
    plain_store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    src = _tree(tmp_path, 10, 100)
    real_read = snapshot_batch.read_files

    def read_files(dir_fd: int, names: list[bytes], seen: list[tuple[int, ...]]) -> object:
        if (src / "f00005").exists():
            (src / "f00005").unlink()
        return real_read(dir_fd, names, seen)

    monkeypatch.setattr(snapshot_batch, "read_files", read_files)
    plain_store.snapshot(src, "e1")
    plain_store.restore("e1", tmp_path / "out")
    out = describe(str(tmp_path / "out"))
    assert "f00005" not in out and out == describe(str(src))
    assert stat.S_ISREG((tmp_path / "out" / "f00004").lstat().st_mode)
