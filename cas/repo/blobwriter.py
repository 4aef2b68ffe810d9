"""The write pipeline: encode blobs on a thread pool, seal them into packs, upload, then index.

Order of effects, which is what makes a crash harmless (docs/FORMAT.md, "Write order"):

1. a pack is uploaded whole under its content name (built in a temporary file, not in memory:
   :mod:`cas.repo.packfile`);
2. only then are its blobs' index rows committed, in one transaction.

So every blob the index knows is in a pack on the backend, and a crash leaves at most packs that no
index row points at. zstd and BLAKE3 release the GIL, so encoding runs truly in parallel with the
caller reading and cutting files.
"""

from __future__ import annotations

import os
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, BinaryIO

from cas.errors import AlreadyExists, IntegrityError
from cas.format.compression import encode_many
from cas.format.keys import pack_key
from cas.format.packs import MAX_BLOB_SIZE
from cas.repo.packfile import PackFile
from cas.repo.repository import Repository
from cas.types import BlobKind, BlobLocation
from manifests.errors import PackBeingDeleted

if TYPE_CHECKING:
    from typing_extensions import Self

_TOMBSTONE_WAIT = 120.0
_DEDUP_BATCH = 400
_PENDING_BYTES = 4 * 1024 * 1024
_GROUP_BYTES = 2 * 1024 * 1024
_COMPARE_BLOCK = 1024 * 1024


@dataclass
class WriteStats:
    new_blobs: int = 0
    new_raw_bytes: int = 0
    """Uncompressed bytes of new data chunks (tree nodes are counted apart)."""
    new_stored_bytes: int = 0
    """Encoded bytes of all new blobs, chunks and tree nodes."""
    new_tree_bytes: int = 0
    packs: int = 0
    pack_bytes: int = 0


class BlobWriter:
    """Deduplicating blob sink for one writer. Not thread-safe: call from one thread.

    :meth:`add` returns at once. Blobs are buffered and their existence checked against the index
    in batches (one query per few hundred blobs, not one per blob); new ones are encoded on the
    thread pool in groups, so per-blob overhead stays small for trees of many small files. A blob is
    durable only after :meth:`flush` returns.
    """

    def __init__(
        self, repo: Repository, *, workers: int | None = None, uploads: int = 2, dedup: bool = True
    ) -> None:
        self.repo = repo
        self.dedup = dedup
        self.written: list[BlobLocation] = []
        """With ``dedup=False`` (repacking): locations of every blob stored, complete after :meth:`flush`."""
        self.level = repo.config.compression_level
        self.pack_size = repo.config.pack_size
        self._staging = repo.backend.staging_directory()
        self.stats = WriteStats()
        self._workers = workers or max(2, os.cpu_count() or 2)
        self._encoders = ThreadPoolExecutor(self._workers, thread_name_prefix="cas-encode")
        self._uploaders = ThreadPoolExecutor(uploads, thread_name_prefix="cas-upload")
        # One group per encoder in flight: a group's blobs are views that keep whole read blocks
        # alive, so each further group queued costs megabytes of memory and no speed.
        self._max_encoding = self._workers
        self._max_uploading = uploads
        self._seen: set[str] = set()
        self._pending: list[tuple[str, int, bytes | memoryview]] = []
        self._pending_bytes = 0
        self._encoding: dict[int, deque[Future[list[tuple[str, int, int, bytes]]]]] = {
            BlobKind.DATA: deque(),
            BlobKind.TREE: deque(),
        }
        self._builders = {BlobKind.DATA: self._builder(), BlobKind.TREE: self._builder()}
        self._uploads: deque[Future[None]] = deque()
        self._closed = False

    def add(self, blob_id: str, kind: int, data: bytes | memoryview) -> None:
        """Queue a blob; it is dropped later if the index already has it."""
        if len(data) > MAX_BLOB_SIZE:
            # Readers refuse larger blobs as corrupt (packs.parse_trailer): never write one.
            raise IntegrityError(f"blob {blob_id[:16]} is {len(data)} bytes, over the format's limit of {MAX_BLOB_SIZE}")
        if blob_id in self._seen:
            return
        self._seen.add(blob_id)
        if isinstance(data, memoryview) and not (type(data.obj) is bytes and data.nbytes == len(data.obj)):
            # A chunk cut from a read block (which the chunker reads into again for the next
            # block), or any view of another buffer: queued as it is, it would change under us or
            # keep the whole block alive until encoded. A copy holds only its own bytes.
            data = bytes(data)
        self._pending.append((blob_id, kind, data))
        self._pending_bytes += len(data)
        if len(self._pending) >= _DEDUP_BATCH or self._pending_bytes >= _PENDING_BYTES:
            self._resolve()

    def flush(self) -> None:
        """Make every added blob durable: encoded, packed, uploaded and indexed."""
        self._resolve()
        for kind in (BlobKind.DATA, BlobKind.TREE):
            while self._encoding[kind]:
                self._take_one(kind)
            if len(self._builders[kind]):
                self._seal(kind)
        while self._uploads:
            self._uploads.popleft().result()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._encoders.shutdown(wait=True, cancel_futures=True)
            self._uploaders.shutdown(wait=True, cancel_futures=True)
            for builder in self._builders.values():
                builder.discard()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals ------------------------------------------------------------------------------

    def _resolve(self) -> None:
        """Drop pending blobs the index has; hand the rest to the encoders in groups."""
        batch, self._pending, self._pending_bytes = self._pending, [], 0
        if not batch:
            return
        known = self.repo.index.known_blobs([b[0] for b in batch]) if self.dedup else set()
        groups: dict[int, list[tuple[str, bytes | memoryview]]] = {BlobKind.DATA: [], BlobKind.TREE: []}
        sizes = {BlobKind.DATA: 0, BlobKind.TREE: 0}
        for blob_id, kind, data in batch:
            if blob_id in known:
                continue
            groups[kind].append((blob_id, data))
            sizes[kind] += len(data)
            if sizes[kind] >= _GROUP_BYTES:
                self._submit(kind, groups[kind])
                groups[kind], sizes[kind] = [], 0
        for kind, group in groups.items():
            if group:
                self._submit(kind, group)

    def _builder(self) -> PackFile:
        return PackFile(self._staging)

    def _submit(self, kind: int, group: list[tuple[str, bytes | memoryview]]) -> None:
        queue = self._encoding[kind]
        queue.append(self._encoders.submit(_encode_group, group, self.level))
        while len(queue) > self._max_encoding:
            self._take_one(kind)

    def _take_one(self, kind: int) -> None:
        for blob_id, raw_length, codec, payload in self._encoding[kind].popleft().result():
            builder = self._builders[kind]
            builder.add(blob_id, kind, codec, payload, raw_length)
            self.stats.new_blobs += 1
            if kind == BlobKind.DATA:
                self.stats.new_raw_bytes += raw_length
            else:
                self.stats.new_tree_bytes += raw_length
            self.stats.new_stored_bytes += len(payload)
            if builder.size >= self.pack_size:
                self._seal(kind)

    def _seal(self, kind: int) -> None:
        builder = self._builders[kind]
        self._builders[kind] = self._builder()
        pack_id, data, entries = builder.seal()
        size = builder.size  # with the trailer
        self.stats.packs += 1
        self.stats.pack_bytes += size
        while len(self._uploads) >= self._max_uploading:
            self._uploads.popleft().result()
        rows = [BlobLocation(e.id, e.kind, pack_id, e.offset, e.length, e.raw_length, e.codec) for e in entries]
        if not self.dedup:
            self.written.extend(rows)
        try:
            self._uploads.append(self._uploaders.submit(self._upload, pack_id, data, size, rows))
        except BaseException:
            data.close()
            raise

    def _upload(self, pack_id: str, data: BinaryIO, size: int, rows: list[BlobLocation]) -> None:
        with data:
            self._store(pack_id, data, size, rows)

    def _store(self, pack_id: str, data: BinaryIO, size: int, rows: list[BlobLocation]) -> None:
        """Put the pack ``data`` (a file of ``size`` bytes, at its start) and then its index rows."""
        key = pack_key(pack_id)
        try:
            self.repo.backend.put(key, data, overwrite=False)
        except AlreadyExists:
            # Same name should mean same bytes (another writer stored this exact pack), but the
            # object may be a damaged copy: check, and replace it only if it is not ours.
            try:
                same = _same_bytes(self.repo.backend.get(key), data)
            except (FileNotFoundError, IntegrityError):  # gone, or an encrypted copy that is damaged
                same = False
            if not same:
                data.seek(0)
                self.repo.backend.put(key, data, overwrite=True)
        deadline = time.monotonic() + _TOMBSTONE_WAIT
        while True:
            try:
                self.repo.index.add_pack(pack_id, size, rows, stored=partial(self.repo.pack_stored, pack_id))
                return
            except PackBeingDeleted:
                # GC is deleting an identical pack (left by a crashed writer or by our own earlier
                # attempt), or deleted the one we found or put, between our put and now: once no
                # tombstone is left, upload ours again.
                if time.monotonic() > deadline:
                    raise
                if self.repo.index.is_tombstoned(pack_id):
                    time.sleep(0.2)
                    continue
                data.seek(0)
                self.repo.backend.put(key, data, overwrite=True)


def _same_bytes(stored: bytes, data: BinaryIO) -> bool:
    """Whether the file ``data`` holds exactly ``stored`` (compared from its start)."""
    data.seek(0)
    view = memoryview(stored)
    pos = 0
    while True:
        block = data.read(_COMPARE_BLOCK)
        if not block:
            return pos == len(view)
        if view[pos : pos + len(block)] != block:
            return False
        pos += len(block)


def _encode_group(group: list[tuple[str, bytes | memoryview]], level: int) -> list[tuple[str, int, int, bytes]]:
    encoded = encode_many([data for _, data in group], level)
    return [(blob_id, len(data), codec, payload) for (blob_id, data), (codec, payload) in zip(group, encoded)]


def relocate_blobs(repo: Repository, pack_id: str, blobs: list[BlobLocation]) -> tuple[list[BlobLocation], set[str]]:
    """Copy ``blobs`` out of one pack into new packs and point their index rows there.

    Used by garbage collection (repacking mostly-dead packs) and by repair (salvaging the intact
    blobs of a damaged pack). Each blob is verified on the way; those that fail are left where they
    were and returned as unreadable. Rows move only where they still name ``pack_id`` (fenced).
    Returns ``(blobs copied, IDs that could not be read)``; a pack that cannot be read copies nothing.
    """
    from cas.repo.repository import verify_blob

    data: bytes | None
    try:
        data = repo.backend.get(pack_key(pack_id))
    except IntegrityError:
        data = None  # an encrypted pack that fails authentication somewhere: read each blob's range
    copied: list[BlobLocation] = []
    unreadable: set[str] = set()
    with BlobWriter(repo, dedup=False) as writer:
        for loc in sorted(blobs, key=lambda b: b.offset):
            try:
                if data is None:
                    raw = repo.read_blob(loc.id, loc)
                else:
                    raw = verify_blob(loc.id, loc, data[loc.offset : loc.offset + loc.length])
            except IntegrityError:
                unreadable.add(loc.id)
                continue
            writer.add(loc.id, loc.kind, raw)
            copied.append(loc)
        writer.flush()
        repo.index.move_blobs(writer.written, {loc.id: pack_id for loc in copied})
    return copied, unreadable
