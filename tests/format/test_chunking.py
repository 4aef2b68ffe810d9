"""The chunker: every byte in exactly one chunk, chunks within limits, and cuts at archive members
that stay put when another member changes."""

from __future__ import annotations

import io
import itertools
import os
import random
import tarfile
import tempfile
import zipfile

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cas.format import chunking
from cas.format.chunking import GROUP_MAX, SMALL_MEMBER, Chunker
from cas.format.config import ChunkerName, RepoConfig
from tests.format.makers import (
    make_tar,
    make_zip,
    safetensors_bounds,
    safetensors_by_hand,
    tar_bounds,
    zip_bounds,
)
from tests.format.test_archives import archives, damaged

SMALL = RepoConfig.new(chunk_min=256, chunk_avg=1024, chunk_max=4096)
"""Small chunks, so that small archives cross every rule: groups (below 1 KiB), members alone, CDC
inside members (above 4 KiB)."""
DEFAULT = RepoConfig.new()


def cut(data: bytes, config: RepoConfig = SMALL, chunker: ChunkerName | None = None) -> list[bytes]:
    pieces = [bytes(p) for p in Chunker(config, chunker).chunks(io.BytesIO(data), len(data))]
    assert b"".join(pieces) == data
    assert all(0 < len(p) <= config.chunk_max for p in pieces)
    return pieces


def boundaries(pieces: list[bytes]) -> set[int]:
    out, at = {0}, 0
    for p in pieces:
        at += len(p)
        out.add(at)
    return out


def new_bytes(old: list[bytes], new: list[bytes]) -> int:
    seen = set(old)
    return sum(len(p) for p in set(new) - seen)


# -- round trips ------------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=20_000), chunker=st.sampled_from(ChunkerName))
def test_any_bytes_round_trip(data: bytes, chunker: ChunkerName) -> None:
    cut(data, SMALL, chunker)


@settings(max_examples=200, deadline=None)
@given(data=damaged(), chunker=st.sampled_from(ChunkerName))
def test_any_archive_valid_or_damaged_round_trips(data: bytes, chunker: ChunkerName) -> None:
    cut(data, SMALL, chunker)


@settings(max_examples=100, deadline=None)
@given(data=archives(), read_size=st.integers(1, 700))
def test_short_reads_change_nothing(data: bytes, read_size: int) -> None:
    class Trickle(io.BytesIO):
        def read(self, n: int | None = -1) -> bytes:  # type: ignore[override]
            return super().read(min(n, read_size) if n is not None and n >= 0 else read_size)

    pieces = [bytes(p) for p in Chunker(SMALL).chunks(Trickle(data), len(data))]
    assert pieces == cut(data)


def test_a_file_that_changes_size_after_its_layout_was_read_still_round_trips() -> None:
    data = make_zip([(f"f{i}", random.Random(i).randbytes(3000)) for i in range(10)], zipfile.ZIP_STORED)
    for actual in (data[: len(data) // 2], data + random.Random(9).randbytes(50_000)):
        stream = io.BytesIO(actual)
        pieces = [bytes(p) for p in Chunker(SMALL).chunks(stream, len(data))]
        assert b"".join(pieces) == actual and all(len(p) <= SMALL.chunk_max for p in pieces)


def test_unseekable_streams_are_cut_plainly() -> None:
    data = make_tar([(f"f{i}", random.Random(i).randbytes(3000)) for i in range(10)])

    class Pipe(io.RawIOBase):
        def __init__(self) -> None:
            self.inner = io.BytesIO(data)

        def readable(self) -> bool:
            return True

        def read(self, n: int = -1) -> bytes:  # type: ignore[override]
            return self.inner.read(n)

    pieces = [bytes(p) for p in Chunker(SMALL).chunks(Pipe(), len(data))]  # type: ignore[arg-type]
    assert pieces == cut(data, chunker=ChunkerName.FASTCDC)


@settings(max_examples=100, deadline=None)
@given(data=st.binary(max_size=60_000) | st.integers(0, 60_000).map(lambda n: random.Random(n).randbytes(n)),
       block=st.integers(SMALL.chunk_max + 1, 3 * SMALL.chunk_max), grows=st.binary(max_size=300))
def test_files_read_in_blocks_are_cut_as_the_whole_content(data: bytes, block: int, grows: bytes) -> None:
    # Files are read straight into one buffer per block (readinto); the cuts must be those of the
    # whole content at once, as for a stream read with read(), at any block size, also when the
    # file holds more than its size hint said.
    class ReadOnly(io.RawIOBase):
        def __init__(self, inner: io.BytesIO) -> None:
            self.inner = inner

        def readable(self) -> bool:
            return True

        def read(self, n: int = -1) -> bytes:  # type: ignore[override]
            return self.inner.read(n)

    content = data + grows
    whole = [bytes(p) for p in Chunker(SMALL).chunk_buffer(content) if len(p)]
    with pytest.MonkeyPatch.context() as patch, tempfile.TemporaryFile() as f:
        patch.setattr(chunking, "_READ_BLOCK", block)
        f.write(content)
        f.flush()
        f.seek(0)
        with os.fdopen(os.dup(f.fileno()), "rb", buffering=0) as raw:
            from_file = [bytes(p) for p in Chunker(SMALL, ChunkerName.FASTCDC).chunks(raw, len(data))]
        from_read = [bytes(p) for p in Chunker(SMALL, ChunkerName.FASTCDC).chunks(ReadOnly(io.BytesIO(content)), len(data))]
    assert from_file == from_read == whole


def test_plain_content_is_cut_as_fastcdc_cuts_it() -> None:
    data = random.Random(5).randbytes(3 * 1024 * 1024)
    assert cut(data, DEFAULT) == cut(data, DEFAULT, ChunkerName.FASTCDC)


# -- where the cuts are --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["zip", "tar", "safetensors"])
def test_every_member_of_a_small_member_size_starts_a_chunk(kind: str) -> None:
    rng = random.Random(11)
    content = [(f"dir/m{i:03d}", rng.randbytes(rng.choice([10, 300, 1500, 6000, 20_000]))) for i in range(40)]
    if kind == "zip":
        data = make_zip(content, zipfile.ZIP_STORED)
        starts, directory = zip_bounds(data)
        bounds = [*starts, directory, len(data)]
    elif kind == "tar":
        data = make_tar(content)
        starts, directory = tar_bounds(data)
        bounds = [*starts, directory, len(data)]
    else:
        data = safetensors_by_hand(content)
        starts, _header_end = safetensors_bounds(data)
        bounds = [0, *starts, len(data)]
    pieces = cut(data)
    cuts = boundaries(pieces)
    small = SMALL.chunk_max // 4
    for a, b in itertools.pairwise(bounds):
        if b - a >= small:
            assert a in cuts and b in cuts, (a, b)
        else:
            assert not cuts & set(range(a + 1, b)), (a, b)  # a small member is never split


def test_small_members_share_chunks_up_to_the_cap() -> None:
    content = [(f"pkg/f{i:04d}.py", random.Random(i).randbytes(300)) for i in range(400)]
    data = make_zip(content, zipfile.ZIP_STORED)
    pieces = cut(data, DEFAULT)
    members = len(pieces) - 1  # the directory is one piece
    assert len(pieces) < 400 / 4  # about 12 members per 4 KiB
    assert all(len(p) <= GROUP_MAX for p in pieces[:members])
    assert sum(len(p) >= SMALL_MEMBER for p in pieces[:members]) >= members * 0.6


# -- the boundary property -----------------------------------------------------------------------------


@st.composite
def edits(draw: st.DrawFn) -> tuple[str, list[tuple[str, bytes]], int, bytes]:
    kind = draw(st.sampled_from(["zip", "stored-zip", "tar", "safetensors"]))
    # Mostly large members, or mostly small ones (long runs of grouped members).
    largest = draw(st.sampled_from([12_000, 900]))
    sizes = draw(st.lists(st.integers(0, largest), min_size=2, max_size=30 if largest > 1000 else 150))
    rng = random.Random(draw(st.integers(0, 2**32)))
    content = [(f"src/{i:03d}-{rng.randbytes(4).hex()}", rng.randbytes(s)) for i, s in enumerate(sizes)]
    which = draw(st.integers(0, len(content) - 1))
    old = content[which][1]
    if kind == "safetensors":  # a tensor keeps its size
        new = rng.randbytes(len(old)) if old else b""
    else:
        at = draw(st.integers(0, len(old)))
        new = old[:at] + draw(st.binary(min_size=1, max_size=300)) + old[at:]
    return kind, content, which, new


def _build(kind: str, content: list[tuple[str, bytes]]) -> tuple[bytes, list[int]]:
    """The archive and its extents' bounds (members, then directory), from the tool that reads it."""
    if kind in ("zip", "stored-zip"):
        data = make_zip(content, zipfile.ZIP_DEFLATED if kind == "zip" else zipfile.ZIP_STORED)
        starts, directory = zip_bounds(data)
        return data, [*starts, directory, len(data)]
    if kind == "tar":
        data = make_tar(content)
        starts, directory = tar_bounds(data)
        return data, [*starts, directory, len(data)]
    data = safetensors_by_hand(content)
    starts, _header_end = safetensors_bounds(data)
    return data, [0, *starts, len(data)]


@settings(max_examples=120, deadline=None)
@given(case=edits())
def test_editing_one_member_leaves_every_other_chunk_alone(case: tuple[str, list, int, bytes]) -> None:
    kind, content, which, new = case
    v1, _ = _build(kind, content)
    edited = list(content)
    edited[which] = (content[which][0], new)
    v2, bounds = _build(kind, edited)
    extents = [v2[a:b] for a, b in itertools.pairwise(bounds)]
    # What changed, by the archive's structure: v2's extents that are not extents of v1 (the edited
    # member, the directory or header), and the rest unchanged byte for byte.
    _, bounds1 = _build(kind, content)
    old_extents = {v1[a:b] for a, b in itertools.pairwise(bounds1)}
    changed = sum(len(e) for e in extents if e not in old_extents)
    stored = new_bytes(cut(v1), cut(v2))
    small = SMALL.chunk_max // 4
    # The edited member's group (and the next group, whose start may move) is the only slack.
    slack = 2 * min(GROUP_MAX, SMALL.chunk_max) if min(len(new), len(content[which][1])) < small + 1024 else 0
    # Inside a member longer than the maximum chunk, FastCDC re-cuts around the edit only.
    assert stored <= changed + slack, (stored, changed, slack)


def test_checkpoint_with_a_tenth_of_its_tensors_changed_stores_those_tensors() -> None:
    rng = random.Random(21)
    tensors = [(f"layer{i:02d}.weight", rng.randbytes(300_000)) for i in range(20)]
    changed = dict(tensors)
    for name in ("layer03.weight", "layer15.weight"):
        changed[name] = rng.randbytes(300_000)
    for build in (lambda t: make_zip(t, zipfile.ZIP_STORED, align=64), safetensors_by_hand):
        v1, v2 = build(tensors), build(list(changed.items()))
        stored = new_bytes(cut(v1, DEFAULT), cut(v2, DEFAULT))
        assert 2 * 300_000 <= stored <= 2 * 300_000 + 5_000  # the two tensors and the zip's directory
        plain = new_bytes(cut(v1, DEFAULT, ChunkerName.FASTCDC), cut(v2, DEFAULT, ChunkerName.FASTCDC))
        assert plain > stored


def test_tar_with_one_file_edited_stores_that_file() -> None:
    rng = random.Random(4)
    content = [(f"src/mod{i:03d}.py", rng.randbytes(rng.randrange(100, 30_000))) for i in range(120)]
    v1 = make_tar(content, tarfile.PAX_FORMAT)
    content[57] = (content[57][0], content[57][1] + b"# one more line\n")
    v2 = make_tar(content, tarfile.PAX_FORMAT)
    starts, _ = tar_bounds(v2)
    member = starts[58] - starts[57]
    stored = new_bytes(cut(v1, DEFAULT), cut(v2, DEFAULT))
    assert stored <= member + 2 * GROUP_MAX + 10_240  # the member, its group's neighbours, the end blocks


@pytest.mark.parametrize("kind", ["stored-zip", "tar"])
def test_an_edit_among_equal_small_members_does_not_shift_the_groups_after_it(kind: str) -> None:
    # Groups that closed at a running total would all shift by one member after the edit.
    rng = random.Random(8)
    content = [(f"locale/{i:04d}.po", rng.randbytes(300)) for i in range(1200)]  # past chunk_min
    v1, bounds1 = _build(kind, content)
    content[40] = (content[40][0], content[40][1] + b"one more line\n" * 150)
    v2, bounds = _build(kind, content)
    old_extents = {v1[a:b] for a, b in itertools.pairwise(bounds1)}
    changed = sum(b - a for a, b in itertools.pairwise(bounds) if v2[a:b] not in old_extents)
    assert new_bytes(cut(v1, DEFAULT), cut(v2, DEFAULT)) <= changed + 2 * GROUP_MAX
