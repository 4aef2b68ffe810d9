"""cas/repo/blobwriter.py: what the writer holds while blobs wait, and that they arrive whole."""

from __future__ import annotations

import os

import pytest

from cas import Store
from cas.format.hashing import hexdigest
from cas.repo.blobwriter import BlobWriter
from cas.types import BlobKind
from tests.engine import cas_home, either_store, store  # noqa: F401 - fixtures


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
def test_blobs_written_through_pack_files_read_back(either_store: Store, packs: int) -> None:  # noqa: F811
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
