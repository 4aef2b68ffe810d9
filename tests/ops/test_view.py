"""The view of executions as one tree, listed from another source than the stored trees (as the
index's table of tree entries would list it: no chunk lists), and opened from the stored trees."""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from pathlib import Path

import pytest

from backends.counting import CountingBackend
from backends.local import LocalBackend
from cas import Store
from cas.errors import ReadError
from cas.format.keys import pack_key
from cas.format.trees import DIR, Entry
from cas.ops.view import SnapshotView


class ChunklessListing:
    """Directories by tree ID from memory, without chunk lists: what an index table keeps."""

    def __init__(self, trees: dict[str, list[Entry]]) -> None:
        self.trees = trees
        self.reads = 0

    def read_tree(self, tree_id: str) -> list[Entry]:
        self.reads += 1
        return self.trees[tree_id]


@pytest.fixture
def counted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Store, CountingBackend]:
    monkeypatch.setenv("CAS_HOME", str(tmp_path / "home"))
    backend = CountingBackend(LocalBackend(str(tmp_path / "repo")))
    s = Store.open(backend, index=f"sqlite:///{tmp_path / 'index.sqlite'}", chunk_cache=False,
                   chunk_min=256, chunk_avg=1024, chunk_max=4096)
    yield s, backend
    s.close()


def _listing_of(store: Store, root: str) -> dict[str, list[Entry]]:
    out, todo = {}, [root]
    while todo:
        tree = todo.pop()
        entries = store.repo.read_tree(tree)
        out[tree] = [dataclasses.replace(e, chunks=()) for e in entries]
        todo.extend(e.tree for e in entries if e.type == DIR)
    return out


def test_listings_come_from_the_source_and_files_open_from_the_stored_tree(
    counted: tuple[Store, CountingBackend], tmp_path: Path
) -> None:
    s, backend = counted
    src = tmp_path / "src"
    (src / "a" / "b").mkdir(parents=True)
    data = os.urandom(30_000)
    (src / "a" / "b" / "data.bin").write_bytes(data)
    (src / "top.txt").write_text("top\n")
    s.snapshot(src, "run-1")
    s.snapshot(src, "run-2")
    listing = ChunklessListing(_listing_of(s, s.get("run-1").root))
    view = SnapshotView(s.repo, s, listings=lambda e: listing if e == "run-1" else None)
    backend.reset()

    node = view.lookup("run-1/a/b/data.bin")
    assert [n.name for n in view.children(view.lookup("run-1"))] == ["a", "top.txt"]
    assert node.size == len(data) and node.entry is not None and node.entry.chunks == ()
    assert backend.calls["get"] == 0 and listing.reads > 0  # listed without touching the backend

    reader = view.open(node)
    assert reader.read(1000, 20_000) == data[1000:21_000]
    assert backend.calls["get"] >= 2  # the stored directory, then the chunks

    reads = listing.reads
    assert view.open(view.lookup("run-2/a/b/data.bin")).read(0, 10) == data[:10]  # run-2: stored trees
    assert listing.reads == reads


def test_a_listing_that_disagrees_with_the_stored_tree_is_not_read(
    counted: tuple[Store, CountingBackend], tmp_path: Path
) -> None:
    s, _backend = counted
    src = tmp_path / "src"
    src.mkdir()
    (src / "f.bin").write_bytes(os.urandom(5000))
    s.snapshot(src, "run-1")
    root = s.get("run-1").root
    trees = _listing_of(s, root)
    trees[root] = [dataclasses.replace(e, size=4000) for e in trees[root]]  # a stale or lying row
    view = SnapshotView(s.repo, s, listings=lambda e: ChunklessListing(trees))
    with pytest.raises(ReadError, match="run-1/f.bin"):
        view.open(view.lookup("run-1/f.bin"))


def _deep_tree(src: Path) -> None:
    """4 levels of 3 directories (120 directories), 2 files in each."""
    todo = [src]
    for _level in range(4):
        below = []
        for d in todo:
            for i in range(3):
                sub = d / f"d{i}"
                sub.mkdir(parents=True)
                (sub / "f.txt").write_text(str(sub))
                (sub / "g.bin").write_bytes(os.urandom(100))
                below.append(sub)
        todo = below


def test_a_walk_lists_from_the_index_in_a_few_queries_per_level(
    counted: tuple[Store, CountingBackend], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s, backend = counted
    src = tmp_path / "src"
    _deep_tree(src)
    s.snapshot(src, "run-1")
    stored = _listing_of(s, s.get("run-1").root)
    for tree_id in stored:  # the index gives each tree's rows as one batched read does
        assert s.repo.index.tree_entries_of([tree_id, "0" * 64]) == {
            tree_id: s.repo.index.tree_entries(tree_id), "0" * 64: []}
    queries: list[list[str]] = []  # the index's batched reads of tree rows (on a held connection)
    read = s.repo.index.tree_entries_of
    monkeypatch.setattr(s.repo.index, "tree_entries_of", lambda ids: queries.append(list(ids)) or read(ids))
    view = s.view()
    backend.reset()

    seen: dict[str, list[str]] = {}
    todo = [view.lookup("run-1")]
    while todo:
        node = todo.pop()
        children = view.children(node)
        seen[node.tree] = [c.name for c in children]
        todo.extend(c for c in children if c.type == DIR)
    assert seen == {t: [e.name for e in entries] for t, entries in stored.items()}
    assert backend.calls["get"] == 0
    assert len(stored) == 121 and sum(map(len, queries)) >= 121
    assert len(queries) <= 6  # one per level of the tree, not one per directory


class BatchListing(ChunklessListing):
    def __init__(self, trees: dict[str, list[Entry]]) -> None:
        super().__init__(trees)
        self.batches: list[int] = []

    def read_trees(self, tree_ids: list[str]) -> dict[str, list[Entry]]:
        self.batches.append(len(tree_ids))
        return {t: self.trees[t] for t in tree_ids}


def test_listings_read_ahead_stop_at_their_budget_and_the_cache_at_its_capacity(
    counted: tuple[Store, CountingBackend], tmp_path: Path
) -> None:
    from cas.ops.view import CachedTrees

    s, _backend = counted
    src = tmp_path / "src"
    _deep_tree(src)
    s.snapshot(src, "run-1")
    root = s.get("run-1").root
    trees = _listing_of(s, root)
    source = BatchListing(trees)
    cache = CachedTrees(source, capacity=60, prefetch=20)
    assert cache.read_tree(root) == trees[root]
    assert sum(source.batches) < len(trees)  # stopped at the budget, not the whole tree
    for tree_id, entries in trees.items():
        assert cache.read_tree(tree_id) == entries
    assert cache._held <= 60


def test_opening_each_file_of_a_directory_locates_their_chunks_in_one_query(
    counted: tuple[Store, CountingBackend], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s, _backend = counted
    src = tmp_path / "src"
    src.mkdir()
    files = {f"f{i:02}.bin": os.urandom(3000 + 97 * i) for i in range(30)}
    for name, data in files.items():
        (src / name).write_bytes(data)
    s.snapshot(src, "run-1")
    view = s.view()
    queries: list[list[str]] = []  # the index's blob lookups (on a held connection, not SQLAlchemy's)
    locate = s.repo.index.locate
    monkeypatch.setattr(s.repo.index, "locate", lambda ids: queries.append(list(ids)) or locate(ids))
    for name, data in files.items():
        assert view.open(view.lookup(f"run-1/{name}")).read(0, len(data)) == data
    assert len(queries) == 2  # the stored directory's node, then all 30 files' chunks


def _small_files(src: Path, count: int = 40) -> dict[str, bytes]:
    """``count`` small files of distinct content (one or a few chunks each) in ``src``."""
    src.mkdir()
    files = {f"f{i:02}.bin": os.urandom(4200 + 61 * i) for i in range(count)}  # over chunk_max: 2+ chunks
    for name, data in files.items():
        (src / name).write_bytes(data)
    return files


def test_a_directorys_small_files_are_fetched_ahead_with_one_read_per_pack(
    counted: tuple[Store, CountingBackend], tmp_path: Path
) -> None:
    s, backend = counted
    files = _small_files(tmp_path / "src")
    s.snapshot(tmp_path / "src", "run-1")
    chunks = {c for e in s.repo.read_tree(s.get("run-1").root) for c in e.chunks}
    packs = {pack_key(loc.pack_id) for loc in s.repo.locate(chunks).values()}
    view = s.view()
    backend.reset()
    for name, data in files.items():  # in name order, as `cat dir/*` reads them
        assert view.open(view.lookup(f"run-1/{name}")).read(0, len(data) + 10) == data
    assert len(chunks) >= 2 * len(files)  # several chunks a file, and still:
    assert sorted(key for key, _offset, _length in backend.gets if key in packs) == sorted(packs)


def test_a_corrupt_chunk_fetched_ahead_fails_only_the_file_holding_it(
    counted: tuple[Store, CountingBackend], tmp_path: Path
) -> None:
    s, _backend = counted
    files = _small_files(tmp_path / "src")
    s.snapshot(tmp_path / "src", "run-1")
    bad = next(e for e in s.repo.read_tree(s.get("run-1").root) if e.name == "f17.bin")
    loc = s.repo.locate([bad.chunks[-1]])[bad.chunks[-1]]
    pack = tmp_path / "repo" / pack_key(loc.pack_id)
    raw = bytearray(pack.read_bytes())
    raw[loc.offset + loc.length // 2] ^= 0x40
    pack.write_bytes(bytes(raw))
    view = s.view()
    for name, data in files.items():
        reader = view.open(view.lookup(f"run-1/{name}"))
        if name != "f17.bin":
            assert reader.read(0, len(data)) == data
            continue
        with pytest.raises(ReadError, match="run-1/f17.bin"):
            reader.read(0, len(data))
        intact = len(data) - loc.raw_length  # the chunks before the corrupt (last) one
        assert reader.read(0, intact) == data[:intact]


def test_the_next_files_are_fetched_ahead_before_the_reader_reaches_them(
    counted: tuple[Store, CountingBackend], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reading a directory's small files in name order: once less than half of the batch fetched
    ahead lies after the file being read, the next batch is asked for, before its first file is
    read; and no file is fetched on its own."""
    from cas.ops import dir_readahead

    s, backend = counted
    files = {f"f{i:02}.bin": os.urandom(3000) for i in range(40)}  # one chunk each (under chunk_max)
    (tmp_path / "src").mkdir()
    for name, data in files.items():
        (tmp_path / "src" / name).write_bytes(data)
    s.snapshot(tmp_path / "src", "run-1")
    monkeypatch.setattr(dir_readahead, "SIBLINGS_AHEAD_BYTES", 8 * 3000)  # batches of 8 files
    chunks = [c for e in s.repo.read_tree(s.get("run-1").root) for c in e.chunks]
    packs = {pack_key(loc.pack_id) for loc in s.repo.locate(chunks).values()}
    view = s.view()
    names = sorted(files)
    backend.reset()

    def pack_reads() -> int:  # of the packs holding the files (not their tree's)
        return sum(1 for key, _offset, _length in backend.gets if key in packs)

    for i, name in enumerate(names[:5]):
        assert view.open(view.lookup(f"run-1/{name}")).read(0, 5000) == files[name]
    # f04 leaves 3 files of the first batch (f00-f07) ahead: the second (f08-f15) is on its way.
    deadline = time.monotonic() + 30
    while pack_reads() < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert pack_reads() == 2
    for name in names[5:]:
        assert view.open(view.lookup(f"run-1/{name}")).read(0, 5000) == files[name]
    assert pack_reads() == 5  # five batches of eight, no file read alone


def test_the_first_read_in_a_directory_sends_for_the_first_files_of_its_subdirectories(
    counted: tuple[Store, CountingBackend], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A walk reads a directory's files and then enters its subdirectories: their first small files
    are on their way (within their budget) before any of them is read, and reading them then
    fetches nothing more; a subdirectory beyond the first few is left for its own first read."""
    from cas.ops import dir_readahead

    s, backend = counted
    monkeypatch.setattr(dir_readahead, "SUBDIRECTORIES_AHEAD", 2)
    monkeypatch.setattr(dir_readahead, "SUBDIRECTORY_AHEAD_BYTES", 3 * 3000)
    src = tmp_path / "src"
    files: dict[str, bytes] = {"top.bin": os.urandom(3000)}
    for sub in ("a", "b", "c"):
        for i in range(5):
            files[f"{sub}/f{i}.bin"] = os.urandom(3000)  # one chunk each (under chunk_max)
    for name, data in files.items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes(data)
    s.snapshot(src, "run-1")
    view = s.view()
    for sub in ("a", "b", "c"):
        view.children(view.lookup(f"run-1/{sub}"))  # listed, as a walk lists them
    chunks = {name: s.repo.read_tree(view.lookup(f"run-1/{name.rpartition('/')[0]}").tree)
              for name in files if "/" in name}
    wanted = {name: next(e.chunks for e in entries if e.name == name.rpartition("/")[2])
              for name, entries in chunks.items()}

    assert view.read_whole(view.lookup("run-1/top.bin")) == files["top.bin"]
    deadline = time.monotonic() + 30
    while view._ahead.wants(wanted["b/f2.bin"]) and time.monotonic() < deadline:
        time.sleep(0.01)
    ahead = {name for name, ids in wanted.items() if not view._ahead.wants(ids)}
    assert ahead == {"a/f0.bin", "a/f1.bin", "a/f2.bin", "b/f0.bin", "b/f1.bin", "b/f2.bin"}
    _background_idle()  # the rest of the work ahead (locating c's files) is done
    backend.reset()
    read = ("a/f0.bin", "a/f1.bin", "a/f2.bin", "b/f0.bin")
    for name in read:
        assert view.read_whole(view.lookup(f"run-1/{name}")) == files[name]
    # None of their chunks was fetched again (the reads send for the next files of a and b).
    fetched_again = [loc for name in read for loc in s.repo.locate(wanted[name]).values()
                     if any(key == pack_key(loc.pack_id) and o <= loc.offset < o + n for key, o, n in backend.gets)]
    assert fetched_again == []

    # A subdirectory beyond the first few has its files located ahead too (not fetched): reading
    # them asks the index nothing.
    queries: list[list[str]] = []
    locate = s.repo.index.locate
    monkeypatch.setattr(s.repo.index, "locate", lambda ids: queries.append(list(ids)) or locate(ids))
    for i in range(5):
        assert view.read_whole(view.lookup(f"run-1/c/f{i}.bin")) == files[f"c/f{i}.bin"]
    assert queries == []


def _background_idle() -> None:
    """Wait until the read-ahead's background threads have finished what was queued before."""
    from cas.repo.background import background

    both = threading.Barrier(2)
    for running in [background().submit(both.wait, 30) for _ in range(2)]:
        running.result()


def test_a_small_file_read_whole_is_checked_whole(counted: tuple[Store, CountingBackend]) -> None:
    """Every chunk verified, and the whole: a file whose chunks are intact but whose recorded
    digest is not theirs is an I/O error naming it, never its bytes."""
    s, _backend = counted
    from tests.hostile import forge

    good = forge.file_entry(s, "good.txt", b"all fine\n")
    liar = forge.file_entry(s, "liar.txt", b"part one, ", chunks=[forge.put_blob(s, b"part one, "),
                                                                 forge.put_blob(s, b"part two\n")],
                            size=len(b"part one, part two\n"))
    forge.commit(s, "run-1", forge.put_tree(s, [good, liar]))
    view = s.view()
    assert view.read_whole(view.lookup("run-1/good.txt")) == b"all fine\n"
    with pytest.raises(ReadError, match="run-1/liar.txt"):
        view.read_whole(view.lookup("run-1/liar.txt"))
    with pytest.raises(IsADirectoryError):
        view.read_whole(view.lookup("run-1"))


def test_a_one_chunk_file_whose_digest_is_not_its_chunk_is_not_read_whole(
    counted: tuple[Store, CountingBackend]
) -> None:
    from tests.hostile import forge

    s, _backend = counted
    other = forge.file_entry(s, "other.txt", b"another file\n")
    liar = forge.file_entry(s, "liar.txt", b"genuine chunk\n", digest=other["digest"])
    forge.commit(s, "run-1", forge.put_tree(s, [liar, other]))
    view = s.view()
    assert view.read_whole(view.lookup("run-1/other.txt")) == b"another file\n"
    with pytest.raises(ReadError, match="run-1/liar.txt"):
        view.read_whole(view.lookup("run-1/liar.txt"))
