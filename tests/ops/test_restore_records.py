"""Directory records: a restore over what an earlier restore left takes a directory's files as
matching from its listing alone when nothing in it changed, and compares them whenever anything
did; what it records is only ever what it wrote or verified."""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import stat
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cas import Store
from cas.ops.restore import local as restore_local
from cas.ops.restore import survey as restore_survey
from cas.ops.tree_filter import TreeFilter
from cas.repo.filescache import files_cache_paths
from tests.ops.test_restore_incremental import _make_writable, _two_trees
from tests.ops.test_roundtrip import _materialise
from tests.treeutil import describe

OLD = 1_600_000_000_000_000_000
#: Past the coarsest clock tick a file system stamps ctimes with (a kernel without fine-grained
#: timestamps): a change made after it gets a ctime of its own.
_TICK = 0.01


def _source(root: Path) -> Path:
    """A project: small files beside large ones (past ``chunk_min``), in nested directories, with
    old mtimes (a restore records files whose mtime is past the racy window)."""
    files = {"a.txt": 100, "b.txt": 100, "c.bin": 300_000, "sub/d.txt": 2_000, "sub/e.txt": 2_000,
             "sub/deep/f.bin": 700_000, "sub/deep/g.txt": 10, "other/h.txt": 5}
    for rel, size in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(size))
        os.utime(path, ns=(OLD, OLD))
    os.symlink("a.txt", root / "link")
    return root


def _open(tmp_path: Path) -> Store:
    return Store.open(str(tmp_path / "repo"), index=f"sqlite:///{tmp_path / 'i.sqlite'}")


def _files(root: Path) -> int:
    return sum(1 for p in root.rglob("*") if p.is_file() and not p.is_symlink())


def _recorded(store: Store, tmp_path: Path) -> tuple[Path, Path]:
    """``_source`` snapshotted as ``v1`` and restored into ``dest`` with ``overwrite`` (recorded),
    then a clock tick passed; returns (source, destination)."""
    src = _source(tmp_path / "src")
    dest = tmp_path / "dest"
    store.snapshot(src, "v1", use_files_cache=False)
    store.restore("v1", dest, overwrite=True)
    time.sleep(_TICK)
    return src, dest


def _dir_rows(home: Path) -> int:
    paths = files_cache_paths(str(home / "cache"))
    if not paths:
        return 0
    with sqlite3.connect(paths[0]) as db:
        return int(db.execute("SELECT COUNT(*) FROM dirs").fetchone()[0])


def test_a_restore_over_its_own_restore_takes_every_file_from_the_records(tmp_path: Path, cas_home: Path) -> None:
    """Nothing is hashed, and no child is started to hash ahead: each directory's listing matches
    its record."""
    src = _source(tmp_path / "src")
    dest = tmp_path / "dest"
    with _open(tmp_path) as store:
        store.snapshot(src, "v1", use_files_cache=False)
        store.restore("v1", dest, overwrite=True)  # recorded: into a destination that may hold something
        assert _dir_rows(cas_home) == 4  # dest, sub, sub/deep, other
        with mock.patch.object(restore_survey, "hash_files", side_effect=AssertionError("hashed")), \
                mock.patch.object(restore_survey, "match_whole", side_effect=AssertionError("compared")), \
                mock.patch.object(restore_survey.hash_ahead, "start", side_effect=AssertionError("hashing ahead")):
            report = store.restore("v1", dest, overwrite=True, delete=True)
    assert report.files_from_cache == _files(src) == 8
    assert (report.unchanged, report.written, report.deleted) == (8 + 3 + 1, 0, 0)  # files, dirs, the link
    assert describe(str(dest)) == describe(str(src))


def test_the_child_hashing_ahead_starts_unless_the_destination_is_as_recorded(tmp_path: Path, cas_home: Path) -> None:
    """An entry added and removed in the destination (or a new directory under an inode number
    reused) changes its ctime: the records may no longer match, so the child hashing ahead starts
    as without them; the restore is exact and records the destination again."""
    with _open(tmp_path) as store:
        src, dest = _recorded(store, tmp_path)
        (dest / "passing").write_bytes(b"")
        (dest / "passing").unlink()
        with mock.patch.object(restore_survey.hash_ahead, "start", wraps=restore_survey.hash_ahead.start) as start:
            report = store.restore("v1", dest, overwrite=True, delete=True)
        assert start.call_count == 1
        assert report.files_from_cache == _files(src)  # the files' identities still digest to the records
        with mock.patch.object(restore_survey.hash_ahead, "start", side_effect=AssertionError("hashing ahead")):
            store.restore("v1", dest, overwrite=True, delete=True)
    assert describe(str(dest)) == describe(str(src))


def test_a_destination_holding_only_directories_is_recorded_too(tmp_path: Path, cas_home: Path) -> None:
    """The destination is recorded even with no file of its own (an ML execution's root holds
    only directories): the next restore over it starts no child to hash ahead."""
    src = tmp_path / "src"
    _source(src / "only")
    with _open(tmp_path) as store:
        store.snapshot(src, "v1", use_files_cache=False)
        store.restore("v1", tmp_path / "dest", overwrite=True)
        with mock.patch.object(restore_survey.hash_ahead, "start", side_effect=AssertionError("hashing ahead")):
            report = store.restore("v1", tmp_path / "dest", overwrite=True, delete=True)
    assert report.files_from_cache == _files(src) and report.written == 0
    assert describe(str(tmp_path / "dest")) == describe(str(src))


def _edit_keeping_size_and_mtime(dest: Path) -> None:
    path = dest / "sub" / "d.txt"
    with open(path, "r+b") as f:
        f.write(b"changed")
    os.utime(path, ns=(OLD, OLD))


def _replace_by_same_size_and_mtime(dest: Path) -> None:
    other = dest / "sub" / "other"
    other.write_bytes(b"x" * 2_000)
    os.utime(other, ns=(OLD, OLD))
    os.replace(other, dest / "sub" / "d.txt")


def _swap_two_files_of_one_size_and_mtime(dest: Path) -> None:
    os.rename(dest / "sub" / "d.txt", dest / "sub" / "tmp")
    os.rename(dest / "sub" / "e.txt", dest / "sub" / "d.txt")
    os.rename(dest / "sub" / "tmp", dest / "sub" / "e.txt")


def _edit_large_file_keeping_size_and_mtime(dest: Path) -> None:
    path = dest / "sub" / "deep" / "f.bin"
    with open(path, "r+b") as f:
        f.seek(500_000)
        f.write(b"changed")
    os.utime(path, ns=(OLD, OLD))


def _edit_through_a_mapping(dest: Path) -> None:
    import mmap

    path = dest / "b.txt"
    with open(path, "r+b") as f, mmap.mmap(f.fileno(), 0) as m:
        m[:7] = b"changed"
        m.flush()
    os.utime(path, ns=(OLD, OLD))


def _mode_changed_and_put_back(dest: Path) -> None:
    path = dest / "a.txt"
    mode = path.stat().st_mode
    path.chmod(0o600)
    path.chmod(mode)


def _hard_link_elsewhere_then_edit(dest: Path) -> None:
    os.link(dest / "other" / "h.txt", dest.parent / "elsewhere")
    with open(dest.parent / "elsewhere", "r+b") as f:
        f.write(b"!")
    os.utime(dest.parent / "elsewhere", ns=(OLD, OLD))


def _deleted(dest: Path) -> None:
    (dest / "sub" / "deep" / "g.txt").unlink()


def _replaced_by_a_symlink(dest: Path) -> None:
    (dest / "a.txt").unlink()
    os.symlink("b.txt", dest / "a.txt")


def _an_extra_file(dest: Path) -> None:
    (dest / "sub" / "extra").write_bytes(b"not in the execution")


def _directory_copied_back(dest: Path) -> None:
    shutil.copytree(dest / "sub", dest / "sub-copy", symlinks=True)
    shutil.rmtree(dest / "sub")
    os.rename(dest / "sub-copy", dest / "sub")
    with open(dest / "sub" / "e.txt", "r+b") as f:  # and one file of the copy edited
        f.write(b"changed")
    os.utime(dest / "sub" / "e.txt", ns=(OLD, OLD))


@pytest.mark.parametrize("change", [
    _edit_keeping_size_and_mtime, _replace_by_same_size_and_mtime, _swap_two_files_of_one_size_and_mtime,
    _edit_large_file_keeping_size_and_mtime, _edit_through_a_mapping, _mode_changed_and_put_back,
    _hard_link_elsewhere_then_edit, _deleted, _replaced_by_a_symlink, _an_extra_file, _directory_copied_back,
], ids=lambda f: f.__name__.strip("_"))
def test_any_change_after_the_recording_restore_is_compared_and_restored(
    tmp_path: Path, cas_home: Path, change: Callable[[Path], None],
) -> None:
    """Whatever happened to a directory since a restore recorded it (content, names, links, type,
    mode put back, a copy in its place), the next restore compares what changed and ends exact,
    however well the change kept sizes and mtimes."""
    with _open(tmp_path) as store:
        src, dest = _recorded(store, tmp_path)
        before = describe(str(dest))
        change(dest)
        changed = describe(str(dest)) != before
        report = store.restore("v1", dest, overwrite=True, delete=True)
        assert describe(str(dest)) == describe(str(src))
        if change is _an_extra_file:  # the execution's files are as recorded: the extra one goes
            assert (report.files_from_cache, report.deleted) == (_files(src), 1)
        else:
            assert report.files_from_cache < _files(src)
        if changed:
            assert report.written + report.deleted >= 1
        # Recorded again as it now is: the next restore takes it all from the records.
        again = store.restore("v1", dest, overwrite=True, delete=True)
        assert (again.written, again.deleted) == (0, 0)
        assert describe(str(dest)) == describe(str(src))


def test_trusting_mtimes_never_vouches_for_a_file_it_did_not_read(tmp_path: Path, cas_home: Path) -> None:
    """A restore with ``trust_mtime`` keeps an edited file of the same size and mtime (what it
    promises) but records nothing on that trust: the next restore without it finds the edit."""
    with _open(tmp_path) as store:
        src, dest = _recorded(store, tmp_path)
        _edit_keeping_size_and_mtime(dest)
        trusted = store.restore("v1", dest, overwrite=True, delete=True, trust_mtime=True)
        assert trusted.written == 0 and (dest / "sub" / "d.txt").read_bytes()[:7] == b"changed"
        report = store.restore("v1", dest, overwrite=True, delete=True)
        assert report.written == 1
        assert describe(str(dest)) == describe(str(src))


def test_files_compared_before_they_settled_are_not_recorded(tmp_path: Path, cas_home: Path) -> None:
    """A file found matching by its content is recorded only if its ctime had settled (no write
    from before can still be pending); the restore's own files always are."""
    src = _source(tmp_path / "src")
    dest = tmp_path / "dest"
    shutil.copytree(src, dest, symlinks=True)  # just now: nothing in it has settled
    with _open(tmp_path) as store:
        store.snapshot(src, "v1", use_files_cache=False)
        first = store.restore("v1", dest, overwrite=True, delete=True)
        assert (first.written, first.files_from_cache) == (0, 0)
        second = store.restore("v1", dest, overwrite=True, delete=True)
        assert second.files_from_cache == 0
        with mock.patch.object(restore_local, "SETTLED_NS", 0):
            store.restore("v1", dest, overwrite=True, delete=True)
        third = store.restore("v1", dest, overwrite=True, delete=True)
        assert third.files_from_cache == _files(src)
        assert describe(str(dest)) == describe(str(src))


def test_a_file_written_with_a_recent_mtime_is_not_recorded(tmp_path: Path, cas_home: Path) -> None:
    """An entry's mtime within the racy window of the restore is not trusted to be changed by a
    later write in the same clock tick: its directory is compared next time; the others are not."""
    src = _source(tmp_path / "src")
    (src / "other" / "new.txt").write_bytes(b"written just now")
    dest = tmp_path / "dest"
    with _open(tmp_path) as store:
        store.snapshot(src, "v1", use_files_cache=False)
        store.restore("v1", dest, overwrite=True)
        report = store.restore("v1", dest, overwrite=True, delete=True)
    assert report.files_from_cache == _files(src) - 2  # other/h.txt and other/new.txt compared
    assert report.written == 0


def test_a_first_restore_a_selection_or_no_files_cache_records_nothing(tmp_path: Path, cas_home: Path) -> None:
    """Only a restore with ``overwrite`` records: a first restore into an empty destination does
    not (it would cost it the identity of every file), nor a selection, nor ``use_files_cache=False``."""
    src = _source(tmp_path / "src")
    with _open(tmp_path) as store:
        store.snapshot(src, "v1", use_files_cache=False)
        store.restore("v1", tmp_path / "first")
        store.restore("v1", tmp_path / "some", overwrite=True, filter=TreeFilter(include=("sub/**",)))
        store.restore("v1", tmp_path / "quiet", overwrite=True, use_files_cache=False)
        assert _dir_rows(cas_home) == 0
        report = store.restore("v1", tmp_path / "quiet", overwrite=True, delete=True, use_files_cache=False)
        assert report.files_from_cache == 0 and report.written == 0


def test_a_restore_of_another_execution_uses_the_records_of_the_directories_it_shares(
    tmp_path: Path, cas_home: Path,
) -> None:
    """The next execution of a project over the last one's restore: directories whose trees did
    not change match by their records; the changed one and its ancestors are compared."""
    src = _source(tmp_path / "src")
    dest = tmp_path / "dest"
    with _open(tmp_path) as store:
        store.snapshot(src, "v1", use_files_cache=False)
        (src / "sub" / "deep" / "g.txt").write_bytes(b"the next execution")
        os.utime(src / "sub" / "deep" / "g.txt", ns=(OLD, OLD))
        store.snapshot(src, "v2", use_files_cache=False)
        store.restore("v1", dest, overwrite=True)
        report = store.restore("v2", dest, overwrite=True, delete=True)
    assert report.files_from_cache == 1 + 2  # other/h.txt by its record; c.bin and f.bin by the files cache
    assert report.written == 1
    assert describe(str(dest)) == describe(str(src))


_MUTATIONS = ["edit", "swap", "chmod", "delete", "extra", "touch"]


def _mutate(dest: str, kind: str, pick: int) -> None:
    files = sorted(os.path.join(d, f) for d, _, fs in os.walk(dest) for f in fs
                   if not os.path.islink(os.path.join(d, f)))
    if not files:
        return
    path = files[pick % len(files)]
    st = os.lstat(path)
    if kind == "edit" and st.st_size:
        with open(path, "r+b") as f:
            first = f.read(1)
            f.seek(0)
            f.write(bytes([first[0] ^ 1]))
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    elif kind == "swap":
        other = files[(pick + 1) % len(files)]
        if other != path:
            os.rename(path, path + ".swap")
            os.rename(other, path)
            os.rename(path + ".swap", other)
    elif kind == "chmod":
        os.chmod(path, 0o600 if st.st_mode & 0o777 != 0o600 else 0o644)
        os.chmod(path, st.st_mode & 0o7777)
    elif kind == "delete":
        os.unlink(path)
    elif kind == "extra":
        with open(path + ".extra", "wb") as f:
            f.write(b"extra")
    elif kind == "touch":
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(trees=_two_trees(), settled=st.booleans(),
       mutations=st.lists(st.tuples(st.sampled_from(_MUTATIONS), st.integers(0, 1000)), max_size=4))
def test_random_tree_over_its_own_restore_changed_at_random_ends_exact(
    store: Store, trees: tuple[dict[str, object], dict[str, object]], settled: bool,
    mutations: list[tuple[str, int]],
) -> None:
    """Random trees: ``before`` restored (recorded), changed at random (contents edited with the
    mtime put back, files swapped, modes changed and put back, files deleted or added), then
    ``after`` (or ``before`` again) restored over it with ``delete``: always exactly the
    execution; and once more, nothing is written."""
    before, after = trees
    work = tempfile.mkdtemp()
    try:
        for label, tree in (("before", before), ("after", after)):
            _materialise(os.path.join(work, label), tree, [OLD])
            store.snapshot(os.path.join(work, label), f"{label}-{os.path.basename(work)}", use_files_cache=False)
        dest = os.path.join(work, "dest")
        store.restore(f"before-{os.path.basename(work)}", dest, overwrite=True)
        time.sleep(_TICK)
        for kind, pick in mutations:
            _mutate(dest, kind, pick)
        with mock.patch.object(restore_local, "SETTLED_NS", 0) if settled else contextlib.nullcontext():
            for label in ("after", "before", "after"):
                store.restore(f"{label}-{os.path.basename(work)}", dest, overwrite=True, delete=True)
                assert describe(dest) == describe(os.path.join(work, label)), label
            again = store.restore(f"after-{os.path.basename(work)}", dest, overwrite=True, delete=True)
        assert (again.written, again.deleted, again.meta_fixed) == (0, 0, 0)
    finally:
        _make_writable(work)
        shutil.rmtree(work)


def test_unchanged_subdirectories_are_not_entered(tmp_path: Path, cas_home: Path) -> None:
    """The next execution over the last one's restore: a subdirectory whose tree did not change
    and whose subtree is as that restore recorded it is not entered: with the packs of the first
    execution gone from the repository, the restore of the second over it is still exact (only
    the changed directory's and its ancestors' trees, and the changed file, are read)."""
    src = _source(tmp_path / "src")
    dest = tmp_path / "dest"
    repo = tmp_path / "repo"
    with _open(tmp_path) as store:
        store.snapshot(src, "v1", use_files_cache=False)
        first = {p for p in (repo / "data").rglob("*") if p.is_file()}
        (src / "other" / "h.txt").write_bytes(b"the next execution")
        os.utime(src / "other" / "h.txt", ns=(OLD, OLD))
        store.snapshot(src, "v2", use_files_cache=False)
        store.restore("v1", dest, overwrite=True)
        time.sleep(_TICK)
        gone = tmp_path / "gone"
        gone.mkdir()
        for i, pack in enumerate(first):
            os.rename(pack, gone / str(i))
        report = store.restore("v2", dest, overwrite=True, delete=True)
        assert not report.failures
        assert describe(str(dest)) == describe(str(src))
        # sub (with sub/deep) not entered: its 4 files from the records, and c.bin by the files cache.
        assert report.files_from_cache == 4 + 1 and report.written == 1
        assert (report.files, report.dirs) == (_files(src), 3)


def test_a_subtree_recorded_without_set_id_bits_is_entered_by_a_restore_keeping_them(
    tmp_path: Path, cas_home: Path,
) -> None:
    """Whether set-user-ID and set-group-ID bits are kept is part of what a subtree record says:
    a restore that keeps them (``same_permissions``) enters a subtree recorded by one that did
    not, and sets them."""
    src = _source(tmp_path / "src")
    os.chmod(src / "sub" / "deep" / "g.txt", 0o4755)
    os.utime(src / "sub" / "deep", ns=(OLD, OLD))
    dest = tmp_path / "dest"
    with _open(tmp_path) as store:
        store.snapshot(src, "v1", use_files_cache=False)
        store.restore("v1", dest, overwrite=True)
        assert stat.S_IMODE(os.lstat(dest / "sub" / "deep" / "g.txt").st_mode) == 0o755
        time.sleep(_TICK)
        store.restore("v1", dest, overwrite=True, delete=True, same_permissions=True)
    assert describe(str(dest)) == describe(str(src))
    assert stat.S_IMODE(os.lstat(dest / "sub" / "deep" / "g.txt").st_mode) == 0o4755


def test_a_destination_as_a_restore_of_the_same_tree_left_it_is_not_entered(tmp_path: Path, cas_home: Path) -> None:
    """Restoring the same execution again over its recorded restore reads nothing from the
    repository (every pack gone, it is still exact and counted unchanged); once anything below
    changed (an edit keeping size and mtime, deep down), the restore walks it and mends it."""
    src = tmp_path / "src"
    _source(src)
    (src / "link").unlink()  # nothing but files and directories
    dest = tmp_path / "dest"
    with _open(tmp_path) as store:
        store.snapshot(src, "v1", use_files_cache=False)
        store.restore("v1", dest, overwrite=True)
        time.sleep(_TICK)
        packs = tmp_path / "repo" / "data"
        os.rename(packs, tmp_path / "packs")
        report = store.restore("v1", dest, overwrite=True, delete=True)
        assert not report.failures and report.written == 0
        assert (report.files, report.dirs, report.unchanged, report.files_from_cache) == (8, 3, 11, 8)
        os.rename(tmp_path / "packs", packs)
        _edit_keeping_size_and_mtime(dest)
        report = store.restore("v1", dest, overwrite=True, delete=True)
        assert report.written == 1
    assert describe(str(dest)) == describe(str(src))


def test_no_child_is_started_early_for_a_destination_as_a_restore_left_it(tmp_path: Path, cas_home: Path) -> None:
    """The command line starts the child hashing ahead before the engine loads, but not over a
    destination a files cache records as a restore left it (the restore would not use it); once
    something in it changed, it does."""
    with _open(tmp_path) as store:
        _src, dest = _recorded(store, tmp_path)
    restore_survey.hash_ahead.start_early(str(dest))
    assert not restore_survey.hash_ahead._early
    (dest / "passing").write_bytes(b"")
    (dest / "passing").unlink()
    restore_survey.hash_ahead.start_early(str(dest))
    try:
        assert len(restore_survey.hash_ahead._early) == 1
    finally:
        while restore_survey.hash_ahead._early:
            restore_survey.hash_ahead._early.pop()[1].close()
