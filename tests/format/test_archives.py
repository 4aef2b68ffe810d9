"""Reading archive layouts from headers: real zips, tars and safetensors files, and hostile ones."""

from __future__ import annotations

import io
import itertools
import random
import struct
import tarfile
import zipfile

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cas.format.archives import DIRECTORY, MAX_MEMBERS, Member, read_layout
from tests.format.makers import (
    make_safetensors,
    make_tar,
    make_zip,
    safetensors_bounds,
    safetensors_by_hand,
    tar_bounds,
    zip_bounds,
)


def layout(data: bytes) -> list[Member] | None:
    stream = io.BytesIO(data)
    stream.seek(0)
    found = read_layout(stream, len(data))
    assert stream.tell() == 0, "the stream is returned where it was"
    if found is not None:
        assert found[0].start == 0 and found[-1].end == len(data)
        assert all(a.end == b.start for a, b in itertools.pairwise(found))
    return found


def members(n: int = 12, seed: int = 0, big: int = 3000) -> list[tuple[str, bytes]]:
    rng = random.Random(seed)
    return [(f"pkg/dir{i % 3}/file{i}.py", rng.randbytes(rng.randrange(0, big))) for i in range(n)]


# -- real archives --------------------------------------------------------------------------------


@pytest.mark.parametrize("method", [zipfile.ZIP_DEFLATED, zipfile.ZIP_STORED])
@pytest.mark.parametrize("streamed", [False, True], ids=["seekable", "data-descriptors"])
def test_zip_members_are_where_zipfile_says(method: int, streamed: bool) -> None:
    data = make_zip(members(), method, streamed=streamed)
    starts, directory_at = zip_bounds(data)
    found = layout(data)
    assert found is not None
    assert [m.start for m in found] == [*starts, directory_at]
    assert found[-1].tag == DIRECTORY and all(m.tag != DIRECTORY for m in found[:-1])


def test_torch_layout_members_hold_their_aligned_data() -> None:
    tensors = [(f"archive/data/{i}", random.Random(i).randbytes(1000 + 37 * i)) for i in range(10)]
    data = make_zip([("archive/data.pkl", b"\x80\x02}q\x00."), *tensors], zipfile.ZIP_STORED, align=64)
    found = layout(data)
    assert found is not None
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        for info in zf.infolist():
            data_at = info.header_offset + 30 + len(info.filename) + len(info.extra)
            assert data_at % 64 == 0
            (member,) = [m for m in found if m.start == info.header_offset]
            assert member.end >= data_at + info.compress_size


def test_zip64_end_records_and_offsets_are_followed() -> None:
    data = _as_zip64(make_zip(members(5)))
    with zipfile.ZipFile(io.BytesIO(data)) as zf:  # zipfile agrees it is a valid zip64 archive
        assert zf.testzip() is None
    starts, directory_at = zip_bounds(data)
    found = layout(data)
    assert found is not None and [m.start for m in found] == [*starts, directory_at]


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_tar_members_are_where_tarfile_says(fmt: int) -> None:
    named = members() if fmt == tarfile.USTAR_FORMAT else [("long/" * 30 + n, d) for n, d in members()]
    data = make_tar(named, fmt)
    starts, end = tar_bounds(data)
    found = layout(data)
    assert found is not None
    assert [m.start for m in found] == [*starts, end]
    assert found[-1].tag == DIRECTORY


def test_tar_of_a_real_tree_with_directories_and_links(tmp_path) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path / "tree"
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "b" / "f.txt").write_bytes(b"x" * 5000)
    (root / "a" / "g.bin").write_bytes(random.Random(1).randbytes(700))
    (root / "link").symlink_to("a/g.bin")
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tf:
        tf.add(root, arcname="tree")
    data = out.getvalue()
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        starts = [m.offset for m in tf.getmembers()]
    found = layout(data)
    assert found is not None and [m.start for m in found[:-1]] == starts


def test_safetensors_by_the_library() -> None:
    data = make_safetensors([("w", b"\1" * 4000), ("empty", b""), ("b", b"\2" * 12)])
    starts, header_end = safetensors_bounds(data)
    found = layout(data)
    assert found is not None
    assert [m.start for m in found] == [0, *starts]
    assert found[0] == Member(0, header_end, DIRECTORY)


def test_safetensors_by_the_documented_format() -> None:
    data = safetensors_by_hand([("a", b"x" * 100), ("b", b"y" * 50)])
    assert [m.start for m in layout(data) or []] == [0, *safetensors_bounds(data)[0]]


def test_other_content_is_not_an_archive() -> None:
    rng = random.Random(3)
    for data in (rng.randbytes(100_000), b"PK\x03\x04" + rng.randbytes(10_000), b"\0" * 4096, b""):
        assert layout(data) is None


# -- hostile archives -------------------------------------------------------------------------------


def _patch(data: bytes, at: int, fmt: str, *values: int) -> bytes:
    out = bytearray(data)
    struct.pack_into(fmt, out, at, *values)
    return bytes(out)


def _end_record(data: bytes) -> int:
    return data.rfind(b"PK\x05\x06")


def test_zip_with_two_entries_at_one_offset_is_refused() -> None:
    data = make_zip(members(4))
    second = data.find(b"PK\x01\x02", data.find(b"PK\x01\x02") + 4)
    assert layout(_patch(data, second + 42, "<I", 0)) is None


@pytest.mark.parametrize("field,value", [
    (10, 0xFFFF),  # entries: absurd (and no zip64 record)
    (10, 1000),  # entries: more than the directory holds
    (12, 0x7FFFFFFF),  # directory size
    (16, 3),  # directory offset
    (4, 1),  # a split archive
])
def test_zip_with_an_end_record_that_does_not_add_up_is_refused(field: int, value: int) -> None:
    data = make_zip(members(4))
    fmt = "<H" if field in (4, 6, 8, 10) else "<I"
    if field == 10:
        data = _patch(data, _end_record(data) + 8, "<H", value)
    assert layout(_patch(data, _end_record(data) + field, fmt, value)) is None


def test_zip_member_offset_without_a_local_header_is_refused() -> None:
    data = make_zip(members(4))
    first_entry = data.find(b"PK\x01\x02")
    assert layout(_patch(data, first_entry + 42, "<I", 7)) is None


def test_zip64_locator_pointing_anywhere_is_refused() -> None:
    data = _as_zip64(make_zip(members(3)))
    locator = data.rfind(b"PK\x06\x07")
    for target in (0, 2**63, len(data) - 30):
        assert layout(_patch(data, locator + 8, "<Q", target)) is None


def test_zip_claiming_a_huge_member_count_is_refused_at_once() -> None:
    data = _as_zip64(make_zip(members(3)))
    record = data.rfind(b"PK\x06\x06")
    hostile = _patch(data, record + 24, "<QQ", MAX_MEMBERS + 1, MAX_MEMBERS + 1)
    stream = _Counting(hostile)
    assert read_layout(stream, len(hostile)) is None
    assert stream.read_bytes < 70_000  # refused from the end records, not by walking the directory


class _Counting(io.BytesIO):
    """A stream that counts the bytes read from it."""

    read_bytes = 0

    def read(self, n: int | None = -1) -> bytes:  # type: ignore[override]
        data = super().read(n)
        self.read_bytes += len(data)
        return data


def test_tar_with_a_bad_checksum_or_absurd_size_is_refused() -> None:
    data = make_tar(members(4))
    second = tar_bounds(data)[0][1]
    assert layout(_patch(data, second + 148, "8s", b"0000000\0")) is None
    absurd = bytearray(data)
    absurd[second + 124 : second + 136] = b"77777777777\0"
    checksum = sum(absurd[second : second + 148]) + 256 + sum(absurd[second + 156 : second + 512])
    absurd[second + 148 : second + 156] = b"%06o\0 " % checksum
    assert layout(bytes(absurd)) is None


@pytest.mark.parametrize("case", ["overlap", "gap", "short", "long", "not-json", "deep", "huge-header",
                                  "bad-offsets", "not-object"])
def test_hostile_safetensors_is_refused(case: str) -> None:
    good = safetensors_by_hand([("a", b"x" * 100), ("b", b"y" * 50)])
    n = struct.unpack("<Q", good[:8])[0]
    body = good[8 + n :]

    def with_header(header: bytes, data: bytes = body) -> bytes:
        return struct.pack("<Q", len(header)) + header + data

    hostile = {
        "overlap": with_header(b'{"a":{"data_offsets":[0,100]},"b":{"data_offsets":[50,150]}}'),
        "gap": with_header(b'{"a":{"data_offsets":[0,90]},"b":{"data_offsets":[100,150]}}'),
        "short": good[:-1],
        "long": good + b"\0",
        "not-json": with_header(b'{"a": nope}'),
        "deep": with_header(b"{" + b'"a":[' * 50_000 + b"]" * 50_000 + b"}"),
        "huge-header": struct.pack("<Q", 2**62) + good[8:],
        "bad-offsets": with_header(b'{"a":{"data_offsets":[100,0]},"b":{"data_offsets":[true,150]}}'),
        "not-object": with_header(b'["a","b"]'),
    }[case]
    assert layout(hostile) is None


# -- any damage: never an error, always a tiling or nothing -------------------------------------------


@st.composite
def archives(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["zip", "stored-zip", "streamed-zip", "aligned-zip", "tar", "gnu-tar",
                                 "safetensors"]))
    sizes = draw(st.lists(st.integers(0, 2000), min_size=1, max_size=12))
    rng = random.Random(draw(st.integers(0, 2**32)))
    content = [(f"m{i}/{'n' * rng.randrange(1, 120)}", rng.randbytes(s)) for i, s in enumerate(sizes)]
    if kind == "tar":
        return make_tar(content)
    if kind == "gnu-tar":
        return make_tar(content, tarfile.GNU_FORMAT)
    if kind == "safetensors":
        return safetensors_by_hand(content)
    method = zipfile.ZIP_DEFLATED if kind == "zip" else zipfile.ZIP_STORED
    return make_zip(content, method, streamed=kind == "streamed-zip", align=64 if kind == "aligned-zip" else 0)


@st.composite
def damaged(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(archives()))
    how = draw(st.sampled_from(["truncate", "flip", "splice", "none"]))
    if how == "truncate":
        del data[draw(st.integers(0, len(data))) :]
    elif how == "flip":
        for _ in range(draw(st.integers(1, 8))):
            at = draw(st.integers(0, len(data) - 1))
            data[at] = draw(st.integers(0, 255))
    elif how == "splice":
        at = draw(st.integers(0, len(data)))
        data[at:at] = draw(st.binary(min_size=1, max_size=64))
    return bytes(data)


@settings(max_examples=300, deadline=None)
@given(data=damaged())
def test_damaged_archives_give_a_tiling_or_nothing(data: bytes) -> None:
    stream = _Counting(data)
    found = read_layout(stream, len(data))  # never raises
    if found is not None:
        assert found[0].start == 0 and found[-1].end == len(data)
        assert all(a.end == b.start for a, b in itertools.pairwise(found))


def _as_zip64(data: bytes) -> bytes:
    """The same archive with zip64 end records and every central directory offset in a zip64 extra
    field (as writers do past 4 GiB), which zipfile reads."""
    end = _end_record(data)
    _, _, _, count, _size, directory_at = struct.unpack_from("<HHHHII", data, end + 4)
    entries, pos = [], directory_at
    for _ in range(count):
        name_len, extra_len, comment_len = struct.unpack_from("<HHH", data, pos + 28)
        entry = bytearray(data[pos : pos + 46 + name_len + extra_len + comment_len])
        (offset,) = struct.unpack_from("<I", entry, 42)
        struct.pack_into("<I", entry, 42, 0xFFFFFFFF)
        extra = struct.pack("<HHQ", 1, 8, offset)
        struct.pack_into("<H", entry, 30, extra_len + len(extra))
        at = 46 + name_len + extra_len
        entries.append(bytes(entry[:at]) + extra + bytes(entry[at:]))
        pos += 46 + name_len + extra_len + comment_len
    directory = b"".join(entries)
    z64_at = directory_at + len(directory)
    record = b"PK\x06\x06" + struct.pack("<QHHIIQQQQ", 44, 45, 45, 0, 0, count, count, len(directory), directory_at)
    locator = b"PK\x06\x07" + struct.pack("<IQI", 0, z64_at, 1)
    eocd = b"PK\x05\x06" + struct.pack("<HHHHIIH", 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    return data[:directory_at] + directory + record + locator + eocd
