"""What the S3 and OSS drivers share: a bucket prefix, puts in parts, ranged reads, deletes.

:class:`ObjectStoreBackend` implements :class:`Backend` for a store of whole objects reached by
HTTP. A driver supplies the requests (:meth:`~ObjectStoreBackend._put_object`,
:meth:`~ObjectStoreBackend._start_multipart`, :meth:`~ObjectStoreBackend._read_object`, ...) and
its error table; the decisions live here once:

* a payload up to ``multipart_threshold`` goes in one request, a larger one as a multipart upload
  read part by part (at most ``max_parts``), aborted on any failure so no parts linger and
  nothing is visible under the key;
* a read asks for an HTTP byte range and cuts the range itself when the server ignored it;
* ``delete`` asks for the object first, because DeleteObject succeeds whether or not it exists.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from backends.base import Backend, check_key
from backends.errors import CasError, ConfigurationError
from backends.parts import read_head, slices, stream_parts
from backends.redact import Secrets

_log = logging.getLogger(__name__)


@dataclass
class Upload:
    """A multipart upload in progress: the object, the server's upload id, the parts sent so far
    (in order, as the driver's :meth:`ObjectStoreBackend._upload_part` described each)."""

    key: str
    name: str
    upload_id: str
    overwrite: bool
    parts: list[Any] = field(default_factory=list)


def http_range(offset: int, length: int | None) -> str | None:
    """The ``Range`` header for ``Backend.get(key, offset, length)``; None for the whole object.

    ``length`` is positive or None; a negative ``offset`` asks for a suffix (the last bytes).
    """
    if offset < 0:
        return f"bytes={offset}"
    if length is None:
        return f"bytes={offset}-" if offset else None
    return f"bytes={offset}-{offset + length - 1}"


class ObjectStoreBackend(Backend):
    """Objects under ``prefix/`` in one bucket. Subclasses say how each request is made."""

    def __init__(
        self, prefix: str, *, part_size: int, multipart_threshold: int, max_parts: int, secrets: Secrets
    ) -> None:
        self.prefix = prefix.strip("/")
        self._root = self.prefix + "/" if self.prefix else ""
        self.part_size = part_size
        self.multipart_threshold = multipart_threshold
        self.max_parts = max_parts
        self._secrets = secrets

    def _name(self, key: str) -> str:
        """The object name of ``key`` in the bucket."""
        return self._root + check_key(key)

    # -- what a driver supplies ------------------------------------------------------------------

    @abc.abstractmethod
    def _where(self, key: str) -> str:
        """``key``'s location for messages (never a secret)."""

    @abc.abstractmethod
    def _translate(self, exc: Exception, operation: str, key: str) -> CasError:
        """The domain error for an SDK failure (a :class:`CasError` is returned as it is)."""

    @abc.abstractmethod
    def _is_sdk_error(self, exc: Exception) -> bool:
        """Whether ``exc`` comes from the SDK or its transport (and so is translated)."""

    @abc.abstractmethod
    def _put_object(self, key: str, name: str, body: bytes, overwrite: bool) -> None:
        """One request storing ``body``; with ``overwrite=False`` the server refuses a taken name."""

    @abc.abstractmethod
    def _start_multipart(self, key: str, name: str, overwrite: bool) -> Upload:
        """Initiate a multipart upload of ``name``."""

    @abc.abstractmethod
    def _upload_part(self, upload: Upload, number: int, body: bytes) -> Any:
        """Send part ``number`` (from 1, in order); what the completion needs to name the part."""

    @abc.abstractmethod
    def _complete_multipart(self, upload: Upload) -> None:
        """Make the object visible: the commit point, where put-if-absent is decided."""

    @abc.abstractmethod
    def _abort_multipart(self, upload: Upload) -> None:
        """Drop the parts sent so far."""

    @abc.abstractmethod
    def _read_object(self, key: str, name: str, byte_range: str | None) -> tuple[bytes, bool]:
        """``(data, whole)``: the bytes the server sent for ``byte_range`` (None: the whole object)
        and whether they are the whole object although a range was asked. A range that starts past
        the end is ``(b"", False)``; a missing key raises :class:`NotFound`."""

    @abc.abstractmethod
    def _delete_object(self, key: str, name: str) -> None:
        """Delete ``name``, which existed a moment ago."""

    # -- Backend ---------------------------------------------------------------------------------

    def put(self, key: str, data: bytes | memoryview | BinaryIO, *, overwrite: bool = True) -> None:
        name = self._name(key)
        if isinstance(data, (bytes, bytearray, memoryview)):
            view = memoryview(data).cast("B")
            if len(view) <= self.multipart_threshold:
                self._put_object(key, name, data if isinstance(data, bytes) else bytes(view), overwrite)
            else:
                self._put_multipart(key, name, slices(view, self.part_size), overwrite)
            return
        head = read_head(data, self.multipart_threshold, self.part_size)
        if sum(len(block) for block in head) <= self.multipart_threshold:
            body = b"".join(head)
            head.clear()
            self._put_object(key, name, body, overwrite)
            return
        self._put_multipart(key, name, stream_parts(head, data, self.part_size), overwrite)

    def _put_multipart(self, key: str, name: str, parts: Iterator[bytes], overwrite: bool) -> None:
        upload = self._start_multipart(key, name, overwrite)
        try:
            for number, body in enumerate(parts, start=1):
                if number > self.max_parts:
                    raise ConfigurationError(
                        f"{self._where(key)} needs more than {self.max_parts} parts of {self.part_size} "
                        "bytes: raise the part_size option"
                    )
                upload.parts.append(self._upload_part(upload, number, body))
                del body
            self._complete_multipart(upload)
        except BaseException as exc:
            self._abort(upload, key)
            if isinstance(exc, Exception) and not isinstance(exc, CasError) and self._is_sdk_error(exc):
                raise self._translate(exc, "put", key) from exc
            raise

    def _abort(self, upload: Upload, key: str) -> None:
        try:
            self._abort_multipart(upload)
        except Exception as exc:  # noqa: BLE001 - keep the first failure; a lifecycle rule cleans up
            _log.warning(
                "could not abort multipart upload of %s: %s: %s",
                self._where(key),
                type(exc).__name__,
                self._secrets.scrub(str(exc)),
            )

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        name = self._name(key)
        if length is not None and length < 0:
            raise ConfigurationError(f"negative length {length} reading {self._where(key)}")
        if length == 0:
            self.stat(key)  # still NotFound for a missing key
            return b""
        byte_range = http_range(offset, length)
        data, whole = self._read_object(key, name, byte_range)
        if byte_range and whole:
            data = data[offset:]  # the server ignored the range: cut it out ourselves
        return data if length is None else data[:length]

    def delete(self, key: str) -> None:
        """Remove ``key``; :class:`NotFound` if absent.

        DeleteObject succeeds whether or not the key exists, so this asks for it first. The two
        calls are not atomic: a concurrent delete between them makes both callers succeed.
        """
        self.stat(key)
        self._delete_object(key, self._name(key))


__all__ = ["ObjectStoreBackend", "Upload", "http_range"]
