"""A pack built in a temporary file, so a writer holds none of its packs in memory.

The writer's packs used to be built in memory: the pack being filled, plus the sealed ones waiting
for or in their upload, some 16 MiB each, were most of a snapshot's peak RSS. Here each encoded
blob is appended to an unnamed temporary file (in the system's temporary directory, ``TMPDIR``)
as it comes, and hashed on the way, so sealing adds only the trailer and the pack's name is known
without reading the bytes again. The sealed pack is the file itself, handed to the backend as a
stream (object stores upload it in parts), and its disk space goes back when the file is closed.
For a backend whose objects are files of this host (:meth:`~backends.base.Backend.staging_directory`),
the file is made there, unnamed, and the backend gives it its name: the pack's bytes are written once. The bytes of a pack being written sit in the page
cache, which the system may write out or drop, not in the writer's own memory.
"""

from __future__ import annotations

import os
import tempfile
from typing import BinaryIO

from cas.format.hashing import new_hasher
from cas.format.packs import PackEntry, encode_trailer

_WRITE_BLOCK = 1 << 20
"""Small blobs are gathered up to this many bytes, then hashed and written in one call each: a call
per blob (a pack holds some ten thousand blobs of small files) would cost more than the bytes."""


class PackFile:
    """Accumulates encoded blobs in a temporary file until :meth:`seal` makes them a pack.

    Same contract as :class:`~cas.format.packs.PackBuilder` (the same bytes for the same blobs),
    but :meth:`seal` returns a readable file positioned at the pack's start. The caller owns it
    from then on and closes it once the pack is stored; :meth:`discard` drops an unsealed pack.
    """

    def __init__(self, directory: str | None = None) -> None:
        """``directory``: where to make the file (the backend's staging directory), else ``TMPDIR``."""
        self._directory = directory
        self._file: BinaryIO | None = None
        self._hasher = new_hasher()
        self._size = 0
        self._gathered: list[bytes | memoryview] = []
        self._gathered_bytes = 0
        self.entries: list[PackEntry] = []

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def size(self) -> int:
        return self._size

    def add(self, blob_id: str, kind: int, codec: int, payload: bytes, raw_length: int) -> None:
        self.entries.append(PackEntry(blob_id, kind, codec, self._size, len(payload), raw_length))
        self._write(payload)

    def _write(self, data: bytes | memoryview) -> None:
        self._size += len(data)
        if len(data) < _WRITE_BLOCK:
            self._gathered.append(data)
            self._gathered_bytes += len(data)
            if self._gathered_bytes >= _WRITE_BLOCK:
                self._flush()
        else:
            self._flush()
            self._put(data)

    def _flush(self) -> None:
        if self._gathered:
            block = b"".join(self._gathered)
            self._gathered.clear()
            self._gathered_bytes = 0
            self._put(block)

    def _put(self, data: bytes | memoryview) -> None:
        if self._file is None:
            # Held across calls: seal() hands it on, discard() closes it.
            self._file = _unnamed_file(self._directory)
        self._hasher.update(data)
        view = memoryview(data)
        while view:
            view = view[self._file.write(view) :]

    def seal(self) -> tuple[str, BinaryIO, list[PackEntry]]:
        """Return ``(pack_id, file, entries)``: the pack's bytes are the whole of ``file``, which is
        positioned at its start. The builder must not be used afterwards."""
        self._write(encode_trailer(self.entries))
        self._flush()
        f = self._file
        assert f is not None
        self._file = None
        f.seek(0)
        return self._hasher.hexdigest(), f, self.entries

    def discard(self) -> None:
        """Drop the blobs added so far (and their temporary file)."""
        self._gathered.clear()
        if self._file is not None:
            self._file.close()
            self._file = None


def _unnamed_file(directory: str | None) -> BinaryIO:
    """A new file without a name, in ``directory`` if given and able to make one there that can be
    given a name later (``O_TMPFILE`` without ``O_EXCL``), else in ``TMPDIR``."""
    if directory is not None and hasattr(os, "O_TMPFILE"):
        try:
            fd = os.open(directory, os.O_TMPFILE | os.O_RDWR | getattr(os, "O_CLOEXEC", 0), 0o600)
        except OSError:
            pass
        else:
            return open(fd, "w+b", buffering=0)
    return tempfile.TemporaryFile(prefix="cas-pack-", buffering=0)
