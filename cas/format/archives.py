"""Where the members of an archive lie: zip, uncompressed tar and safetensors, read from headers only.

:func:`read_layout` recognises a file by its content (magic bytes and a structure that parses
completely), never by its name, and describes it as :class:`Member` extents that tile the file
from its first byte to its last:

* **zip** (wheels, jars, ``.pt`` from ``torch.save``, ``.npz``, ``.keras``): the file starts with a
  local file header; the end-of-central-directory record (and the zip64 records when present) is
  found in the last 64 KiB, the central directory is read and gives each member's local header
  offset, and every one of those offsets must hold a local header signature. A member is its local
  header, data and data descriptor (everything up to the next member); the central directory with
  the end records is one extent. Zips with data before the first member (self-extracting
  archives), split archives and directories that are not immediately before the end records are
  not recognised.
* **tar** (ustar, GNU and pax; uncompressed): every 512-byte header must carry the ``ustar`` magic
  and a correct checksum. A member is its header, its data padded to 512 bytes, and the pax or GNU
  long-name headers before it; the end-of-archive blocks and anything after them is one extent.
  GNU sparse members (type ``S``) and members whose size only a pax record gives are not followed,
  so such tars are not recognised.
* **safetensors**: an 8-byte little-endian header length, a JSON object header, then the tensors,
  whose ``data_offsets`` must tile the data area exactly (no gaps, no overlaps, ending at the end of
  the file), as the format requires. The header is one extent, each non-empty tensor one more.

Work and memory are bounded whatever the input: at most :data:`MAX_MEMBERS` members, a zip
central directory of at most :data:`MAX_ZIP_DIRECTORY` bytes, a safetensors header of at most
:data:`MAX_SAFETENSORS_HEADER` bytes; nothing is decompressed and member data is never read. The
stream must be seekable (it is read with seeks and short reads, and left where it was). Anything
unexpected gives ``None``: the caller then cuts the file without regard to its structure.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from typing import BinaryIO

from cas.format import jsondoc

MAX_MEMBERS = 250_000
"""More members than this and the file is treated as unstructured (bounds the layout's memory)."""
MAX_ZIP_DIRECTORY = 32 * 1024 * 1024
"""A zip's central directory is read whole to parse it; larger ones are not followed."""
MAX_SAFETENSORS_HEADER = 16 * 1024 * 1024
"""The JSON header of a safetensors file is read whole; larger ones are not followed."""

DIRECTORY = -1
"""The ``tag`` of an extent that is the archive's own header or directory, not a member."""

_ZIP_LOCAL = b"PK\x03\x04"
_ZIP_CENTRAL = b"PK\x01\x02"
_ZIP_END = b"PK\x05\x06"
_ZIP64_END = b"PK\x06\x06"
_ZIP64_LOCATOR = b"PK\x06\x07"
_ZIP_END_SIZE = 22
_ZIP64_LOCATOR_SIZE = 20
_ZIP64_END_SIZE = 56
_ZIP_CENTRAL_SIZE = 46
_U16 = 0xFFFF
_U32 = 0xFFFFFFFF

_BLOCK = 512
_TAR_EXTENDED = frozenset(b"xgLK")
"""pax and GNU long-name headers: they describe the member that follows, and belong to it."""
_TAR_NO_DATA = frozenset(b"123456")
"""Hard and symbolic links, devices, directories, FIFOs: a header without data."""


class NotArchive(Exception):
    """The content is not an archive this module follows (or not one that parses cleanly)."""


@dataclass(frozen=True, slots=True)
class Member:
    """The bytes ``[start, end)`` of one member with its headers, or of the archive's directory."""

    start: int
    end: int
    tag: int
    """A hash (64-bit BLAKE2b) of the member's name, or :data:`DIRECTORY`. Equal names, equal tags."""


def read_layout(stream: BinaryIO, size: int) -> list[Member] | None:
    """The extents of the archive in the ``size`` bytes from the stream's position, or None.

    The extents are in order and tile ``[0, size)`` exactly, offsets relative to the position the
    stream had; the stream is returned there. Read errors (``OSError``) propagate.
    """
    base = stream.tell()
    try:
        head = _read_at(stream, base, 0, min(size, _BLOCK))
        if head[:4] == _ZIP_LOCAL:
            members = _zip_layout(stream, base, size)
        elif len(head) == _BLOCK and head[257:262] == b"ustar":
            members = _tar_layout(stream, base, size)
        elif len(head) > 9 and head[8:9] == b"{":
            members = _safetensors_layout(stream, base, size)
        else:
            return None
    except (NotArchive, struct.error, OverflowError):
        return None  # (the last two only as a backstop: each parser checks lengths before it unpacks)
    finally:
        stream.seek(base)
    return members if _tiles(members, size) else None


def _tiles(members: list[Member], size: int) -> bool:
    """The contract the chunker relies on, checked rather than trusted to every parser."""
    at = 0
    for m in members:
        if m.start != at or m.end <= m.start:
            return False
        at = m.end
    return at == size


def _read_at(stream: BinaryIO, base: int, offset: int, n: int) -> bytes:
    stream.seek(base + offset)
    parts = []
    while n > 0:
        got = stream.read(n)
        if not got:
            break
        parts.append(got)
        n -= len(got)
    if n > 0:
        raise NotArchive("file ends early")
    return b"".join(parts)


def _name_tag(name: bytes) -> int:
    # A real hash: CRC-32 is linear, so the low bits of sequential names ("0001.po", "0002.po"...)
    # repeat in a pattern, and group ends chosen from them would never fall back into step.
    return int.from_bytes(hashlib.blake2b(name, digest_size=8).digest(), "little")


# -- zip ----------------------------------------------------------------------------------------


def _zip_layout(stream: BinaryIO, base: int, size: int) -> list[Member]:
    tail_len = min(size, _ZIP_END_SIZE + _U16 + _ZIP64_LOCATOR_SIZE)
    tail_at = size - tail_len
    tail = _read_at(stream, base, tail_at, tail_len)
    # The end record is the last signature whose comment length reaches exactly the end of the file.
    pos = tail.rfind(_ZIP_END)
    while pos >= 0:
        if pos + _ZIP_END_SIZE <= tail_len and pos + _ZIP_END_SIZE + _u16(tail, pos + 20) == tail_len:
            break
        pos = tail.rfind(_ZIP_END, 0, pos)
    if pos < 0:
        raise NotArchive("no end of central directory")
    end_at = tail_at + pos
    disk, directory_disk, here, total, directory_size, directory_at = struct.unpack_from("<HHHHII", tail, pos + 4)
    directory_end = end_at
    if pos >= _ZIP64_LOCATOR_SIZE and tail[pos - _ZIP64_LOCATOR_SIZE : pos - 16] == _ZIP64_LOCATOR:
        z64_disk, z64_at, disks = struct.unpack_from("<IQI", tail, pos - 16)
        if z64_disk != 0 or disks != 1 or z64_at + _ZIP64_END_SIZE > end_at - _ZIP64_LOCATOR_SIZE:
            raise NotArchive("bad zip64 locator")
        record = _read_at(stream, base, z64_at, _ZIP64_END_SIZE)
        if record[:4] != _ZIP64_END:
            raise NotArchive("no zip64 end record")
        disk, directory_disk, here, total, directory_size, directory_at = struct.unpack_from("<IIQQQQ", record, 16)
        directory_end = z64_at
    elif _U16 in (here, total) or _U32 in (directory_size, directory_at):
        raise NotArchive("zip64 values without zip64 records")
    if disk != 0 or directory_disk != 0 or here != total:
        raise NotArchive("split zip")
    if not (0 < total <= MAX_MEMBERS) or directory_size > MAX_ZIP_DIRECTORY:
        raise NotArchive("member count or directory size out of bounds")
    if directory_size < total * _ZIP_CENTRAL_SIZE or directory_at + directory_size != directory_end:
        raise NotArchive("central directory is not where the end record says")
    directory = _read_at(stream, base, directory_at, directory_size)
    starts = _zip_member_starts(directory, total, directory_at)
    offsets = sorted(starts)
    if offsets[0] != 0:
        raise NotArchive("data before the first member")
    for offset in offsets:
        if _read_at(stream, base, offset, 4) != _ZIP_LOCAL:
            raise NotArchive("a member's offset holds no local header")
    members = [Member(a, b, starts[a]) for a, b in zip(offsets, offsets[1:] + [directory_at])]
    members.append(Member(directory_at, size, DIRECTORY))
    return members


def _zip_member_starts(directory: bytes, total: int, directory_at: int) -> dict[int, int]:
    """Local header offset -> name tag, for every entry of the central directory."""
    starts: dict[int, int] = {}
    pos = 0
    for _ in range(total):
        if directory[pos : pos + 4] != _ZIP_CENTRAL or pos + _ZIP_CENTRAL_SIZE > len(directory):
            raise NotArchive("bad central directory entry")
        usize, csize = struct.unpack_from("<II", directory, pos + 20)
        name_len, extra_len, comment_len, disk = struct.unpack_from("<HHHH", directory, pos + 28)
        (offset,) = struct.unpack_from("<I", directory, pos + 42)
        name_at = pos + _ZIP_CENTRAL_SIZE
        extra_at = name_at + name_len
        pos = extra_at + extra_len + comment_len
        if pos > len(directory):
            raise NotArchive("central directory entry runs past the directory")
        if disk != 0:
            raise NotArchive("split zip")
        if offset == _U32:
            offset = _zip64_offset(directory[extra_at : extra_at + extra_len], usize == _U32, csize == _U32)
        if offset >= directory_at or offset in starts:
            raise NotArchive("member offset outside the data or shared by two entries")
        starts[offset] = _name_tag(directory[name_at:extra_at])
    if pos != len(directory):
        raise NotArchive("central directory size does not match its entries")
    return starts


def _zip64_offset(extra: bytes, has_usize: bool, has_csize: bool) -> int:
    """The local header offset from a zip64 extra field (after the sizes it holds first)."""
    pos = 0
    while pos + 4 <= len(extra):
        kind, length = struct.unpack_from("<HH", extra, pos)
        body = extra[pos + 4 : pos + 4 + length]
        pos += 4 + length
        if kind != 1:
            continue
        skip = 8 * (has_usize + has_csize)
        if len(body) < skip + 8:
            break
        (offset,) = struct.unpack_from("<Q", body, skip)
        return offset
    raise NotArchive("zip64 offset missing")


def _u16(data: bytes, pos: int) -> int:
    return data[pos] | data[pos + 1] << 8


# -- tar ------------------------------------------------------------------------------------------


def _tar_layout(stream: BinaryIO, base: int, size: int) -> list[Member]:
    members: list[Member] = []
    pos = 0
    member_at = None  # where the current member's first (extended) header is
    for _ in range(2 * MAX_MEMBERS + 2):
        if pos + _BLOCK > size:
            raise NotArchive("tar ends without its end-of-archive blocks")
        header = _read_at(stream, base, pos, _BLOCK)
        if header == bytes(_BLOCK):
            if member_at is not None:
                raise NotArchive("extended header without a member")
            members.append(Member(pos, size, DIRECTORY))
            return members
        kind, length, name = _tar_header(header)
        if member_at is None:
            member_at = pos
        blocks = 0 if kind in _TAR_NO_DATA else -(-length // _BLOCK)
        pos += _BLOCK * (1 + blocks)
        if kind in _TAR_EXTENDED:
            continue
        if pos > size:
            raise NotArchive("member runs past the end of the file")
        members.append(Member(member_at, pos, _name_tag(name)))
        member_at = None
        if len(members) > MAX_MEMBERS:
            break
    raise NotArchive("too many members or extended headers")


def _tar_header(header: bytes) -> tuple[int, int, bytes]:
    """(type byte, data length, name) of a ustar/GNU/pax header; NotArchive if it does not check."""
    if header[257:262] != b"ustar":
        raise NotArchive("not a ustar header")
    stored = _octal(header[148:156])
    unsigned = sum(header[:148]) + 8 * 32 + sum(header[156:])
    signed = unsigned - 2 * sum(b for b in header[:148] + header[156:] if b > 127)
    if stored not in (unsigned, signed):
        raise NotArchive("tar header checksum")
    kind = header[156]
    if kind == ord("S"):
        raise NotArchive("GNU sparse member")
    field = header[124:136]
    if field[0] == 0x80:  # GNU base-256 for sizes past 8 GiB
        length = int.from_bytes(field[1:], "big")
    else:
        length = _octal(field)
    name = header[:100].split(b"\0", 1)[0]
    if header[257:263] == b"ustar\0":
        prefix = header[345:500].split(b"\0", 1)[0]
        if prefix:
            name = prefix + b"/" + name
    return kind, length, name


def _octal(field: bytes) -> int:
    text = field.split(b"\0", 1)[0].strip(b" ")
    if not text:
        return 0
    try:
        return int(text, 8)
    except ValueError:
        raise NotArchive("bad octal field") from None


# -- safetensors ------------------------------------------------------------------------------------


def _safetensors_layout(stream: BinaryIO, base: int, size: int) -> list[Member]:
    (header_len,) = struct.unpack("<Q", _read_at(stream, base, 0, 8))
    if not (2 <= header_len <= MAX_SAFETENSORS_HEADER) or 8 + header_len > size:
        raise NotArchive("safetensors header length out of bounds")
    try:
        header = jsondoc.loads(_read_at(stream, base, 8, header_len))
    except ValueError:
        raise NotArchive("safetensors header is not JSON") from None
    if not isinstance(header, dict) or len(header) > MAX_MEMBERS + 1:
        raise NotArchive("safetensors header is not an object of tensors")
    tensors = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if (
            not isinstance(offsets, list) or len(offsets) != 2
            or not all(type(v) is int for v in offsets) or not 0 <= offsets[0] <= offsets[1]
        ):
            raise NotArchive("tensor without valid data_offsets")
        tensors.append((offsets[0], offsets[1], name))
    tensors.sort()
    data_at = 8 + header_len
    members = [Member(0, data_at, DIRECTORY)]
    at = 0
    for begin, end, name in tensors:
        if begin != at:
            raise NotArchive("tensors leave a gap or overlap")
        at = end
        if end > begin:
            members.append(Member(data_at + begin, data_at + end, _name_tag(name.encode("utf-8", "replace"))))
    if data_at + at != size:
        raise NotArchive("tensors do not end at the end of the file")
    return members


__all__ = ["DIRECTORY", "MAX_MEMBERS", "MAX_SAFETENSORS_HEADER", "MAX_ZIP_DIRECTORY", "Member", "read_layout"]
