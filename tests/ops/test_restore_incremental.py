"""Restoring over a destination that already holds something: only what differs is written, the end
is byte-exact, ``--delete`` makes it exactly the execution, and local chunks are reused."""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import mmap
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from backends.local import LocalBackend
from cas import Store
from cas.errors import AlreadyExists, PartialRestore
from cas.format.hashing import hexdigest
from cas.format.trees import FILE, Entry
from cas.ops.restore import finish as restore_finish
from cas.ops.restore import local as restore_local
from cas.ops.restore import survey as restore_survey
from cas.ops.restore import walk as restore_walk
from cas.ops.restore import write as restore_write
from tests.engine import SMALL_CHUNKS
from tests.ops.test_roundtrip import _materialise, _trees
from tests.oswrap import CountingPread
from tests.treeutil import describe


@st.composite
def _edited(draw: st.DrawFn, tree: dict[str, object], depth: int = 0) -> dict[str, object]:
    """``tree`` with some entries kept, some dropped, some changed in content, mode or type, and
    some added: the next execution of a project, as far as a restore can tell."""
    out: dict[str, object] = {}
    for name, spec in tree.items():
        action = draw(st.sampled_from(["keep", "keep", "keep", "drop", "content", "mode", "retype"]))
        if action == "drop":
            continue
        if action == "keep":
            out[name] = spec if spec[0] != "dir" else ("dir", draw(_edited(spec[1], depth + 1)), spec[2])  # type: ignore[index,arg-type]
        elif action == "content" and spec[0] == "file":
            out[name] = ("file", draw(st.integers(0, 5000)), draw(st.integers(0, 2**32 - 1)), spec[3])  # type: ignore[index]
        elif action == "mode" and spec[0] in ("file", "dir"):
            out[name] = (*spec[:-1], 0o600 if spec[-1] != 0o600 else 0o644) if spec[0] == "file" else (  # type: ignore[index]
                "dir", spec[1], 0o700 if spec[2] != 0o700 else 0o755)  # type: ignore[index]
        else:
            out[name] = draw(st.sampled_from([("file", 100, 7, 0o644), ("link", "elsewhere"), ("dir", {}, 0o755)]))
    for name, spec in draw(_trees(depth=max(depth, 2))).items():
        out.setdefault(name, spec)
    return out


@st.composite
def _two_trees(draw: st.DrawFn) -> tuple[dict[str, object], dict[str, object]]:
    before = draw(_trees())
    after = draw(st.one_of(_edited(before), _trees()))
    return before, after


def _expected_counts(old: dict[str, tuple[object, ...]], new: dict[str, tuple[object, ...]]) -> tuple[int, int, int]:
    """(unchanged, written, deleted) for a restore of ``new`` over ``old`` with --delete."""
    unchanged = written = 0
    for path, spec in new.items():
        was = old.get(path)
        same = was is not None and was[0] == spec[0] and (
            spec[0] == "dir" or (spec[0] == "link" and was[1] == spec[1]) or (spec[0] == "file" and was[3] == spec[3])
        )
        unchanged += same
        written += not same
    deleted = sum(1 for p in old if p not in new) + sum(
        1 for p, spec in new.items() if p in old and old[p][0] == "dir" and spec[0] != "dir"
    )
    return unchanged, written, deleted


_example_ids = itertools.count()


def _execution_over(
    store: Store, work: str, before: dict[str, object], after: dict[str, object], times: list[int]
) -> tuple[str, str, str]:
    """``after`` materialised under ``work`` and snapshotted; ``before`` materialised as the
    destination it is restored over. Returns (source, destination, execution ID)."""
    src = os.path.join(work, "src")
    _materialise(src, after, times)
    execution_id = f"run-{next(_example_ids)}"  # one per example (hash(0) == hash(2**61 - 1))
    store.snapshot(src, execution_id, use_files_cache=False)
    dest = os.path.join(work, "dest")
    _materialise(dest, before, list(reversed(times)))
    return src, dest, execution_id


@contextlib.contextmanager
def _settled_and_hashed_ahead() -> Iterator[None]:
    """Restores in which the destination's files count as written long ago and the child hashing
    ahead (when one is started) has walked the whole destination before the walk starts, so that
    every directory is surveyed with what it sent."""
    start = restore_survey.DestinationSurvey._start_hash_ahead

    def start_and_wait(self: restore_survey.DestinationSurvey, dest_fd: int) -> None:
        start(self, dest_fd)
        if self._hash_ahead is not None:
            assert self._hash_ahead.wait(60)

    with mock.patch.object(restore_local, "SETTLED_NS", 0), \
            mock.patch.object(restore_survey.DestinationSurvey, "_start_hash_ahead", start_and_wait):
        yield


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(trees=_two_trees(), times=st.lists(st.integers(0, 4_000_000_000_000_000_000), min_size=1, max_size=3),
       trust_mtime=st.booleans(), in_place=st.booleans(), settled=st.booleans())
# Found by CI: a same-size edit with the same mtime, trusted; a directory replaced by a file, beside
# other removals (the workers' count and the walk's raced).
@example(trees=({"1": ("dir", {"0": ("dir", {"00": ("file", 1, 1, 0o644)}, 0o755)}, 0o755)},
                {"1": ("dir", {"0": ("dir", {"00": ("file", 1, 0, 0o644)}, 0o755)}, 0o755)}),
         times=[0], trust_mtime=True, in_place=False, settled=False)
# The same, hashed ahead: the record's digest differs from the entry's, with all else equal.
@example(trees=({"1": ("dir", {"0": ("dir", {"00": ("file", 1, 1, 0o644)}, 0o755)}, 0o755)},
                {"1": ("dir", {"0": ("dir", {"00": ("file", 1, 0, 0o644)}, 0o755)}, 0o755)}),
         times=[0], trust_mtime=False, in_place=False, settled=True)
@example(trees=({"2": ("file", 0, 0, 0o644), "1": ("dir", {"0": ("dir", {}, 0o755)}, 0o755),
                 "0": ("file", 0, 0, 0o644), "00": ("link", "target"), "000": ("dir", {}, 0o755)},
                {"2": ("file", 0, 0, 0o644), "1": ("dir", {}, 0o755), "0": ("file", 0, 0, 0o644),
                 "000": ("file", 0, 0, 0o644)}),
         times=[0], trust_mtime=False, in_place=False, settled=False)
def test_random_tree_over_another_ends_exactly_equal_with_delete(
    store: Store, trees: tuple[dict[str, object], dict[str, object]], times: list[int], trust_mtime: bool,
    in_place: bool, settled: bool,
) -> None:
    """``settled``: the destination's files taken as written long ago (what the restore knows of a
    file from when it was hashed, by the child hashing ahead or for its chunks, can then be trusted)."""
    before, after = trees
    work = tempfile.mkdtemp()
    try:
        src, dest, execution_id = _execution_over(store, work, before, after, times)
        old = describe(dest)
        with _settled_and_hashed_ahead() if settled else contextlib.nullcontext():
            report = store.restore(execution_id, dest, overwrite=True, delete=True, trust_mtime=trust_mtime,
                                   in_place=in_place)
        new = describe(src)
        expected = dict(new)
        if trust_mtime:
            # Trusting mtimes takes a file of the same size and mtime as matching: its old content
            # stays (the promise --trust-mtime makes), with the new mode.
            for path, spec in new.items():
                was = old.get(path)
                if spec[0] == "file" and was is not None and was[0] == "file" and was[2] == spec[2] and (
                        len(was[3]) == len(spec[3])):  # type: ignore[arg-type]
                    expected[path] = (*spec[:3], was[3])
        assert describe(dest) == expected
        assert os.stat(dest).st_mtime_ns == os.stat(src).st_mtime_ns
        if not trust_mtime:  # trusting mtimes may take a same-size edited file as matching: not here
            assert (report.unchanged, report.written, report.deleted) == _expected_counts(old, new)
        stored = set(_all_names(src))  # a tree may hold a name like a temporary's: it is no temporary
        assert not [n for n in _all_names(dest) if n.startswith(".cas-tmp-") and n not in stored]
        with _settled_and_hashed_ahead() if settled else contextlib.nullcontext():
            again = store.restore(execution_id, dest, overwrite=True, delete=True, trust_mtime=trust_mtime)
        assert (again.written, again.deleted, again.meta_fixed) == (0, 0, 0)
        assert again.unchanged == len(new)
    finally:
        _make_writable(work)
        shutil.rmtree(work)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(trees=_two_trees(), times=st.lists(st.integers(0, 4_000_000_000_000_000_000), min_size=1, max_size=3))
def test_random_tree_over_another_without_delete_keeps_the_rest(
    store: Store, trees: tuple[dict[str, object], dict[str, object]], times: list[int]
) -> None:
    """Every path of the execution ends exact; every other path is left as it was, except where a
    directory stands in the way of a file or symlink, which is refused by name."""
    before, after = trees
    work = tempfile.mkdtemp()
    try:
        src, dest, execution_id = _execution_over(store, work, before, after, times)
        old, new = describe(dest), describe(src)
        in_the_way = {p for p, spec in new.items() if p in old and old[p][0] == "dir" and spec[0] != "dir"}
        try:
            store.restore(execution_id, dest, overwrite=True)
            failed: set[str] = set()
        except PartialRestore as exc:
            failed = {p for p, _ in exc.failures}
        assert failed == in_the_way
        got = describe(dest)
        for path, spec in new.items():
            if not any(path == p or path.startswith(p + "/") for p in in_the_way):
                assert got[path] == spec, path
        for path, spec in old.items():
            if path not in new and not any(path.startswith(p + "/") for p in new if new[p][0] != "dir"):
                assert got[path] == spec, path
    finally:
        _make_writable(work)
        shutil.rmtree(work)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(trees=_two_trees(), times=st.lists(st.integers(0, 4_000_000_000_000_000_000), min_size=1, max_size=3))
def test_random_tree_over_another_with_the_walks_bounds_at_their_smallest(
    store: Store, trees: tuple[dict[str, object], dict[str, object]], times: list[int]
) -> None:
    """The same with every bound of the walk at its least (one directory looked ahead, one queued,
    one kept open for its removals, two ancestors open): the ends of those bounds are reached in
    small trees, and the result is still exactly the execution, directory mtimes included."""
    before, after = trees
    work = tempfile.mkdtemp()
    try:
        with pytest.MonkeyPatch.context() as mp:
            for module, name, value in ((restore_walk, "_LOOK_AHEAD", 1), (restore_walk, "_OPEN_DIRS", 1),
                                        (restore_finish, "_OPEN_REMOVING", 1), (restore_walk, "_OPEN_ANCESTORS", 2)):
                mp.setattr(module, name, value)
            src, dest, execution_id = _execution_over(store, work, before, after, times)
            old, new = describe(dest), describe(src)
            report = store.restore(execution_id, dest, overwrite=True, delete=True)
            assert describe(dest) == new
            assert os.stat(dest).st_mtime_ns == os.stat(src).st_mtime_ns
            assert (report.unchanged, report.written, report.deleted) == _expected_counts(old, new)
    finally:
        _make_writable(work)
        shutil.rmtree(work)


def test_wide_and_deep_tree_with_subtrees_to_delete_everywhere(store: Store, tmp_path: Path) -> None:
    """More sibling directories than the walk looks ahead, a chain deeper than it keeps open, and in
    many directories a large subtree the execution lacks: the walk goes on while those are removed,
    and every directory ends with the execution's mtime (set after its removals)."""
    src, dest = tmp_path / "src", tmp_path / "dest"
    deep = src / "deep"
    for i in range(restore_walk._OPEN_ANCESTORS + 10):
        deep = deep / f"d{i}"
        (deep.parent / f"f{i}").parent.mkdir(parents=True, exist_ok=True)
        (deep.parent / f"f{i}").write_text(f"file {i}")
    deep.mkdir(parents=True)
    for i in range(restore_walk._LOOK_AHEAD * 3):
        sub = src / "wide" / f"w{i:03d}" / "inner"
        sub.mkdir(parents=True)
        (sub / "kept").write_text(f"kept {i}")
        (sub.parent / "changed").write_text(f"new {i}")
    (src / "model").mkdir()
    (src / "model" / "weights").write_bytes(os.urandom(300_000))
    for directory, _dirs, _files in os.walk(src, topdown=False):
        t = 1_600_000_000_000_000_000 + len(directory)
        os.utime(directory, ns=(t, t))
    store.snapshot(src, "v2")
    shutil.copytree(src, dest, symlinks=True)
    unwanted = 0
    for i in range(0, restore_walk._LOOK_AHEAD * 3, 2):
        (tmp_path / "dest" / "wide" / f"w{i:03d}" / "changed").write_text(f"old {i}")
        gone = dest / "wide" / f"w{i:03d}" / "inner" / "gone"
        for j in range(20):
            (gone / f"g{j}").mkdir(parents=True)
            (gone / f"g{j}" / "x").write_text("x")
        unwanted += 1 + 20 * 2
    (dest / "deep" / "d0" / "d1" / "extra").mkdir()
    unwanted += 1
    report = store.restore("v2", dest, overwrite=True, delete=True)
    assert describe(str(dest)) == describe(str(src))
    assert report.deleted == unwanted
    assert report.written == restore_walk._LOOK_AHEAD * 3 // 2


def _all_names(root: str) -> list[str]:
    return [n for _d, dirs, files in os.walk(root) for n in dirs + files]


def _make_writable(root: str) -> None:
    for dirpath, dirnames, _files in os.walk(root):
        for d in dirnames:
            p = os.path.join(dirpath, d)
            if not os.path.islink(p):
                os.chmod(p, 0o755)


class _CountingBackend(LocalBackend):
    def __init__(self, root: str) -> None:
        super().__init__(root)
        self.fetched = 0

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        data = super().get(key, offset, length)
        if key.startswith("data/"):
            self.fetched += len(data)
        return data


def _counting_store(tmp_path: Path) -> tuple[Store, _CountingBackend]:
    backend = _CountingBackend(str(tmp_path / "repo"))
    config = {**SMALL_CHUNKS, "chunk_min": 1024, "chunk_avg": 4096, "chunk_max": 16384}
    return Store.open(backend, index=f"sqlite:///{tmp_path / 'index.sqlite'}", **config), backend


def test_edited_file_reuses_its_own_chunks_and_fetches_little(tmp_path: Path, cas_home: Path) -> None:
    store, backend = _counting_store(tmp_path)
    with store:
        src = tmp_path / "src"
        src.mkdir()
        content = bytearray(os.urandom(400_000))
        (src / "model.bin").write_bytes(content)
        store.snapshot(src, "v1")
        content[200_000:200_010] = b"x" * 10  # an edit in the middle
        content[:0] = b"inserted at the start"  # and a shift of everything after it
        (src / "model.bin").write_bytes(content)
        store.snapshot(src, "v2")
        dest = tmp_path / "dest"
        store.restore("v1", dest)
        backend.fetched = 0
        report = store.restore("v2", dest, overwrite=True)
        assert (dest / "model.bin").read_bytes() == bytes(content)
        assert report.written == 1 and report.unchanged == 0
        assert report.reused_bytes > 300_000
        # Compressed random data: what was fetched is about the chunks around the two edits.
        assert backend.fetched < 100_000


def test_many_small_files_compared_as_their_directory_is_listed(tmp_path: Path, cas_home: Path) -> None:
    """A directory of many small files: those that match are left (a differing mode fixed in
    place), and only the same-size edits and resized files are fetched and written."""
    store, backend = _counting_store(tmp_path)
    with store:
        src, dest = tmp_path / "src", tmp_path / "dest"
        src.mkdir()
        n = 24
        for i in range(4 * n):
            (src / f"f{i:03d}").write_bytes(os.urandom(1000 + i))
            os.chmod(src / f"f{i:03d}", 0o644)
        store.snapshot(src, "v1")
        store.restore("v1", dest)
        for i in range(n):
            os.chmod(dest / f"f{i:03d}", 0o600)  # the mode only
            (src / f"f{n + i:03d}").write_bytes(os.urandom(1000 + n + i))  # same size, new content
            (src / f"f{2 * n + i:03d}").write_bytes(os.urandom(500))  # another size
        store.snapshot(src, "v2")
        backend.fetched = 0
        report = store.restore("v2", dest, overwrite=True, delete=True)
        assert describe(str(dest)) == describe(str(src))
        assert (report.unchanged, report.meta_fixed, report.written) == (2 * n, n, 2 * n)
        assert 2 * n * 500 <= backend.fetched < 2 * n * 1100 + n * 2000  # the new files only (and framing)


def _drop_from_memory(root: Path) -> None:
    """Evict the files under ``root`` from the page cache (written back first), as files restored
    long ago are."""
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def _resident(root: Path) -> list[str]:
    """The files under ``root`` with some of their content in the page cache, by ``mincore(2)``
    on a mapping of each (which, unlike a read that does not wait, starts no read of its own)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long)
    libc.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
    libc.mincore.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p)
    found = []
    for path in sorted(root.rglob("*")):
        if not path.is_file() or path.is_symlink() or path.stat().st_size == 0:
            continue
        size = path.stat().st_size
        vector = ctypes.create_string_buffer((size + mmap.PAGESIZE - 1) // mmap.PAGESIZE)
        fd = os.open(path, os.O_RDONLY)
        try:
            address = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
            if address in (None, ctypes.c_void_p(-1).value):
                raise OSError(ctypes.get_errno(), f"mmap {path}")
            try:
                if libc.mincore(address, size, vector) != 0:
                    raise OSError(ctypes.get_errno(), f"mincore {path}")
            finally:
                libc.munmap(address, size)
        finally:
            os.close(fd)
        if any(b & 1 for b in vector.raw):
            found.append(str(path.relative_to(root)))
    return found


def _evicted(root: Path) -> bool:
    """Evict the files under ``root`` from the page cache until none is resident (a few tries: a
    page another task holds at that moment is not dropped); whether that was reached."""
    for _ in range(5):
        _drop_from_memory(root)
        if not _resident(root):
            return True
    return False


def test_a_small_file_not_in_memory_is_left_to_be_read_where_waiting_is_cheap(tmp_path: Path) -> None:
    entry_dir = tmp_path / "d"
    entry_dir.mkdir()
    content = os.urandom(20_000)
    (entry_dir / "f").write_bytes(content)
    os.chmod(entry_dir / "f", 0o644)
    st_f = os.stat(entry_dir / "f")
    entry = Entry("f", FILE, 0o644, st_f.st_mtime_ns, len(content), hexdigest(content), (hexdigest(content),))
    dir_fd = os.open(entry_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if not _evicted(entry_dir):
            pytest.skip(f"files stay in memory here: {_resident(entry_dir)}")
        matches, _fixed, st_cold = restore_local.match_whole(dir_fd, entry, 0o644, nowait=True)
        if matches:
            pytest.skip("this file system keeps every file in memory")
        assert matches is None and st_cold is not None and st_cold.st_size == len(content)
        matches, fixed, st_read = restore_local.match_whole(dir_fd, entry, 0o644)
        assert (matches, fixed) == (True, False) and st_read is not None and st_read.st_ino == st_f.st_ino
        # Read once, it is in memory: compared at once.
        assert restore_local.match_whole(dir_fd, entry, 0o644, nowait=True)[0] is True
        other = Entry("f", FILE, 0o644, st_f.st_mtime_ns, len(content), hexdigest(b"x" * len(content)), ("0" * 64,))
        assert restore_local.match_whole(dir_fd, other, 0o644, nowait=True)[0] is False
    finally:
        os.close(dir_fd)


def _one_directory_edited(store: Store, tmp_path: Path, *, files: int, edited: int, size: int) -> tuple[Path, Path]:
    """``files`` small files in ``src/sub`` (``size + i`` bytes each) stored as v1 and restored to
    ``dest``, then the first ``edited`` given new content of the same size and stored as v2."""
    src, dest = tmp_path / "src", tmp_path / "dest"
    (src / "sub").mkdir(parents=True)
    for i in range(files):
        (src / "sub" / f"f{i:02d}").write_bytes(os.urandom(size + i))
    store.snapshot(src, "v1")
    store.restore("v1", dest)
    for i in range(edited):
        (src / "sub" / f"f{i:02d}").write_bytes(os.urandom(size + i))  # same size, new content
    store.snapshot(src, "v2")
    return src, dest


def test_small_files_not_in_memory_are_compared_on_threads(
    tmp_path: Path, cas_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Files restored long ago (out of the page cache) are compared on the comparer threads, their
    reads overlapping: exactly those the walk's reads that do not wait declined, split among the
    threads; the matches are left, the edits written, and the end is exact.

    Which files those are is the kernel's to say: a read that does not wait starts the disk's
    read, and on a busy machine that read may finish before the call returns (the file is then
    hashed at once, rightly). So the test counts what the walk's reads declined, through the
    compiled helper's own results, and checks that the threads compared exactly those."""
    store, _ = _counting_store(tmp_path)
    compared: list[list[str]] = []
    declined: list[str] = []
    real_compare = restore_walk.Restorer._compare_files
    real_hash = restore_survey.hash_files

    def comparing(self: restore_walk.Restorer, dir_fd: int, entries: list) -> list:  # type: ignore[type-arg]
        compared.append([e.name for e in entries])
        return real_compare(self, dir_fd, entries)

    def hashing(dir_fd: int, names: list[bytes], *args: object) -> list:  # type: ignore[type-arg]
        found = real_hash(dir_fd, names, *args)
        declined.extend(os.fsdecode(name) for name, record in zip(names, found) if record is None)
        return found

    monkeypatch.setattr(restore_walk.Restorer, "_compare_files", comparing)
    monkeypatch.setattr(restore_survey, "hash_files", hashing)
    # Without the child hashing ahead: its reads that do not wait still start the disk's reads
    # (readahead), and files it tried long enough before the walk are in memory by then, compared
    # at once instead (rightly; but this test is about the ones that are not).
    monkeypatch.setattr(restore_walk.Restorer, "_start_hash_ahead", lambda self, dest_fd: None)
    with store:
        src, dest = _one_directory_edited(store, tmp_path, files=40, edited=10, size=3000)
        if not _evicted(dest):
            pytest.skip(f"files stay in memory here: {_resident(dest)}")
        report = store.restore("v2", dest, overwrite=True, delete=True)
        assert describe(str(dest)) == describe(str(src))
        assert (report.unchanged, report.written) == (31, 10)  # 30 files and the directory sub
    if not declined:
        pytest.skip("every read the walk started finished before its call returned (a busy machine)")
    assert sorted(name for part in compared for name in part) == sorted(declined), report
    assert len(compared) == min(restore_survey._COLD_THREADS, len(declined))


def _checkpoint_edited_in_place(store: Store, tmp_path: Path, mode: int = 0o644) -> tuple[Path, bytearray]:
    """A 300 kB checkpoint (``mode``) stored as v1 from ``tmp_path/src``, then as v2 with 4 bytes
    changed in place; v1 restored to ``dest``. Returns ``dest`` and v2's content."""
    src = tmp_path / "src"
    src.mkdir()
    content = bytearray(os.urandom(300_000))
    (src / "ckpt").write_bytes(content)
    os.chmod(src / "ckpt", mode)
    store.snapshot(src, "v1")
    content[150_000:150_004] = b"\0\1\2\3"
    (src / "ckpt").write_bytes(content)
    store.snapshot(src, "v2")
    dest = tmp_path / "dest"
    store.restore("v1", dest)
    return dest, content


def test_same_size_edit_keeps_the_chunks_at_their_offsets(tmp_path: Path, cas_home: Path) -> None:
    """A checkpoint whose tensors change values in place: compared chunk by chunk at the tree's
    boundaries, only the chunk around the edit is fetched."""
    store, backend = _counting_store(tmp_path)
    with store:
        dest, content = _checkpoint_edited_in_place(store, tmp_path)
        backend.fetched = 0
        report = store.restore("v2", dest, overwrite=True)
        assert (dest / "ckpt").read_bytes() == bytes(content)
        assert report.written == 1 and report.reused_bytes > 250_000
        assert backend.fetched < 50_000
        again = store.restore("v2", dest, overwrite=True)
        assert (again.written, again.unchanged) == (0, 1)


@pytest.mark.parametrize("settled", [True, False])
def test_a_settled_file_is_not_read_back_after_its_ranges_are_copied(
    tmp_path: Path, cas_home: Path, monkeypatch: pytest.MonkeyPatch, settled: bool
) -> None:
    """The ranges copied from a file that had not changed for a while when it was hashed, and has
    not changed since, are not read back; a file changed just before it was hashed is read back."""
    store, _backend = _counting_store(tmp_path)
    with store:
        dest, content = _checkpoint_edited_in_place(store, tmp_path)
        if settled:  # as if restored long ago (the restore above has just written it)
            monkeypatch.setattr(restore_local, "SETTLED_NS", 0)
        counter = CountingPread()
        monkeypatch.setattr(restore_write, "os", counter)
        report = store.restore("v2", dest, overwrite=True)
        assert (dest / "ckpt").read_bytes() == bytes(content)
        assert report.written == 1 and report.reused_bytes > 250_000
        assert counter.read == (0 if settled else len(content))


def test_in_place_patches_only_the_changed_chunks_of_the_same_file(tmp_path: Path, cas_home: Path) -> None:
    store, backend = _counting_store(tmp_path)
    with store:
        dest, content = _checkpoint_edited_in_place(store, tmp_path, 0o640)
        src = tmp_path / "src"
        inode = os.stat(dest / "ckpt").st_ino
        backend.fetched = 0
        report = store.restore("v2", dest, overwrite=True, in_place=True)
        assert (dest / "ckpt").read_bytes() == bytes(content)
        assert os.stat(dest / "ckpt").st_ino == inode  # the same file, patched
        assert stat.S_IMODE(os.stat(dest / "ckpt").st_mode) == 0o640
        assert os.stat(dest / "ckpt").st_mtime_ns == os.stat(src / "ckpt").st_mtime_ns
        assert report.written == 1 and report.written_bytes < 50_000 and report.reused_bytes > 250_000
        assert backend.fetched < 50_000


def test_unchanged_tree_fetches_nothing_and_chunks_of_verified_files_are_reused(
    tmp_path: Path, cas_home: Path
) -> None:
    store, backend = _counting_store(tmp_path)
    with store:
        src = tmp_path / "src"
        src.mkdir()
        shared = os.urandom(100_000)
        (src / "a.bin").write_bytes(shared)
        store.snapshot(src, "v1")
        (src / "b.bin").write_bytes(shared)  # a new file whose chunks are all in a.bin
        store.snapshot(src, "v2")
        dest = tmp_path / "dest"
        store.restore("v1", dest)
        backend.fetched = 0
        report = store.restore("v2", dest, overwrite=True)
        assert (dest / "b.bin").read_bytes() == shared
        assert (report.unchanged, report.written, report.reused_bytes) == (1, 1, 100_000)
        assert backend.fetched < 5_000  # the tree nodes (about 1 KB), no file data
        backend.fetched = 0
        report = store.restore("v2", dest, overwrite=True)
        assert (report.unchanged, report.written) == (2, 0)
        assert backend.fetched < 5_000


def test_metadata_only_difference_is_fixed_without_rewriting(store: Store, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"same bytes")
    os.chmod(src / "f", 0o640)
    store.snapshot(src, "v1")
    dest = tmp_path / "dest"
    store.restore("v1", dest)
    os.chmod(dest / "f", 0o600)
    os.utime(dest / "f", ns=(1, 1))
    inode = os.stat(dest / "f").st_ino
    report = store.restore("v1", dest, overwrite=True)
    st_after = os.stat(dest / "f")
    assert (report.unchanged, report.meta_fixed, report.written) == (1, 1, 0)
    assert st_after.st_ino == inode
    assert stat.S_IMODE(st_after.st_mode) == 0o640
    assert st_after.st_mtime_ns == os.stat(src / "f").st_mtime_ns


def test_trust_mtime_skips_reading_and_hashing_catches_a_same_size_edit(store: Store, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"original")
    store.snapshot(src, "v1")
    dest = tmp_path / "dest"
    store.restore("v1", dest)
    mtime = os.stat(dest / "f").st_mtime_ns
    (dest / "f").write_bytes(b"tampered")  # same size
    os.utime(dest / "f", ns=(mtime, mtime))
    trusted = store.restore("v1", dest, overwrite=True, trust_mtime=True)
    assert trusted.unchanged == 1 and (dest / "f").read_bytes() == b"tampered"
    checked = store.restore("v1", dest, overwrite=True)
    assert checked.written == 1 and (dest / "f").read_bytes() == b"original"


def test_delete_never_follows_a_symlink_out_of_the_destination(store: Store, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "keep").write_text("k")
    store.snapshot(src, "v1")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("p")
    dest = tmp_path / "dest"
    dest.mkdir()
    os.symlink(outside, dest / "link-to-outside")
    (dest / "sub").mkdir()
    os.symlink(outside, dest / "sub" / "deeper")
    report = store.restore("v1", dest, overwrite=True, delete=True)
    assert (outside / "precious").read_text() == "p"
    assert sorted(os.listdir(dest)) == ["keep"]
    assert report.deleted == 3


def test_delete_with_one_path_leaves_the_rest_of_the_destination(store: Store, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "pkg").mkdir(parents=True)
    (src / "pkg" / "a").write_text("a")
    store.snapshot(src, "v1")
    dest = tmp_path / "dest"
    (dest / "pkg").mkdir(parents=True)
    (dest / "pkg" / "stale").write_text("s")
    (dest / "other").write_text("o")
    store.restore("v1", dest, "pkg", overwrite=True, delete=True)
    assert sorted(os.listdir(dest)) == ["other", "pkg"]
    assert sorted(os.listdir(dest / "pkg")) == ["a"]


def test_directory_in_the_way_is_refused_without_delete(store: Store, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "x").write_text("file")
    store.snapshot(src, "v1")
    dest = tmp_path / "dest"
    (dest / "x" / "inner").mkdir(parents=True)
    with pytest.raises(PartialRestore, match="pass --delete"):
        store.restore("v1", dest, overwrite=True)
    assert (dest / "x" / "inner").is_dir()
    store.restore("v1", dest, overwrite=True, delete=True)
    assert (dest / "x").read_text() == "file"


def test_delete_needs_overwrite(store: Store, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    store.snapshot(src, "v1")
    with pytest.raises(Exception, match="needs overwrite"):
        store.restore("v1", tmp_path / "dest", delete=True)
    with pytest.raises(AlreadyExists):
        (tmp_path / "full").mkdir()
        (tmp_path / "full" / "f").write_text("x")
        store.restore("v1", tmp_path / "full")


def test_a_hard_linked_file_is_replaced_not_changed_through_its_other_link(store: Store, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"shared content")
    os.chmod(src / "f", 0o644)
    store.snapshot(src, "v1")
    outside = tmp_path / "outside"
    outside.write_bytes(b"shared content")
    os.chmod(outside, 0o600)
    dest = tmp_path / "dest"
    dest.mkdir()
    os.link(outside, dest / "f")
    report = store.restore("v1", dest, overwrite=True)
    assert report.written == 1
    assert stat.S_IMODE(os.stat(dest / "f").st_mode) == 0o644
    assert stat.S_IMODE(os.stat(outside).st_mode) == 0o600 and os.stat(outside).st_nlink == 1


def test_a_symlink_or_fifo_in_place_of_a_small_file_is_replaced_never_read_through(
    store: Store, tmp_path: Path
) -> None:
    """Small files are compared as their directory is listed: a symlink to a file of the very same
    bytes is not a match (it is replaced, its target left alone), and a FIFO is neither opened nor
    waited on."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"same bytes")
    (src / "g").write_bytes(b"other")
    store.snapshot(src, "v1")
    outside = tmp_path / "outside"
    outside.write_bytes(b"same bytes")
    dest = tmp_path / "dest"
    dest.mkdir()
    os.symlink(outside, dest / "f")
    os.mkfifo(dest / "g")
    report = store.restore("v1", dest, overwrite=True, delete=True)
    assert (report.written, report.unchanged) == (2, 0)
    assert describe(str(dest)) == describe(str(src))
    assert outside.read_bytes() == b"same bytes" and not outside.is_symlink()


def test_in_place_never_writes_through_another_hard_link(tmp_path: Path, cas_home: Path) -> None:
    store, _backend = _counting_store(tmp_path)
    with store:
        src = tmp_path / "src"
        src.mkdir()
        content = bytearray(os.urandom(100_000))
        (src / "f").write_bytes(content)
        store.snapshot(src, "v1")
        dest = tmp_path / "dest"
        store.restore("v1", dest)
        os.link(dest / "f", tmp_path / "outside")
        mtime = os.stat(dest / "f").st_mtime_ns
        content[50_000:50_004] = b"edit"
        (src / "f").write_bytes(content)
        os.utime(src / "f", ns=(mtime, mtime))
        store.snapshot(src, "v2")
        store.restore("v2", dest, overwrite=True, in_place=True)
        assert (dest / "f").read_bytes() == bytes(content)
        assert (tmp_path / "outside").read_bytes() != bytes(content)


def test_cli_reports_written_unchanged_deleted(store: Store, tmp_path: Path, cas_home: Path) -> None:
    import json
    import subprocess
    import sys

    src = tmp_path / "src"
    src.mkdir()
    (src / "same").write_text("same")
    (src / "new").write_text("new")
    store.snapshot(src, "v1")
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "same").write_text("same")
    (dest / "stale").write_text("stale")
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "CAS_HOME": str(cas_home), "PYTHONPATH": str(root)}
    base = [sys.executable, "-m", "cas", "--repo", str(tmp_path / "repo"), "--index", f"sqlite:///{tmp_path / 'index.sqlite'}"]
    done = subprocess.run([*base, "--json", "restore", "v1", str(dest), "--overwrite", "--delete"],
                          capture_output=True, text=True, env=env, check=False)
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert (data["written"], data["unchanged"], data["deleted"], data["meta_fixed"]) == (1, 1, 1, 1)
    done = subprocess.run([*base, "restore", "v1", str(dest), "--overwrite"], capture_output=True, text=True, env=env,
                          check=True)
    assert "0 entries written" in done.stdout and "2 unchanged, 0 deleted" in done.stdout
    done = subprocess.run([*base, "restore", "v1", str(tmp_path / "d2"), "--delete"], capture_output=True, text=True, env=env,
                          check=False)
    assert done.returncode == 1 and done.stderr.startswith("cas: error:") and "overwrite" in done.stderr


def test_small_files_the_child_has_not_hashed_are_compared_by_one_call_per_directory(
    tmp_path: Path, cas_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the child's records (here it is not started), a directory's small files are hashed by
    one call of the compiled helper: the matches are left as they are (same inode), a file of the
    same size with other content is written anew, one whose mode or mtime differs is fixed in place,
    and the end is exact."""
    calls: list[int] = []
    real = restore_survey.hash_files

    def counting(dir_fd: int, names: list[bytes], *args: object) -> list:  # type: ignore[type-arg]
        calls.append(len(names))
        return real(dir_fd, names, *args)

    monkeypatch.setattr(restore_survey, "hash_files", counting)
    monkeypatch.setattr(restore_walk.Restorer, "_start_hash_ahead", lambda self, dest_fd: None)
    store, _ = _counting_store(tmp_path)
    with store:
        src, dest = _one_directory_edited(store, tmp_path, files=20, edited=3, size=2000)
        inodes = {p.name: p.stat().st_ino for p in (dest / "sub").iterdir()}
        os.chmod(dest / "sub" / "f10", 0o600)
        os.utime(dest / "sub" / "f11", ns=(0, 0))
        report = store.restore("v2", dest, overwrite=True, delete=True)
        assert describe(str(dest)) == describe(str(src))
    assert calls == [20]
    assert (report.unchanged, report.written, report.meta_fixed) == (18, 3, 2)  # 17 files, sub, 3 written
    after = {p.name: p.stat().st_ino for p in (dest / "sub").iterdir()}
    assert [name for name in sorted(after) if after[name] != inodes[name]] == ["f00", "f01", "f02"]
