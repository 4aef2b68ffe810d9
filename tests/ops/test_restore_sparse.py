"""Sparse files restore sparse: runs of zeros come back as holes, and the bytes are the same."""

from __future__ import annotations

import os
from pathlib import Path

from tests.hostile.test_inputs import Cas

GiB = 1 << 30


def _same_bytes(a: Path, b: Path) -> bool:
    """Byte for byte, a block at a time (a compare, not two hashes of a GiB)."""
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            block = fa.read(1 << 22)
            if block != fb.read(1 << 22):
                return False
            if not block:
                return True


def test_a_sparse_file_restores_with_its_holes(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    sparse = src / "sparse.img"
    with open(sparse, "wb") as f:
        f.write(os.urandom(10_000))
        f.seek(GiB // 2)
        f.write(os.urandom(300_000))
        f.truncate(GiB)  # ends in a hole
    (src / "zeros-then-data.bin").write_bytes(bytes(9 << 20) + b"tail")  # written zeros: also restored as holes
    st = os.stat(sparse)
    if st.st_blocks * 512 > 64 << 20:
        import pytest

        pytest.skip("the file system under tmp_path does not keep holes")
    cas = Cas(tmp_path)
    cas.ok("snapshot", str(src), "-e", "run-1")
    cas.ok("restore", "run-1", str(tmp_path / "dest"))
    restored = tmp_path / "dest" / "sparse.img"
    assert restored.stat().st_size == GiB
    assert restored.stat().st_blocks * 512 < 64 << 20, f"{restored.stat().st_blocks * 512} bytes allocated"
    assert _same_bytes(restored, sparse)
    other = tmp_path / "dest" / "zeros-then-data.bin"
    assert other.read_bytes() == bytes(9 << 20) + b"tail"
    assert other.stat().st_blocks * 512 < 4 << 20
