"""Range reads of stored files: the right bytes for any range, only the covering chunks fetched,
and a corrupt or lying chunk an error naming the file, never other bytes."""

from __future__ import annotations

import itertools
import os
import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backends.counting import CountingBackend
from backends.local import LocalBackend
from cas import Store
from cas.errors import ReadError
from cas.format.keys import pack_key
from cas.ops.dir_readahead import SMALL_FILE
from cas.repo import ranges
from cas.repo.ranges import RangeReader
from tests.hostile import forge

MiB = 1 << 20
_executions = itertools.count()


def _stored(store: Store, tmp_path: Path, data: bytes, name: str = "f.bin", execution: str = "run-1") -> RangeReader:
    src = tmp_path / f"src-{execution}"
    src.mkdir(exist_ok=True)
    (src / name).write_bytes(data)
    store.snapshot(src, execution)
    node = store.view().lookup(f"{execution}/{name}")
    return store.view().open(node)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    content=st.binary(min_size=0, max_size=6000),
    reads=st.lists(st.tuples(st.integers(0, 7000), st.integers(0, 3000)), max_size=12),
    sequential=st.booleans(),
    into=st.booleans(),
)
def test_any_read_returns_the_files_bytes(
    store: Store, tmp_path: Path, content: bytes, reads: list[tuple[int, int]], sequential: bool, into: bool
) -> None:
    reader = _stored(store, tmp_path, content, execution=f"run-{next(_executions)}")
    read = _read_into if into else RangeReader.read
    if sequential:  # consecutive reads from 0, as a reader walking the file does (read-ahead)
        offset = 0
        for _, length in reads:
            assert read(reader, offset, length) == content[offset : offset + length]
            offset += length
    for offset, length in reads:
        assert read(reader, offset, length) == content[offset : offset + length]


def _read_into(reader: RangeReader, offset: int, length: int) -> bytes:
    """A read through :meth:`RangeReader.read_into`, into a buffer one byte longer than asked (as
    the mount's reply buffer): the byte past the read must be left as it was."""
    buffer = bytearray(b"\xa5" * (length + 1))
    done = reader.read_into(offset, memoryview(buffer)[:length])
    assert buffer[done:] == b"\xa5" * (length + 1 - done)
    return bytes(buffer[:done])


@pytest.fixture
def counted(tmp_path: Path, cas_home: Path) -> tuple[Store, CountingBackend]:
    """A store with the default 1 MiB average chunks, no chunk cache, its backend counted."""
    backend = CountingBackend(LocalBackend(str(tmp_path / "repo")))
    s = Store.open(backend, index=f"sqlite:///{tmp_path / 'index.sqlite'}", chunk_cache=False)
    yield s, backend
    s.close()


def test_a_4_mib_read_in_the_middle_fetches_only_the_chunks_covering_it(
    counted: tuple[Store, CountingBackend], tmp_path: Path
) -> None:
    s, backend = counted
    data = random.Random(7).randbytes(48 * MiB)
    reader = _stored(s, tmp_path, data, "model.safetensors")
    offset, length = 21 * MiB + 12345, 4 * MiB
    locations = s.repo.locate(reader.entry.chunks)
    covering, position = [], 0
    for chunk_id in reader.entry.chunks:
        size = locations[chunk_id].raw_length
        if position < offset + length and position + size > offset:
            covering.append(locations[chunk_id])
        position += size
    backend.reset()

    assert reader.read(offset, length) == data[offset : offset + length]

    assert backend.calls["get"] == len(backend.gets) <= len(covering) <= 6
    fetched = sum(n for _key, _offset, n in backend.gets)
    assert fetched == sum(loc.length for loc in covering)
    assert {(pack_key(loc.pack_id), loc.offset) for loc in covering} >= {(k, o) for k, o, _n in backend.gets}


def test_sequential_reads_read_ahead_and_random_reads_do_not(
    counted: tuple[Store, CountingBackend], tmp_path: Path
) -> None:
    s, backend = counted
    data = os.urandom(24 * MiB)
    reader = _stored(s, tmp_path, data)
    backend.reset()
    out = bytearray()
    while len(out) < len(data):
        out += reader.read(len(out), 128 * 1024)  # a FUSE-sized reader walking the file
    assert out == data
    walked = backend.calls["get"]
    assert walked <= len(reader.entry.chunks) // 2, "sequential reads should fetch several chunks per get"

    # A second store on its own counter: the first reader's read-ahead, finishing in the background,
    # is not counted against the random reads.
    fresh = CountingBackend(LocalBackend(str(tmp_path / "repo")))
    with Store.open(fresh, index=f"sqlite:///{tmp_path / 'index.sqlite'}", chunk_cache=False) as again:
        reader = again.view().open(again.view().lookup("run-1/f.bin"))  # nothing held in memory
        fresh.reset()
        reader.read(3 * MiB, 1000)
        reader.read(17 * MiB, 1000)  # not where the last read ended: only its own chunk
    assert fresh.calls["get"] == 2, fresh.gets
    assert sum(n for _k, _o, n in fresh.gets) <= 2 * 4 * MiB


def test_a_corrupt_chunk_fails_the_reads_that_need_it_and_names_the_file(store: Store, tmp_path: Path) -> None:
    data = os.urandom(20_000)
    reader = _stored(store, tmp_path, data, "weights.bin")
    chunks = reader.entry.chunks
    assert len(chunks) > 4
    bad = store.repo.locate([chunks[2]])[chunks[2]]
    pack = Path(store.repo.backend.root) / pack_key(bad.pack_id)
    raw = bytearray(pack.read_bytes())
    raw[bad.offset + bad.length // 2] ^= 0xFF
    pack.write_bytes(bytes(raw))
    starts = [0]
    for c in chunks:
        starts.append(starts[-1] + store.repo.locate([c])[c].raw_length)

    reader = store.view().open(store.view().lookup("run-1/weights.bin"))
    with pytest.raises(ReadError, match="weights.bin") as info:
        reader.read(starts[2] + 1, 10)
    assert info.value.errno == 5  # EIO
    with pytest.raises(ReadError):
        reader.read(0, len(data))
    assert reader.read(starts[4], 100) == data[starts[4] : starts[4] + 100]
    # Read-ahead that meets the bad chunk does not fail a read that does not need it.
    assert reader.read(0, 10) == data[:10]
    assert reader.read(10, starts[2] - 10) == data[10 : starts[2]]


def test_a_corrupt_chunk_read_through_the_mapped_pack_fails_and_names_the_file(store: Store, tmp_path: Path) -> None:
    # Ranges of 64 KiB and more of a local pack are read as views of the pack mapped into memory:
    # a chunk damaged there is refused as one read into memory is. (Past SMALL_FILE: a small file's
    # chunks are fetched ahead with its directory's, into memory.)
    data = os.urandom(SMALL_FILE + 200_000)
    reader = _stored(store, tmp_path, data, "big.bin")
    chunks = reader.entry.chunks
    locations = store.repo.locate(chunks)
    bad = locations[chunks[len(chunks) // 2]]
    pack = Path(store.repo.backend.root) / pack_key(bad.pack_id)
    with open(pack, "r+b") as f:  # in place, as damage on the disk would be
        f.seek(bad.offset + bad.length // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))
    reader = store.view().open(store.view().lookup("run-1/big.bin"))
    with pytest.raises(ReadError, match="big.bin"):
        reader.read(0, len(data))
    with open("/proc/self/maps") as maps:
        assert str(pack) in maps.read()  # the range was read through the mapping
    first = locations[chunks[0]].raw_length
    assert reader.read(0, first) == data[:first]


def test_a_size_the_chunks_do_not_add_up_to_is_refused(store: Store) -> None:
    content = b"x" * 1000
    entry = forge.file_entry(store, "liar.bin", content, size=5000)
    forge.commit(store, "liar", forge.put_tree(store, [entry]))
    with pytest.raises(ReadError, match="liar.bin"):
        store.view().open(store.view().lookup("liar/liar.bin"))


def test_memory_held_stays_within_the_window(counted: tuple[Store, CountingBackend], tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    s, _backend = counted
    monkeypatch.setattr(ranges, "WINDOW_BYTES", 3 * MiB)
    data = os.urandom(20 * MiB)
    reader = _stored(s, tmp_path, data)
    position, largest = 0, 0
    for step in [128 * 1024] * 80 + [MiB] * 10:
        assert reader.read(position, step) == data[position : position + step]
        position += step
        largest = max(largest, reader._kept_bytes)
    chunk_max = 4 * MiB  # a read needs at most two chunks here; everything else is dropped first
    assert largest <= max(3 * MiB, 2 * chunk_max)
    assert reader.read(0, 10) == data[:10]  # dropped chunks are fetched again


def test_the_chunks_of_one_read_are_verified_on_more_than_one_thread(
    counted: tuple[Store, CountingBackend], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Decompression and hashing release the GIL: the chunks a read needs are verified on the
    background threads beside the reading one, and the read returns them all, in order."""
    import threading

    from cas.repo import reader as reader_module

    s, _backend = counted
    data = random.Random(11).randbytes(24 * MiB)
    reader = _stored(s, tmp_path, data)
    threads: list[str] = []
    real = reader_module.verify_blob

    def recording(*args: object) -> bytes:
        threads.append(threading.current_thread().name)
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(reader_module, "verify_blob", recording)
    offset = 9 * MiB + 777
    assert reader.read(offset, 5 * MiB) == data[offset : offset + 5 * MiB]
    assert len(threads) >= 4
    assert threading.current_thread().name in threads
    assert any(name.startswith("cas-readahead") for name in threads)


def test_a_read_ahead_into_a_missing_pack_does_not_fail_the_read(tmp_path: Path, cas_home: Path) -> None:
    """The chunks a read needs are intact; the read-ahead after them reaches a pack that is gone:
    the read returns its bytes, and only a read of the lost part fails, naming the file."""
    backend = LocalBackend(str(tmp_path / "repo"))
    with Store.open(backend, index=f"sqlite:///{tmp_path / 'index.sqlite'}", chunk_cache=False,
                    chunk_min=4096, chunk_avg=16384, chunk_max=65536) as s:
        rng = random.Random(3)
        head, tail = rng.randbytes(400_000), rng.randbytes(2_000_000)
        src = tmp_path / "src"
        src.mkdir()
        (src / "a.bin").write_bytes(head)
        s.snapshot(src, "run-1")  # head's chunks: the first pack
        (src / "b.bin").write_bytes(head + tail)
        s.snapshot(src, "run-2")  # tail's chunks: a pack of their own
        reader = s.view().open(s.view().lookup("run-2/b.bin"))
        first_packs = {loc.pack_id for loc in s.repo.locate(s.repo.read_tree(s.get("run-1").root)[0].chunks).values()}
        lost = {loc.pack_id for loc in s.repo.locate(reader.entry.chunks).values()} - first_packs
        assert lost
        for pack_id in lost:
            (tmp_path / "repo" / pack_key(pack_id)).unlink()

        assert reader.read(0, 1000) == head[:1000]  # its read-ahead of 1 MiB reaches the lost pack
        assert reader.read(1000, 100_000) == head[1000:101_000]
        with pytest.raises(ReadError, match="b.bin"):
            reader.read(len(head) + 500_000, 1000)
