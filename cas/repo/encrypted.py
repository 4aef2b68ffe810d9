"""An encrypted repository's backend: every object sealed, every name encrypted
(docs/FORMAT.md, "Encrypted repositories"; the formats are :mod:`cas.format.encryption`).

:class:`EncryptedBackend` is a :class:`~backends.base.Backend` over another one, so the engine
above it is the same for encrypted and unencrypted repositories: it puts, gets ranges of, stats
and lists plaintext objects under plaintext keys. A key ``area/rest`` is stored as
``area/<2 chars>/<encrypted rest>`` (``area`` is ``data`` or ``snapshots``; a key without ``/``
goes under ``_/``); sizes reported are plaintext sizes; a range read fetches only the segments
covering it (plus, the first time an object is read, its header).
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Iterator
from typing import BinaryIO

from backends.base import Backend, ObjectInfo, check_key
from cas.errors import IntegrityError
from cas.format import encryption as enc

log = logging.getLogger(__name__)

_TOP = "_"
"""The area of keys that have no ``/``."""
_SALTS_KEPT = 4096
_PIECE = 200
"""Longest piece of an encrypted name between slashes (file systems take 255 bytes)."""


class EncryptedBackend(Backend):
    def __init__(self, inner: Backend, keys: enc.RepoKeys) -> None:
        self.inner = inner
        self.capabilities = inner.capabilities
        self._keys = keys
        self._salts: OrderedDict[str, bytes] = OrderedDict()
        self._lock = threading.Lock()

    # -- names -----------------------------------------------------------------------------------

    def stored_key(self, key: str) -> str:
        """Where the object ``key`` lives on the inner backend."""
        check_key(key)
        area, sep, rest = key.partition("/")
        if not sep:
            area, rest = _TOP, key
        token = enc.encrypt_name(self._keys, area, rest)
        # Long names (execution IDs of up to 200 characters) in pieces a file system takes.
        pieces = "/".join(token[i : i + _PIECE] for i in range(0, len(token), _PIECE))
        return f"{area}/{token[:2]}/{pieces}"

    def _plain_key(self, stored: str) -> str | None:
        parts = stored.split("/")
        if len(parts) < 3 or parts[2][:2] != parts[1]:
            return None
        rest = enc.decrypt_name(self._keys, parts[0], "".join(parts[2:]))
        if rest is None:
            return None
        return rest if parts[0] == _TOP else f"{parts[0]}/{rest}"

    # -- contents --------------------------------------------------------------------------------

    def put(self, key: str, data: bytes | memoryview | BinaryIO, *, overwrite: bool = True) -> None:
        stored = self.stored_key(key)
        if not isinstance(data, (bytes, bytearray, memoryview)):
            data = data.read()
        sealed = enc.seal(self._keys, key, data)
        self._forget_salt(stored)
        self.inner.put(stored, sealed, overwrite=overwrite)

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        stored = self.stored_key(key)
        if offset < 0:
            offset = max(0, self.stat(key).size + offset)
        if length == 0:
            self.inner.stat(stored)  # NotFound for an absent object, as every backend
            return b""
        try:
            return self._get(key, stored, offset, length)
        except IntegrityError:
            # The object may have been rewritten (a repaired pack) since its salt was cached.
            if self._forget_salt(stored) is None:
                raise
            return self._get(key, stored, offset, length)

    def _get(self, key: str, stored: str, offset: int, length: int | None) -> bytes:
        span = enc.covering(offset, length)
        salt = self._salt(stored)
        if salt is None and span.first == 0:
            # One read for the header and the segments together.
            want = None if span.length is None else enc.HEADER + span.length
            data = self.inner.get(stored, 0, want)
            salt = enc.parse_header(data[: enc.HEADER])
            self._keep_salt(stored, salt)
            body = memoryview(data)[enc.HEADER :]
            asked = span.length
        else:
            if salt is None:
                salt = enc.parse_header(self.inner.get(stored, 0, enc.HEADER))
                self._keep_salt(stored, salt)
            body = self.inner.get(stored, span.offset, span.length)
            asked = span.length
        at_end = True if asked is None or len(body) < asked else None
        start = offset - span.first * enc.SEGMENT
        return enc.open_segments(self._keys, key, salt, span.first, body, at_end=at_end, skip=start, length=length)

    def stat(self, key: str) -> ObjectInfo:
        info = self.inner.stat(self.stored_key(key))
        return ObjectInfo(key, enc.plain_size(info.size))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        area, sep, _ = prefix.partition("/")
        for info in self.inner.list(f"{area}/" if sep else ""):
            key = self._plain_key(info.key)
            if key is not None and key.startswith(prefix):
                yield ObjectInfo(key, enc.plain_size(info.size))
            elif key is None:
                log.debug("not an object of this repository: %s", info.key)

    def delete(self, key: str) -> None:
        stored = self.stored_key(key)
        self._forget_salt(stored)
        self.inner.delete(stored)

    def close(self) -> None:
        self.inner.close()

    def describe(self) -> str:
        return self.inner.describe()

    # -- object headers, kept so a ranged read costs one request --------------------------------

    def _salt(self, stored: str) -> bytes | None:
        with self._lock:
            salt = self._salts.get(stored)
            if salt is not None:
                self._salts.move_to_end(stored)
            return salt

    def _keep_salt(self, stored: str, salt: bytes) -> None:
        with self._lock:
            self._salts[stored] = salt
            while len(self._salts) > _SALTS_KEPT:
                self._salts.popitem(last=False)

    def _forget_salt(self, stored: str) -> bytes | None:
        with self._lock:
            return self._salts.pop(stored, None)
