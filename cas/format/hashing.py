"""BLAKE3 naming: every chunk, tree node, pack and file is named by the BLAKE3 of its bytes."""

from __future__ import annotations

import queue
import threading

import blake3

DIGEST_HEX_LEN = 64
_fromhex = bytes.fromhex


def hexdigest(data: bytes | bytearray | memoryview) -> str:
    return blake3.blake3(data).hexdigest()


def new_hasher() -> blake3.blake3:
    return blake3.blake3()


HASH_BESIDE_FROM = 16 * 1024 * 1024
"""Files of at least this many bytes are hashed whole by a :class:`HashBeside` (a smaller one
inline: the thread would cost more than it overlaps)."""


class HashBeside:
    """A BLAKE3 hasher fed on a thread of its own, so that hashing a large file whole overlaps
    the rest of the work on its pieces (BLAKE3 leaves the GIL). :meth:`update` hands a piece over,
    waiting while ``behind`` pieces are not yet hashed (a piece held keeps what it is a view of in
    memory: a restore's whole read of a run of chunks, up to 32 MiB; with four behind the
    benchmark's 1 GiB restore peaked at 116 MiB instead of 101); :meth:`settle` waits until all
    are (before a piece's buffer is reused); :meth:`close` waits and ends the thread, whatever
    happened."""

    def __init__(self, behind: int = 1) -> None:
        self._hasher = new_hasher()
        self._pieces: queue.Queue[bytes | memoryview | None] = queue.Queue(behind)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="cas-hash-beside", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        update, take, done = self._hasher.update, self._pieces.get, self._pieces.task_done
        while (piece := take()) is not None:
            try:
                if self._error is None:
                    update(piece)
            except BaseException as exc:  # noqa: BLE001 - raised by hexdigest; the pieces still drain
                self._error = exc
            done()
        done()

    def update(self, piece: bytes | memoryview) -> None:
        self._pieces.put(piece)

    def settle(self) -> None:
        self._pieces.join()

    def close(self) -> None:
        if self._thread.is_alive():
            self._pieces.put(None)
            self._thread.join()

    def hexdigest(self) -> str:
        self.close()
        if self._error is not None:
            raise self._error
        return str(self._hasher.hexdigest())


def is_digest(text: object) -> bool:
    """A BLAKE3 hex digest as cas writes it: 64 lowercase hex digits. Tree decoding checks every
    chunk ID with it, so it is two C calls rather than a regex: the hex of what ``bytes.fromhex``
    reads back equals the text only if the text is hex digits alone, in lower case (``fromhex``
    refuses anything else but whitespace, which the round trip drops)."""
    if not isinstance(text, str) or len(text) != DIGEST_HEX_LEN:
        return False
    try:
        return _fromhex(text).hex() == text
    except ValueError:
        return False
