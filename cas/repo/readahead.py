"""Chunks fetched before anyone asks for them, for the file readers that soon will.

Reading a directory's small files one after the other (``cat dir/*``, ``grep -r``, an import of a
package) costs a backend read, a decompression and a hash per file. Their chunks were written
together and usually sit side by side in one pack, so :class:`ChunksAhead` fetches a batch of them
with one ranged read per stretch of a pack (:func:`cas.repo.reader.fetched_payloads`), in a
background thread, and holds their stored bytes until a reader takes them. The reader's thread
verifies what it takes: a small chunk decompresses and hashes in microseconds, less than a hand-off
of the interpreter lock between a verifying thread and the reading one would cost, and a chunk
never read is never decoded.

Nothing is returned unverified: a chunk that fails verification (or whose read fails) is not
returned, so the reader that needs it fetches it itself and reports the error under its own file's
path, and reads of the other chunks of the batch are unaffected. What is held is bounded by
``max_bytes`` of stored bytes (the oldest held chunks are dropped first); chunks taken also go
through the repository's chunk cache, which keeps its own cap.

The background threads (:func:`cas.repo.background.background`, reached through the
repository's :class:`~cas.repo.background.BackgroundWork`, which its close awaits) are shared
with the read-ahead of single files (:class:`cas.repo.ranges.RangeReader`).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable

from cas.errors import CasError
from cas.repo.reader import checked_payload, fetched_payloads
from cas.repo.repository import Repository
from cas.types import BlobLocation

MAX_BYTES = 32 << 20
"""The most chunk bytes held for readers by default."""


class ChunksAhead:
    """Chunks fetched in the background, held until taken (each is taken once, verified by the
    taker). Safe to share between threads."""

    def __init__(self, repo: Repository, max_bytes: int = MAX_BYTES) -> None:
        self._repo = repo
        self._max_bytes = max_bytes
        self._held: OrderedDict[str, tuple[BlobLocation, bytes]] = OrderedDict()  # stored payloads
        self._held_bytes = 0
        self._pending: set[str] = set()  # being fetched; each leaves as it is verified (or fails)
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)

    def wants(self, chunk_ids: Iterable[str]) -> bool:
        """Whether any of these chunks is neither held nor being fetched."""
        with self._lock:
            return any(c not in self._held and c not in self._pending for c in chunk_ids)

    def fetch(self, locations: Iterable[BlobLocation]) -> None:
        """Fetch these chunks in the background (those neither held nor being fetched already)."""
        with self._lock:
            todo = list({loc.id: loc for loc in locations
                         if loc.id not in self._held and loc.id not in self._pending}.values())
            if not todo:
                return
            self._pending.update(loc.id for loc in todo)
        self._repo.background.submit(self._run, todo)

    def _run(self, locations: list[BlobLocation]) -> None:
        """Each chunk is held as soon as its stretch of a pack is read (a reader waiting for it
        goes on then, not when the whole batch is in)."""
        try:
            for loc, payload in fetched_payloads(self._repo, locations):
                with self._lock:
                    self._pending.discard(loc.id)
                    if loc.id not in self._held and len(payload) <= self._max_bytes:
                        self._held[loc.id] = (loc, payload)
                        self._held_bytes += len(payload)
                    while self._held_bytes > self._max_bytes:
                        self._held_bytes -= len(self._held.popitem(last=False)[1][1])
                    self._arrived.notify_all()
        except (CasError, OSError):
            pass  # the readers fetch their chunks themselves and report what fails
        finally:
            with self._lock:
                self._pending.difference_update(loc.id for loc in locations)
                self._arrived.notify_all()

    def take(self, chunk_ids: Iterable[str], *, wait: bool = True) -> dict[str, bytes]:
        """The verified bytes of those of these chunks that are held (or arrive from a fetch under
        way, which this waits for unless ``wait`` is false: a task on the background threads must
        not wait for another queued behind it), removed from what is held. Verified here, on the
        caller's thread; a chunk that fails is left out (and no longer held)."""
        wanted = list(chunk_ids)
        taken: list[tuple[BlobLocation, bytes]] = []
        with self._lock:
            while wait and any(c in self._pending for c in wanted):
                self._arrived.wait()
            for c in wanted:
                held = self._held.pop(c, None)
                if held is not None:
                    taken.append(held)
                    self._held_bytes -= len(held[1])
        out = {}
        for loc, payload in taken:
            raw = checked_payload(self._repo, loc, payload)
            if raw is not None:
                out[loc.id] = raw
        return out

    @property
    def held_bytes(self) -> int:
        with self._lock:
            return self._held_bytes
