"""Restore writes only inside the destination, whatever a (forged) tree says."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cas import CasError, IntegrityError, Store
from tests.hostile.forge import commit, file_entry, put_tree
from tests.treeutil import describe

BAD_NAMES = ["../escape", "/etc/passwd-abs", "a/b", ".", "..", "", "nul\x00byte", "x" * 5000]


@pytest.fixture
def arena(tmp_path: Path) -> Path:
    """A directory around the destination, whose contents must not change."""
    area = tmp_path / "arena"
    (area / "outside").mkdir(parents=True)
    (area / "outside" / "keep.txt").write_text("keep")
    return area


def _assert_nothing_outside_changed(arena: Path, before: dict[str, tuple[object, ...]]) -> None:
    after = describe(str(arena))
    after = {k: v for k, v in after.items() if not k.startswith("dest")}
    before = {k: v for k, v in before.items() if not k.startswith("dest")}
    assert after == before


@pytest.mark.parametrize("name", BAD_NAMES)
def test_hostile_names_are_refused(store: Store, arena: Path, name: str) -> None:
    root = put_tree(store, [file_entry(store, name)])
    commit(store, "evil", root)
    before = describe(str(arena))
    with pytest.raises(CasError):
        store.restore("evil", arena / "dest")
    _assert_nothing_outside_changed(arena, before)


def test_hostile_name_in_a_subdirectory_is_refused_and_names_the_directory(store: Store, arena: Path) -> None:
    sub = put_tree(store, [file_entry(store, "../../outside/keep.txt")])
    good = file_entry(store, "good.txt", b"good")
    root = put_tree(store, [{"name": "d", "type": "dir", "mode": 0o755, "mtime_ns": 0, "tree": sub}, good])
    commit(store, "evil", root)
    before = describe(str(arena))
    with pytest.raises(IntegrityError, match="d"):
        store.restore("evil", arena / "dest")
    _assert_nothing_outside_changed(arena, before)
    assert (arena / "dest" / "good.txt").read_bytes() == b"good"
    assert (arena / "outside" / "keep.txt").read_text() == "keep"


def test_duplicate_names_are_refused(store: Store, arena: Path) -> None:
    root = put_tree(store, [file_entry(store, "same", b"1"), file_entry(store, "same", b"2")])
    commit(store, "dup", root)
    with pytest.raises(IntegrityError, match="twice"):
        store.restore("dup", arena / "dest")


def test_symlink_then_entry_under_it_cannot_write_through(store: Store, arena: Path) -> None:
    # "link" -> ../outside, then a directory "link" holding a file: the duplicate is refused; and a
    # directory restored where the link already is must not follow it.
    link = {"name": "link", "type": "symlink", "mode": 0o777, "mtime_ns": 0, "target": str(arena / "outside")}
    sub = put_tree(store, [file_entry(store, "keep.txt", b"overwritten!")])
    as_dir = {"name": "link", "type": "dir", "mode": 0o755, "mtime_ns": 0, "tree": sub}
    commit(store, "first", put_tree(store, [link]))
    commit(store, "second", put_tree(store, [as_dir]))
    before = describe(str(arena))
    store.restore("first", arena / "dest")
    assert os.readlink(arena / "dest" / "link") == str(arena / "outside")
    store.restore("second", arena / "dest", overwrite=True)
    assert (arena / "outside" / "keep.txt").read_text() == "keep"
    _assert_nothing_outside_changed(arena, before)
    assert (arena / "dest" / "link" / "keep.txt").read_bytes() == b"overwritten!"


def test_planted_symlink_in_destination_is_not_followed(store: Store, arena: Path) -> None:
    sub = put_tree(store, [file_entry(store, "keep.txt", b"evil")])
    root = put_tree(store, [{"name": "d", "type": "dir", "mode": 0o755, "mtime_ns": 0, "tree": sub},
                            file_entry(store, "f", b"evil")])
    commit(store, "plant", root)
    dest = arena / "dest"
    dest.mkdir()
    os.symlink(arena / "outside", dest / "d")
    os.symlink(arena / "outside" / "keep.txt", dest / "f")
    before = describe(str(arena))
    with pytest.raises(CasError):
        store.restore("plant", dest)  # not empty: refused without --overwrite
    store.restore("plant", dest, overwrite=True)
    _assert_nothing_outside_changed(arena, before)
    assert not os.path.islink(dest / "d") and not os.path.islink(dest / "f")


def test_absurd_sizes_and_modes_are_refused(store: Store, arena: Path) -> None:
    for i, extra in enumerate(({"size": -1}, {"mode": 0o170000}, {"size": 10**30}, {"chunks": ["zz"]},
                               {"mtime_ns": "yesterday"}, {"digest": "0" * 63})):
        root = put_tree(store, [file_entry(store, "f", **extra)])
        commit(store, f"absurd-{i}", root)
        with pytest.raises(IntegrityError):
            store.restore(f"absurd-{i}", arena / f"dest{i}")
        assert not (arena / f"dest{i}" / "f").exists()


def test_size_lie_is_caught_and_no_partial_file_is_left(store: Store, arena: Path) -> None:
    root = put_tree(store, [file_entry(store, "f", b"short", size=100)])
    commit(store, "liar", root)
    with pytest.raises(IntegrityError, match="f"):
        store.restore("liar", arena / "dest")
    assert os.listdir(arena / "dest") == []


def test_setuid_bits_are_dropped_unless_asked(store: Store, arena: Path) -> None:
    root = put_tree(store, [file_entry(store, "suid", mode=0o4755)])
    commit(store, "suid", root)
    store.restore("suid", arena / "dest")
    assert os.stat(arena / "dest" / "suid").st_mode & 0o7777 == 0o755
    store.restore("suid", arena / "dest2", same_permissions=True)
    assert os.stat(arena / "dest2" / "suid").st_mode & 0o7777 == 0o4755
