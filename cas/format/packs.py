"""Pack objects: many encoded blobs in one immutable object, with a trailer that indexes them.

Layout (all integers little-endian; see docs/FORMAT.md)::

    blob 0 | blob 1 | ... | blob n-1 | trailer | footer

    trailer = b"CPTR" | version:u16 | count:u32 | count x entry
    entry   = kind:u8 | codec:u8 | id:32 bytes | offset:u64 | length:u32 | raw_length:u32
    footer  = trailer_length:u32 | b"CASPACK1"

A pack is named by the BLAKE3 of all its bytes and stored under ``data/<first 2 hex>/<hex>``.
The trailer makes every pack self-describing, so the index can be rebuilt from the backend alone.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass

from cas.errors import IntegrityError
from cas.format.compression import CODECS
from cas.format.hashing import hexdigest
from cas.types import BlobKind

PACK_VERSION = 1
MAGIC = b"CASPACK1"
TRAILER_MAGIC = b"CPTR"
KINDS = tuple(BlobKind)

_HEADER = struct.Struct("<4sHI")
_ENTRY = struct.Struct("<BB32sQII")
_FOOTER = struct.Struct("<I8s")
FOOTER_SIZE = _FOOTER.size
MAX_BLOB_SIZE = 64 * 1024 * 1024
MAX_ENTRIES = 1 << 20
_MIN_BUFFER = 1 << 20



@dataclass(frozen=True)
class PackEntry:
    id: str
    kind: int
    codec: int
    offset: int
    length: int
    raw_length: int


class PackBuilder:
    """Accumulates encoded blobs in one buffer until :meth:`seal` makes them a pack.

    The buffer is anonymous memory mapped at ``capacity`` bytes (what the pack is expected to
    reach): pages cost only once written, blobs are copied in once (a buffer grown blob by blob is
    copied again at each reallocation, with the GIL held), the sealed pack is a view of it, and the
    memory goes back to the system as soon as the last view of the pack is dropped (rather than
    staying in the heap of the process). A pack outgrowing ``capacity`` is moved to a buffer twice
    the size.
    """

    def __init__(self, capacity: int = 0) -> None:
        self._capacity = capacity
        self._buffer: mmap.mmap | None = None
        self._size = 0
        self.entries: list[PackEntry] = []

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def size(self) -> int:
        return self._size

    def add(self, blob_id: str, kind: int, codec: int, payload: bytes, raw_length: int) -> None:
        self.entries.append(PackEntry(blob_id, kind, codec, self._size, len(payload), raw_length))
        self._write(payload)

    def _write(self, data: bytes | bytearray | memoryview) -> None:
        end = self._size + len(data)
        buffer = self._buffer
        if buffer is None or end > len(buffer):
            grown = mmap.mmap(-1, max(end, self._capacity, 2 * len(buffer) if buffer is not None else 0, _MIN_BUFFER))
            if buffer is not None:
                grown[: self._size] = buffer[: self._size]
                buffer.close()  # nothing views it before :meth:`seal`
            buffer = self._buffer = grown
        buffer[self._size : end] = data
        self._size = end

    def seal(self) -> tuple[str, memoryview, list[PackEntry]]:
        """Return ``(pack_id, pack_bytes, entries)``, the bytes as a read-only view of the builder's
        one buffer (not a copy); the builder must not be used afterwards."""
        self._write(encode_trailer(self.entries))
        assert self._buffer is not None
        view = memoryview(self._buffer)[: self._size].toreadonly()
        self._buffer = None
        return hexdigest(view), view, self.entries


def encode_trailer(entries: list[PackEntry]) -> bytes:
    """The trailer and footer that end a pack whose blobs are ``entries``, in order."""
    trailer = bytearray(_HEADER.pack(TRAILER_MAGIC, PACK_VERSION, len(entries)))
    for e in entries:
        trailer += _ENTRY.pack(e.kind, e.codec, bytes.fromhex(e.id), e.offset, e.length, e.raw_length)
    trailer += _FOOTER.pack(len(trailer), MAGIC)
    return bytes(trailer)


def parse_footer(footer: bytes) -> int:
    """Length of the trailer that precedes this footer."""
    if len(footer) != FOOTER_SIZE:
        raise IntegrityError("pack is too short to hold a footer")
    length, magic = _FOOTER.unpack(footer)
    if magic != MAGIC:
        raise IntegrityError("pack footer has the wrong magic (not a cas pack, or a newer format)")
    if length < _HEADER.size or (length - _HEADER.size) % _ENTRY.size:
        raise IntegrityError(f"pack trailer length {length} is malformed")
    if (length - _HEADER.size) // _ENTRY.size > MAX_ENTRIES:
        raise IntegrityError("pack trailer lists too many blobs")
    return length


def parse_trailer(trailer: bytes, data_size: int) -> list[PackEntry]:
    """Entries of a trailer; ``data_size`` is the number of blob bytes before it.

    Every field is checked: a garbage trailer raises :class:`IntegrityError`, never anything else.
    """
    if len(trailer) < _HEADER.size:
        raise IntegrityError("pack trailer is truncated")
    magic, version, count = _HEADER.unpack_from(trailer)
    if magic != TRAILER_MAGIC:
        raise IntegrityError("pack trailer has the wrong magic")
    if version != PACK_VERSION:
        raise IntegrityError(f"pack format version {version} is not supported (this cas reads {PACK_VERSION})")
    if len(trailer) != _HEADER.size + count * _ENTRY.size:
        raise IntegrityError("pack trailer length does not match its entry count")
    entries = []
    expected_offset = 0
    for i in range(count):
        kind, codec, raw_id, offset, length, raw_length = _ENTRY.unpack_from(trailer, _HEADER.size + i * _ENTRY.size)
        if kind not in KINDS or codec not in CODECS:
            raise IntegrityError(f"pack entry {i} has an unknown kind or codec")
        if offset != expected_offset or offset + length > data_size:
            raise IntegrityError(f"pack entry {i} points outside the pack's data")
        if length > MAX_BLOB_SIZE or raw_length > MAX_BLOB_SIZE:
            raise IntegrityError(f"pack entry {i} claims an absurd size")
        expected_offset = offset + length
        entries.append(PackEntry(raw_id.hex(), kind, codec, offset, length, raw_length))
    if expected_offset != data_size:
        raise IntegrityError("pack data and trailer disagree about the data's length")
    return entries


def split_pack(data: bytes) -> list[PackEntry]:
    """Entries of a whole pack held in memory."""
    if len(data) < FOOTER_SIZE:
        raise IntegrityError("pack is too short to hold a footer")
    trailer_len = parse_footer(data[-FOOTER_SIZE:])
    data_size = len(data) - FOOTER_SIZE - trailer_len
    if data_size < 0:
        raise IntegrityError("pack trailer is longer than the pack")
    return parse_trailer(data[data_size : len(data) - FOOTER_SIZE], data_size)
