"""cas/repo/packfile.py: a pack built in a temporary file is byte for byte the pack built in memory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cas.format.hashing import hexdigest
from cas.format.packs import PackBuilder, split_pack
from cas.repo import packfile
from cas.repo.packfile import PackFile
from cas.types import BlobKind, Codec

blobs = st.lists(
    st.tuples(st.binary(max_size=3000), st.sampled_from(list(BlobKind)), st.sampled_from(list(Codec))),
    max_size=20,
)


@settings(max_examples=100, deadline=None)
@given(blobs=blobs, write_block=st.integers(1, 10_000))
def test_a_pack_file_holds_the_bytes_and_name_of_the_pack_built_in_memory(
    blobs: list[tuple[bytes, BlobKind, Codec]], write_block: int
) -> None:
    # Small blobs are gathered and written together, large ones at once: at any threshold the
    # file holds the same bytes as the buffer.
    in_memory, in_file = PackBuilder(), PackFile()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(packfile, "_WRITE_BLOCK", write_block)
        for payload, kind, codec in blobs:
            blob_id = hexdigest(payload + bytes([kind]))
            in_memory.add(blob_id, kind, codec, payload, len(payload) + 1)
            in_file.add(blob_id, kind, codec, payload, len(payload) + 1)
        pack_id, f, entries = in_file.seal()
    expected_id, expected, expected_entries = in_memory.seal()
    with f:
        data = f.read()
    assert data == bytes(expected)
    assert pack_id == expected_id == hexdigest(data)
    assert in_file.size == len(data)
    assert entries == expected_entries == split_pack(data)


def test_discarding_an_unsealed_pack_closes_its_file() -> None:
    pack = PackFile()
    big = bytes(packfile._WRITE_BLOCK)  # written to the file at once
    pack.add(hexdigest(big), BlobKind.DATA, Codec.RAW, big, len(big))
    f = pack._file
    assert f is not None and not f.closed
    pack.discard()
    assert f.closed
    PackFile().discard()  # nothing written: nothing to close


def test_a_pack_for_a_staging_directory_is_built_there_without_a_name(tmp_path: Path) -> None:
    pack = PackFile(str(tmp_path))
    payload = b"p" * 1000
    pack.add(hexdigest(payload), BlobKind.DATA, Codec.RAW, payload, len(payload))
    _pack_id, f, _entries = pack.seal()
    with f:
        st = os.fstat(f.fileno())
        assert st.st_nlink == 0 and st.st_dev == os.stat(tmp_path).st_dev
    assert list(tmp_path.iterdir()) == []
