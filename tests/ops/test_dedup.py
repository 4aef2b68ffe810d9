"""Deduplication: content-defined boundaries, and a second snapshot stores only what changed."""

from __future__ import annotations

import io
import os
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cas import Store
from cas.format.chunking import Chunker
from cas.format.config import RepoConfig

_CONFIG = RepoConfig.new(chunk_min=256, chunk_avg=1024, chunk_max=4096)


@pytest.fixture
def store(either_store: Store) -> Store:
    """Every test here holds for a plain and an encrypted repository (tests/conftest.py)."""
    return either_store



def _boundaries(data: bytes) -> list[int]:
    out, pos = [], 0
    for piece in Chunker(_CONFIG).chunks(io.BytesIO(data), len(data)):
        pos += len(piece)
        out.append(pos)
    return out


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32), edit_at=st.integers(0, 999), insert=st.binary(min_size=1, max_size=50))
def test_boundaries_far_from_an_edit_do_not_move(seed: int, edit_at: int, insert: bytes) -> None:
    data = random.Random(seed).randbytes(200_000)
    edited = data[:edit_at] + insert + data[edit_at:]
    before = _boundaries(data)
    after = _boundaries(edited)
    # Past the first few chunks after the edit, every boundary is the old one shifted by the insert.
    tail_before = {b + len(insert) for b in before if b > edit_at + 4 * _CONFIG.chunk_max}
    tail_after = {b for b in after if b > edit_at + len(insert) + 4 * _CONFIG.chunk_max}
    assert tail_before == tail_after


def test_chunking_streams_equal_whole_buffer_cut() -> None:
    chunker = Chunker(RepoConfig.new())
    data = random.Random(7).randbytes(40 * 1024 * 1024 + 12345)
    streamed = [len(p) for p in chunker.chunks(io.BytesIO(data), len(data))]
    whole = [len(p) for p in chunker.chunk_buffer(data)]
    assert streamed == whole
    assert sum(streamed) == len(data)


def test_second_snapshot_stores_only_new_chunks(store: Store, tmp_path: Path) -> None:
    src = tmp_path / "proj"
    src.mkdir()
    rng = random.Random(1)
    for i in range(20):
        (src / f"f{i:02d}.bin").write_bytes(rng.randbytes(20_000))
    first = store.snapshot(src, "run-41")

    changed = bytearray((src / "f07.bin").read_bytes())
    changed[10_000:10_010] = b"0123456789"
    (src / "f07.bin").write_bytes(bytes(changed))
    (src / "f08.bin").write_bytes(rng.randbytes(20_000))
    second = store.snapshot(src, "run-42")

    # Only chunks of the two changed files are new: all of f08, and of f07 the chunks around the edit.
    assert second.stats["new_bytes"] < 20_000 + 4 * 1024
    assert second.stats["new_bytes"] >= 20_000  # the fully new file
    assert store.stats().chunk_raw_bytes - first.stats["new_bytes"] == second.stats["new_bytes"]
    assert [c.path for c in store.diff("run-41", "run-42")] == ["f07.bin", "f08.bin"]


def test_identical_trees_share_everything(store: Store, tmp_path: Path) -> None:
    src = tmp_path / "proj"
    (src / "deep" / "er").mkdir(parents=True)
    (src / "deep" / "er" / "x").write_bytes(os.urandom(5000))
    a = store.snapshot(src, "a")
    b = store.snapshot(src, "b", use_files_cache=False)
    assert a.root == b.root
    assert b.stats["new_bytes"] == 0


def test_same_execution_id_identical_tree_returns_existing(store: Store, tmp_path: Path) -> None:
    import pytest

    from cas.errors import AlreadyExists

    src = tmp_path / "proj"
    src.mkdir()
    (src / "f").write_text("one")
    first = store.snapshot(src, "run-1")
    again = store.snapshot(src, "run-1")
    assert again.time_ns == first.time_ns and again.root == first.root
    (src / "f").write_text("two")
    with pytest.raises(AlreadyExists, match="different tree"):
        store.snapshot(src, "run-1")
    assert len(store.list()) == 1
