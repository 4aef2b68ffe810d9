"""The storage contract: a dumb key/value store of immutable byte objects.

A backend knows bytes and keys only. Keys are relative, '/'-separated, and never start with '/';
the backend maps them under its own root (a directory, a bucket prefix, an HDFS path). Chunks,
packs, compression and manifests live above this layer.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from backends.errors import ConfigurationError


@dataclass(frozen=True)
class Capabilities:
    """What a backend is, as data the layers above read (rather than ``hasattr`` probing or
    parsing :meth:`Backend.describe`). The defaults are the cautious answers for a driver that
    does not say: a service across a network that decides put-if-absent itself."""

    remote: bool = True
    """Calls cross a network: they cost a round trip and may fail transiently. The engine wraps a
    remote backend it opens in :class:`backends.retry.RetryingBackend` and keeps a local cache of
    the chunks it reads; a local directory gets neither."""
    put_if_absent: bool = True
    """``put(..., overwrite=False)`` is decided by the storage in one step, so of racing writers
    exactly one wins (the engine claims execution IDs this way); the contract suite checks it."""


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int


class Backend(abc.ABC):
    """Contract every storage driver implements.

    All methods are safe to call from several threads at once. ``put`` must never leave a partial
    object visible under ``key``; a retried put of the same bytes is harmless. A driver states
    what it is in :attr:`capabilities`; a wrapper passes on its inner backend's.
    """

    capabilities: Capabilities = Capabilities()

    @abc.abstractmethod
    def put(self, key: str, data: bytes | memoryview | BinaryIO, *, overwrite: bool = True) -> None:
        """Store ``data`` under ``key``.

        ``data`` is bytes or a readable binary file positioned at its start. With
        ``overwrite=False`` an existing object raises :class:`AlreadyExists` and is left as it was.
        """

    @abc.abstractmethod
    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        """Return ``length`` bytes from ``offset`` (all of the rest when ``length`` is None).

        A range running past the end returns what exists; a missing key raises :class:`NotFound`.
        A negative offset counts from the end of the object.
        """

    def get_view(self, key: str, offset: int, length: int) -> memoryview:
        """:meth:`get` of a range as a read-only view, for a reader that keeps parts of it a while
        (slices of the view are not copies). A driver that can give the stored bytes without
        copying them overrides it; the default is a view of :meth:`get`."""
        return memoryview(self.get(key, offset, length)).toreadonly()

    def staging_directory(self) -> str | None:
        """A directory on the file system that holds this backend's objects, where a writer may
        build an object in an unnamed file (``O_TMPFILE``, opened without ``O_EXCL``) for
        :meth:`put` to give that file a name instead of copying its bytes; None (the default, and
        every wrapper's: it may change the bytes) when objects are not files of this host."""
        return None

    @abc.abstractmethod
    def stat(self, key: str) -> ObjectInfo:
        """Size of the object; :class:`NotFound` if absent."""

    @abc.abstractmethod
    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every object whose key starts with ``prefix``, in no promised order."""

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Remove ``key``; :class:`NotFound` if it was not there."""

    def exists(self, key: str) -> bool:
        try:
            self.stat(key)
        except FileNotFoundError:
            return False
        return True

    def close(self) -> None:
        """Release connections. Idempotent."""

    def describe(self) -> str:
        """The location as a URL with any secret removed, for messages and logs."""
        return type(self).__name__


def check_key(key: str) -> str:
    """Refuse keys that could escape a backend's root or are ambiguous."""
    if not key or key.startswith("/") or "\\" in key or "\x00" in key:
        raise ConfigurationError(f"invalid object key {key!r}")
    parts = key.split("/")
    if any(p in ("", ".", "..") for p in parts[:-1]) or parts[-1] in ("", ".", ".."):
        raise ConfigurationError(f"invalid object key {key!r}")
    return key
