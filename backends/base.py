"""The storage contract: a dumb key/value store of immutable byte objects.

A backend knows bytes and keys only. Keys are relative, '/'-separated, and never start with '/';
the backend maps them under its own root (a directory, a bucket prefix, an HDFS path). Chunks,
packs, compression and manifests live above this layer.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import BinaryIO
from urllib.parse import unquote, urlsplit

from backends.errors import ConfigurationError


@dataclass(frozen=True)
class Capabilities:
    """What a backend guarantees, as data rather than ``hasattr`` probing."""

    atomic_put: bool = True
    """A put is visible whole or not at all under its final name."""
    conditional_put: bool = True
    """``put(..., overwrite=False)`` is decided by the server, not by a stat-then-put race."""
    range_reads: bool = True


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int


class Backend(abc.ABC):
    """Contract every storage driver implements.

    All methods are safe to call from several threads at once. ``put`` must never leave a partial
    object visible under ``key``; a retried put of the same bytes is harmless.
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

    def delete_many(self, keys: Iterable[str]) -> None:
        for key in keys:
            self.delete(key)

    def close(self) -> None:  # noqa: B027 - optional hook
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


def read_up_to(stream: BinaryIO, size: int) -> bytes:
    """Up to ``size`` bytes of ``stream``; fewer only at its end (``read`` may return short counts)."""
    chunks: list[bytes] = []
    remaining = size
    while remaining > 0:
        chunk = stream.read(remaining)
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def read_all(data: bytes | memoryview | BinaryIO) -> bytes:
    """Bytes of a put's payload, for backends whose SDK wants them whole."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    return data.read()


def endpoint_secrets(url: str | None) -> tuple[str, ...]:
    """Credentials written into a service endpoint URL (``http://user:secret@host``), to scrub from
    every message: SDKs print the endpoint, userinfo included, when a request fails. The whole
    userinfo counts as secret (a token is sometimes given as the user name), also percent-decoded."""
    if not url:
        return ()
    netloc = urlsplit(url).netloc
    if "@" not in netloc:
        return ()
    userinfo = netloc.rsplit("@", 1)[0]
    password = userinfo.split(":", 1)[1] if ":" in userinfo else ""
    found = {userinfo, unquote(userinfo), password, unquote(password)} - {""}
    return tuple(sorted(found, key=len, reverse=True))  # longest first, so a part never hides the whole


def redact_endpoint(url: str) -> str:
    """A service endpoint URL without any userinfo, safe to print."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[1]).geturl()


def split_bucket_url(
    url: str, scheme: str, options: Mapping[str, object], known: Iterable[str], credentials_hint: str
) -> tuple[str, str]:
    """``(bucket, path)`` of an object-store URL such as ``s3://bucket/prefix``, refusing what does not
    belong in it (credentials, a query) and options the driver does not know."""
    parts = urlsplit(url)
    if parts.scheme != scheme:
        raise ConfigurationError(f"not an {scheme}:// URL: {parts.scheme}://...")
    if "@" in parts.netloc:
        raise ConfigurationError(f"credentials do not belong in an {scheme}:// URL; {credentials_hint}")
    if parts.query or parts.fragment:
        raise ConfigurationError(f"{scheme}:// URLs take no query or fragment; pass settings as options")
    known = set(known)
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigurationError(
            f"unknown {scheme.upper()} option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )
    return parts.netloc, unquote(parts.path)
