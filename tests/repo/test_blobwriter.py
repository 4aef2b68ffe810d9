"""cas/repo/blobwriter.py: what the writer holds while blobs wait, and that they arrive whole."""

from __future__ import annotations

import os

import pytest

from cas import Store
from cas.format.hashing import hexdigest
from cas.format.keys import pack_key
from cas.repo.blobwriter import BlobWriter
from cas.types import BlobKind
from tests.engine import object_file


def test_queued_chunks_do_not_keep_their_read_block_alive(store: Store) -> None:
    # A chunk handed over as a view of a large read block is copied: the block can be reused (or
    # freed) at once, while the chunk waits to be deduplicated and encoded.
    block = bytearray(os.urandom(1 << 20))
    expected = {}
    with BlobWriter(store.repo) as writer:
        view = memoryview(block)
        for i in range(4):
            piece = view[i * 5000 : (i + 1) * 5000].toreadonly()
            expected[hexdigest(piece)] = bytes(piece)
            writer.add(hexdigest(piece), BlobKind.DATA, piece)
        del piece, view
        del block[:]  # BufferError if the writer still held a view of it
        writer.flush()
    for blob_id, data in expected.items():
        assert store.repo.read_blob(blob_id) == data


@pytest.mark.parametrize("packs", [1, 3])
def test_blobs_written_through_pack_files_read_back(either_store: Store, packs: int) -> None:
    # Packs are built in temporary files and uploaded from them, encrypted or not; several packs
    # in flight at once when the pack size is small.
    size = (1 << 20) * packs  # the test stores' pack size is 1 MiB
    blobs = [os.urandom(50_000) for _ in range(size // 50_000 + 1)]
    with BlobWriter(either_store.repo) as writer:
        for data in blobs:
            writer.add(hexdigest(data), BlobKind.DATA, data)
        writer.flush()
    assert writer.stats.packs >= packs
    for data in blobs:
        assert either_store.repo.read_blob(hexdigest(data)) == data
    on_backend = sum(1 for _ in either_store.repo.backend.list("data/"))
    assert on_backend == writer.stats.packs == len(either_store.repo.index.pack_rows())


@pytest.mark.parametrize("damage", [None, "truncate", "flip"])
def test_a_pack_already_stored_is_kept_if_whole_and_replaced_if_damaged(
    either_store: Store, damage: str | None
) -> None:
    # The same blobs written again make the same pack (same name): the object found under it is
    # compared with the pack file and kept if identical, replaced if it is a damaged copy.
    blobs = [os.urandom(30_000) for _ in range(5)]

    def write() -> list[str]:
        with BlobWriter(either_store.repo, dedup=False) as writer:
            for data in blobs:
                writer.add(hexdigest(data), BlobKind.DATA, data)
            writer.flush()
        return sorted({loc.pack_id for loc in writer.written})

    packs = write()
    assert len(packs) == 1
    path = object_file(either_store, pack_key(packs[0]))
    original = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(original[: len(original) // 2])
    elif damage == "flip":
        path.write_bytes(original[:100] + bytes([original[100] ^ 1]) + original[101:])
    before = path.stat().st_mtime_ns
    assert write() == packs
    stored = path.read_bytes()
    if damage is None:
        assert path.stat().st_mtime_ns == before  # left as it was
    else:
        assert len(stored) == len(original)
        assert either_store.encrypted or stored == original  # sealed again: a new nonce
    assert either_store.verify(read_data=True).ok
    for data in blobs:
        assert either_store.repo.read_blob(hexdigest(data)) == data
