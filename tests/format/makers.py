"""Archives made by the tools that make them in the wild (zipfile, tarfile, the safetensors library),
and the member extents those tools report, for the chunker's tests."""

from __future__ import annotations

import ctypes
import io
import json
import struct
import tarfile
import zipfile

Members = list[tuple[str, bytes]]


class Unseekable(io.RawIOBase):
    """A write-only stream that cannot seek: zipfile then writes data descriptors."""

    def __init__(self) -> None:
        self.buf = io.BytesIO()

    def writable(self) -> bool:
        return True

    def write(self, b: bytes) -> int:  # type: ignore[override]
        return self.buf.write(b)


def make_zip(members: Members, method: int = zipfile.ZIP_DEFLATED, *, streamed: bool = False,
             align: int = 0) -> bytes:
    """A zip by ``zipfile``; ``streamed``: written to an unseekable stream (data descriptors);
    ``align``: each member's data padded (in its local header's extra field) to that alignment,
    as ``torch.save`` does with 64."""
    out: io.BytesIO | Unseekable = Unseekable() if streamed else io.BytesIO()
    with zipfile.ZipFile(out, "w", method) as zf:  # type: ignore[arg-type]
        for name, data in members:
            info = zipfile.ZipInfo(name, date_time=(2024, 1, 2, 3, 4, 6))
            info.compress_type = method
            if align:
                data_at = zf.fp.tell() + 30 + len(name.encode()) + 4  # type: ignore[union-attr]
                pad = -data_at % align
                info.extra = struct.pack("<HH", 0x4246, pad) + b"\0" * pad
            zf.writestr(info, data)
    return out.buf.getvalue() if isinstance(out, Unseekable) else out.getvalue()


def zip_bounds(data: bytes) -> tuple[list[int], int]:
    """The members' local header offsets (sorted) and the central directory's offset, per zipfile."""
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return sorted(i.header_offset for i in zf.infolist()), zf.start_dir  # type: ignore[attr-defined]


def make_tar(members: Members, fmt: int = tarfile.PAX_FORMAT) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=fmt) as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 1_700_000_000
            tf.addfile(info, io.BytesIO(data))
    return out.getvalue()


def tar_bounds(data: bytes) -> tuple[list[int], int]:
    """Where each member's first header starts, and where the end-of-archive blocks start, per tarfile."""
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        members = tf.getmembers()
    last = members[-1]
    return [m.offset for m in members], last.offset_data + -(-last.size // 512) * 512


def make_safetensors(tensors: Members) -> bytes:
    """A safetensors file written by the ``safetensors`` library (its raw ``serialize``)."""
    import safetensors

    if not hasattr(safetensors, "TensorSpec"):  # before 0.8: raw bytes in dicts
        raw = {name: {"dtype": "uint8", "shape": [len(data)], "data": data} for name, data in tensors}
        return bytes(safetensors.serialize(raw, metadata={"format": "test"}))  # type: ignore[arg-type]
    buffers = {name: ctypes.create_string_buffer(data, len(data)) for name, data in tensors}
    specs = {
        name: safetensors.TensorSpec(dtype="uint8", shape=[len(data)], data_ptr=ctypes.addressof(buffers[name]),
                                     data_len=len(data))
        for name, data in tensors
    }
    return bytes(safetensors.serialize(specs, metadata={"format": "test"}))


def safetensors_by_hand(tensors: Members, *, pad_to: int = 8) -> bytes:
    """The documented layout: u64 little-endian header length, JSON header, tensor bytes."""
    header: dict[str, object] = {}
    at = 0
    for name, data in tensors:
        header[name] = {"dtype": "U8", "shape": [len(data)], "data_offsets": [at, at + len(data)]}
        at += len(data)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % pad_to)
    return struct.pack("<Q", len(text)) + text + b"".join(data for _, data in tensors)


def safetensors_bounds(data: bytes) -> tuple[list[int], int]:
    """The tensors' starts (non-empty ones, sorted) and the header's end, from the header itself."""
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    spans = sorted(v["data_offsets"] for k, v in header.items() if k != "__metadata__")
    return [8 + n + a for a, b in spans if b > a], 8 + n
