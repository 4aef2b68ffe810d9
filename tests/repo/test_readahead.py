"""Chunks fetched ahead of their readers: held within their bound, each taken once and verified as
it is taken; what fails verification is never returned (its reader fetches it and reports it)."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cas import Store
from cas.format.keys import pack_key
from cas.repo.readahead import ChunksAhead
from tests.engine import SMALL_CHUNKS


def _chunks(store: Store, tmp_path: Path, count: int = 30) -> dict[str, bytes]:
    """Stored chunks by ID with their bytes (files of one chunk each: under the minimum chunk size)."""
    src = tmp_path / "src"
    src.mkdir()
    for i in range(count):
        (src / f"f{i:02}").write_bytes(os.urandom(50))
    store.snapshot(src, "run-1")
    entries = store.repo.read_tree(store.get("run-1").root)
    assert all(len(e.chunks) == 1 for e in entries)
    return {e.chunks[0]: (src / e.name).read_bytes() for e in entries}


@contextmanager
def _reads_held_back(store: Store, key: str | None = None) -> Iterator[threading.Event]:
    """The backend's reads (of ``key`` only, if given) wait until the block ends, or until the
    event it gives is set."""
    release = threading.Event()
    backend = store.repo.backend
    real_get = backend.get

    def get(k: str, offset: int = 0, length: int | None = None) -> bytes:
        if key is None or k == key:
            assert release.wait(30)
        return real_get(k, offset, length)

    backend.get = get  # type: ignore[method-assign]
    try:
        yield release
    finally:
        release.set()


def test_chunks_fetched_ahead_are_the_stored_bytes_held_once_and_bounded(
    store: Store, tmp_path: Path
) -> None:
    chunks = _chunks(store, tmp_path)
    ahead = ChunksAhead(store.repo, max_bytes=10 * 50)
    ids = sorted(chunks)
    assert ahead.wants(ids)
    ahead.fetch(store.repo.locate(ids).values())
    got = ahead.take(ids)  # waits for the fetch
    assert 0 < len(got) <= 10 and all(chunks[c] == data for c, data in got.items())
    assert ahead.held_bytes == 0 and ahead.take(ids) == {}  # each is taken once


def test_a_corrupt_chunk_is_not_held_and_the_others_are(store: Store, tmp_path: Path) -> None:
    chunks = _chunks(store, tmp_path)
    locations = store.repo.locate(chunks)
    bad = sorted(chunks)[7]
    loc = locations[bad]
    pack = tmp_path / "repo" / pack_key(loc.pack_id)
    raw = bytearray(pack.read_bytes())
    raw[loc.offset + loc.length // 2] ^= 0x01
    pack.write_bytes(bytes(raw))
    ahead = ChunksAhead(store.repo)
    ahead.fetch(locations.values())
    got = ahead.take(chunks)
    assert bad not in got and got == {c: data for c, data in chunks.items() if c != bad}
    assert ahead.wants([bad])  # its reader fetches it itself (and reports it)


def test_a_chunk_is_handed_over_as_soon_as_it_is_verified(store: Store, tmp_path: Path) -> None:
    """Chunks of two packs fetched in one batch: the chunks of the pack read first are taken while
    the read of the other pack has not returned yet."""
    first = _chunks(store, tmp_path, count=5)
    src = tmp_path / "src2"
    src.mkdir()
    for i in range(5):
        (src / f"g{i}").write_bytes(os.urandom(50))
    store.snapshot(src, "run-2")  # its own pack
    second = {e.chunks[0] for e in store.repo.read_tree(store.get("run-2").root)}
    locations = store.repo.locate([*first, *second])
    packs = sorted({loc.pack_id for loc in locations.values()})
    assert len(packs) == 2
    early = [c for c, loc in locations.items() if loc.pack_id == packs[0]]  # fetched first: (pack, offset) order
    with _reads_held_back(store, pack_key(packs[1])) as release:
        ahead = ChunksAhead(store.repo)
        ahead.fetch(locations.values())
        got = ahead.take(early)  # returns while the other pack's read is held back
        assert set(got) == set(early) and not release.is_set()
    late = [c for c in locations if c not in early]
    assert set(ahead.take(late)) == set(late)


def test_a_take_that_may_not_wait_gives_what_is_held_and_leaves_the_rest(
    store: Store, tmp_path: Path
) -> None:
    """A background task must not wait for a fetch queued behind it on the same two threads: it
    takes what is held and fetches the rest itself."""
    chunks = _chunks(store, tmp_path, count=6)
    locations = store.repo.locate(chunks)
    with _reads_held_back(store):
        ahead = ChunksAhead(store.repo)
        ahead.fetch(locations.values())
        assert ahead.take(chunks, wait=False) == {}  # all pending: nothing waited for
    assert set(ahead.take(chunks)) == set(chunks)


def test_closing_the_store_waits_for_what_it_fetches_ahead(tmp_path: Path, cas_home: Path) -> None:
    """Work ahead of reads runs on threads the whole process shares; a fetch still under way when
    its store was closed went on through the closed index and backend (a lookup on a connection
    closed under it crashed the interpreter). Closing waits for it, and nothing reaches the
    backend once it is closed."""
    store = Store.open(str(tmp_path / "repo"), index=f"sqlite:///{tmp_path / 'index.sqlite'}", **SMALL_CHUNKS)
    chunks = _chunks(store, tmp_path)
    locations = store.repo.locate(sorted(chunks)).values()
    backend = store.repo.backend
    real_get, real_close = backend.get, backend.close
    entered, release, closed = threading.Event(), threading.Event(), threading.Event()
    after_close: list[str] = []

    def get(key: str, offset: int = 0, length: int | None = None) -> bytes:
        if closed.is_set():
            after_close.append(key)
        entered.set()
        assert release.wait(30)
        return real_get(key, offset, length)

    def close() -> None:
        closed.set()
        real_close()

    backend.get = get  # type: ignore[method-assign]
    backend.close = close  # type: ignore[method-assign]
    try:
        ChunksAhead(store.repo).fetch(locations)
        assert entered.wait(30)  # the fetch is reading
        closer = threading.Thread(target=store.close)
        closer.start()
        closer.join(0.5)
        assert closer.is_alive() and not closed.is_set()  # waiting for the fetch
    finally:
        release.set()
    closer.join(30)
    assert not closer.is_alive() and closed.is_set()
    assert after_close == []
