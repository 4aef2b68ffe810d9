"""Alibaba Cloud OSS backend, on the ``oss2`` SDK (the only module that imports it, lazily).

Layout: object ``key`` lives at ``<prefix>/<key>`` in the bucket. Requests are signed with OSS
signature version 1 (``oss2.Auth``), which is what ``oss2`` 2.19 uses unless told otherwise.

Guarantees and how they are met:

* **Atomic put.** OSS makes a PutObject or a completed multipart upload visible whole. Objects
  larger than ``multipart_threshold`` go up in ``part_size`` parts read one at a time from the
  caller's file, so at most ``multipart_threshold`` bytes are held; a failed multipart upload is
  aborted so no parts linger.
* **Conditional put.** ``overwrite=False`` sends ``x-oss-forbid-overwrite: true``; the server
  answers 409 ``FileAlreadyExists``, so racing writers have exactly one winner. For multipart the
  header goes on both the initiation (fail early) and the completion (the decision).
* **Integrity.** Every upload carries ``Content-MD5`` (the server rejects a damaged body) and
  ``oss2`` compares its CRC-64 with the one OSS reports; a whole-object read is CRC-checked too.
* **Ranges.** ``x-oss-range-behavior: standard`` is always sent, because by default OSS answers
  an unsatisfiable range with the whole object and 200. A 416 means "nothing there" (an empty
  result); a 200 with a Range sent (a server ignoring the header) is cut to the range here.
* **delete** of an absent key raises :class:`NotFound`. OSS's DeleteObject is idempotent and
  says nothing about whether the key existed, so the backend asks with a HEAD first; a delete
  racing another delete of the same key may therefore both succeed.

Every ``oss2`` failure goes through :func:`_translate`, one table from OSS's (status, code) to the
errors in :mod:`backends.errors`, raised ``from`` the SDK's exception with its request id.
The access key secret never appears in a message, a log line or :meth:`OssBackend.describe`.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
import os
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any, BinaryIO, NoReturn, TypeVar

from backends.base import (
    Backend,
    Capabilities,
    ObjectInfo,
    check_key,
    endpoint_secrets,
    read_up_to,
    redact_endpoint,
    split_bucket_url,
)
from backends.errors import (
    AlreadyExists,
    CasError,
    ConfigurationError,
    IntegrityError,
    MissingDependency,
    NotFound,
    PermissionDenied,
    Unavailable,
)

log = logging.getLogger(__name__)

#: Defaults: parts of 8 MiB, multipart above 32 MiB. OSS allows 10,000 parts of 100 KiB..5 GiB.
DEFAULT_PART_SIZE = 8 << 20
DEFAULT_MULTIPART_THRESHOLD = 32 << 20
MIN_PART_SIZE = 100 << 10
MAX_PARTS = 10_000
#: Connecting must be quick; reading a large part may take a while.
DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_READ_TIMEOUT = 120.0
LIST_PAGE = 1000

_ENV = {
    "access_key_id": "OSS_ACCESS_KEY_ID",
    "access_key_secret": "OSS_ACCESS_KEY_SECRET",
    "endpoint": "OSS_ENDPOINT",
}
_OPTIONS = frozenset(
    {
        "access_key_id",
        "access_key_secret",
        "endpoint",
        "bucket",
        "root_directory",
        "part_size",
        "multipart_threshold",
        "connect_timeout",
        "read_timeout",
    }
)
_OCTET_STREAM = "application/octet-stream"
_N = TypeVar("_N", int, float)
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")

# (status, code) -> error class; a code of None matches any code with that status. Looked up by
# the exact pair first, then by status alone, then by status class.
_ERROR_TABLE: dict[tuple[int, str | None], type[CasError]] = {
    (404, "NoSuchKey"): NotFound,
    (404, "NoSuchBucket"): ConfigurationError,
    (400, "InvalidBucketName"): ConfigurationError,
    (409, "FileAlreadyExists"): AlreadyExists,
    (403, "InvalidAccessKeyId"): PermissionDenied,
    (403, "SignatureDoesNotMatch"): PermissionDenied,
    (403, "AccessDenied"): PermissionDenied,
    (403, "RequestTimeTooSkewed"): ConfigurationError,  # the local clock is wrong
    (400, "InvalidDigest"): IntegrityError,
    (404, "NoSuchUpload"): Unavailable,  # aborted under us (lifecycle rule, another process)
    (403, None): PermissionDenied,
    (404, None): NotFound,
    (408, None): Unavailable,
    (429, None): Unavailable,
}
#: oss2's pseudo statuses for failures that never got an HTTP answer.
_SDK_CLIENT_ERROR = -1
_SDK_REQUEST_ERROR = -2
_SDK_INCONSISTENT = -3

_HINTS = {
    ConfigurationError: "check the bucket name, endpoint and clock",
    PermissionDenied: "check access_key_id / access_key_secret (or OSS_ACCESS_KEY_ID / OSS_ACCESS_KEY_SECRET)",
}


def _import_sdk() -> tuple[Any, Any]:
    """``oss2`` and ``requests`` (oss2's transport, whose errors escape it while a body is read)."""
    try:
        import oss2
        import requests
    except ImportError as exc:
        raise MissingDependency(
            f"the oss:// backend needs the oss2 package ({exc.name}): pip install 'cas-store[oss]'"
        ) from exc
    return oss2, requests


class OssBackend(Backend):
    """Objects in one OSS bucket under an optional prefix. Thread-safe: ``oss2.Bucket`` is."""

    capabilities = Capabilities(atomic_put=True, conditional_put=True, range_reads=True)

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint: str,
        access_key_id: str,
        access_key_secret: str,
        part_size: int = DEFAULT_PART_SIZE,
        multipart_threshold: int = DEFAULT_MULTIPART_THRESHOLD,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        read_timeout: float = DEFAULT_READ_TIMEOUT,
    ) -> None:
        """Configure a client; no request is sent until the first operation.

        ``part_size`` must be at least 100 KiB (OSS's minimum) and ``multipart_threshold`` at least
        ``part_size``. Timeouts are in seconds and must be positive.
        """
        oss2, requests = _import_sdk()
        for name, value in (
            ("bucket", bucket),
            ("endpoint", endpoint),
            ("access_key_id", access_key_id),
            ("access_key_secret", access_key_secret),
        ):
            if not value:
                raise ConfigurationError(f"OSS option {name} is empty")
        if part_size < MIN_PART_SIZE:
            raise ConfigurationError(
                f"OSS option part_size must be at least {MIN_PART_SIZE} bytes, got {part_size}"
            )
        if multipart_threshold < part_size:
            raise ConfigurationError("OSS option multipart_threshold must be at least part_size")
        if connect_timeout <= 0 or read_timeout <= 0:
            raise ConfigurationError("OSS options connect_timeout and read_timeout must be positive")
        if "://" not in endpoint:
            endpoint = "https://" + endpoint
        self.bucket_name = bucket
        self.prefix = prefix.strip("/")
        if self.prefix:
            check_key(self.prefix)
        self.endpoint = endpoint.rstrip("/")
        self.part_size = part_size
        self.multipart_threshold = multipart_threshold
        self._root = self.prefix + "/" if self.prefix else ""
        # Scrubbed from every message: the key secret and any credentials written into the endpoint.
        self._secret = (access_key_secret, *endpoint_secrets(self.endpoint))
        self._oss2 = oss2
        self._transport_error: type[Exception] = requests.RequestException
        try:
            self._bucket: Any = oss2.Bucket(
                oss2.Auth(access_key_id, access_key_secret),
                self.endpoint,
                bucket,
                # requests takes (connect, read): a dead endpoint fails fast, a slow part does not.
                connect_timeout=(connect_timeout, read_timeout),
                enable_crc=True,
            )
        except oss2.exceptions.OssError as exc:
            self._raise(exc, "open", "")

    def describe(self) -> str:
        """``oss://bucket/prefix (endpoint ...)``; never a credential."""
        url = f"oss://{self.bucket_name}/{self.prefix}" if self.prefix else f"oss://{self.bucket_name}"
        return f"{url} (endpoint {redact_endpoint(self.endpoint)})"

    def _name(self, key: str) -> str:
        return self._root + check_key(key)

    # -- errors --------------------------------------------------------------------------------

    def _raise(self, exc: Exception, operation: str, key: str) -> NoReturn:
        raise _translate(exc, operation, key, self.describe(), self._secret) from exc

    @contextlib.contextmanager
    def _translating(self, operation: str, key: str) -> Iterator[None]:
        """Turn any SDK or transport failure inside the block into a domain error."""
        try:
            yield
        except (self._oss2.exceptions.OssError, self._transport_error) as exc:
            self._raise(exc, operation, key)

    # -- operations ----------------------------------------------------------------------------

    def put(self, key: str, data: bytes | memoryview | BinaryIO, *, overwrite: bool = True) -> None:
        name = self._name(key)
        headers = {"Content-Type": _OCTET_STREAM}
        if not overwrite:
            headers["x-oss-forbid-overwrite"] = "true"
        if isinstance(data, (bytes, bytearray, memoryview)):
            view = memoryview(data).cast("B")
            if len(view) <= self.multipart_threshold:
                self._put_single(name, key, bytes(view) if not isinstance(data, bytes) else data, headers)
            else:
                self._put_multipart(name, key, _slices(view, self.part_size), headers)
            return
        head = read_up_to(data, self.multipart_threshold + 1)
        if len(head) <= self.multipart_threshold:
            self._put_single(name, key, head, headers)
            return
        parts = _stream_parts(head, data, self.part_size)
        del head  # the generator owns it now and drops it once its parts are sent
        self._put_multipart(name, key, parts, headers)

    def _put_single(self, name: str, key: str, body: bytes, headers: Mapping[str, str]) -> None:
        with self._translating("put", key):
            self._bucket.put_object(name, body, headers={**headers, "Content-MD5": _md5(body)})

    def _put_multipart(self, name: str, key: str, parts: Iterator[bytes], headers: Mapping[str, str]) -> None:
        oss2 = self._oss2
        with self._translating("put", key):
            upload_id = self._bucket.init_multipart_upload(name, headers=dict(headers)).upload_id
        done: list[Any] = []
        try:
            for number, body in enumerate(parts, start=1):
                if number > MAX_PARTS:
                    raise ConfigurationError(
                        f"object {key} needs more than {MAX_PARTS} parts of {self.part_size} bytes; raise part_size"
                    )
                result = self._bucket.upload_part(
                    name, upload_id, number, body, headers={"Content-MD5": _md5(body)}
                )
                done.append(oss2.models.PartInfo(number, result.etag, size=len(body), part_crc=result.crc))
                del body
            complete_headers = {k: v for k, v in headers.items() if k == "x-oss-forbid-overwrite"}
            self._bucket.complete_multipart_upload(name, upload_id, done, headers=complete_headers)
        except BaseException as exc:
            try:
                self._bucket.abort_multipart_upload(name, upload_id)
            except (oss2.exceptions.OssError, self._transport_error) as abort_exc:  # keep the first failure
                log.warning(
                    "could not abort multipart upload of %s in %s: %s",
                    key,
                    self.describe(),
                    _redact(str(abort_exc), self._secret),
                )
            if isinstance(exc, (oss2.exceptions.OssError, self._transport_error)):
                self._raise(exc, "put", key)
            raise

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        name = self._name(key)
        if length is not None and length < 0:
            raise ConfigurationError(f"negative length {length} reading {key}")
        if length == 0:
            self.stat(key)  # a missing key must still raise NotFound
            return b""
        if offset == 0 and length is None:
            return self._get_whole(name, key)
        if offset < 0:
            spec = f"bytes=-{-offset}"
        elif length is None:
            spec = f"bytes={offset}-"
        else:
            spec = f"bytes={offset}-{offset + length - 1}"
        headers = {"Range": spec, "x-oss-range-behavior": "standard"}
        with self._translating("get", key):
            try:
                result = self._bucket.get_object(name, headers=headers)
                body = result.read()
            except self._oss2.exceptions.ServerError as exc:
                if exc.status == 416:
                    return b""  # the range starts at or past the end (or the object is empty)
                raise
        if result.status == 206:
            content_range = result.headers.get("Content-Range") or ""
            match = _CONTENT_RANGE.match(content_range.strip())
            if match is None:
                raise IntegrityError(
                    f"OSS sent an unreadable Content-Range {content_range!r} for {key}",
                    request_id=result.request_id,
                )
            first, last = int(match.group(1)), int(match.group(2))
            total = match.group(3)
            misplaced = first != offset if offset >= 0 else (total != "*" and last != int(total) - 1)
            if misplaced or len(body) != last - first + 1:
                raise IntegrityError(
                    f"OSS answered range {content_range} for {spec} of {key}", request_id=result.request_id
                )
        else:
            # The server ignored the range (compatible behaviour): cut it out of the whole object.
            body = body[offset:]
        return body if length is None else body[:length]

    def _get_whole(self, name: str, key: str) -> bytes:
        with self._translating("get", key):
            result = self._bucket.get_object(name)
            body = result.read()
        if result.server_crc is not None and result.client_crc != result.server_crc:
            raise IntegrityError(
                f"CRC-64 of {key} read from {self.describe()} does not match OSS's",
                request_id=result.request_id,
            )
        return body

    def stat(self, key: str) -> ObjectInfo:
        name = self._name(key)
        with self._translating("stat", key):
            result = self._bucket.head_object(name)
        if result.content_length is None:
            raise IntegrityError(f"OSS sent no Content-Length for {key}", request_id=result.request_id)
        return ObjectInfo(key, int(result.content_length))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        oss2 = self._oss2
        start = len(self._root)
        pages = oss2.ObjectIteratorV2(self._bucket, prefix=self._root + prefix, max_keys=LIST_PAGE)
        with self._translating("list", prefix or "/"):
            for item in pages:
                if item.is_prefix():
                    continue
                yield ObjectInfo(item.key[start:], int(item.size))

    def delete(self, key: str) -> None:
        """Remove ``key``; :class:`NotFound` if absent (checked with a HEAD: OSS deletes idempotently)."""
        self.stat(key)
        with self._translating("delete", key):
            self._bucket.delete_object(self._name(key))

    def close(self) -> None:
        """Release pooled connections. Idempotent."""
        session = getattr(self._bucket, "session", None)
        inner = getattr(session, "session", None)
        if inner is not None:
            inner.close()


def _translate(exc: Exception, operation: str, key: str, where: str, secret: tuple[str, ...]) -> CasError:
    """The domain error for an ``oss2`` exception, with OSS's request id and never the secret."""
    if not hasattr(exc, "status"):  # a requests error that escaped oss2 while reading a body
        what = f"OSS {operation} of {key}" if key else f"OSS {operation}"
        return Unavailable(f"{what} in {where} failed: connection lost ({type(exc).__name__})")
    status = int(getattr(exc, "status", 0) or 0)
    code = str(getattr(exc, "code", "") or "")
    request_id = str(getattr(exc, "request_id", "") or "") or None
    what = f"OSS {operation} of {key}" if key else f"OSS {operation}"
    if status == _SDK_REQUEST_ERROR:
        inner = getattr(exc, "exception", None)
        reason = type(inner).__name__ if inner is not None else "connection error"
        return Unavailable(_redact(f"{what} in {where} failed: cannot reach OSS ({reason})", secret))
    if status == _SDK_INCONSISTENT:
        return IntegrityError(
            _redact(f"{what} in {where}: CRC-64 mismatch between client and OSS", secret),
            request_id=request_id,
        )
    if status == _SDK_CLIENT_ERROR:
        body = str(getattr(exc, "body", "") or exc)
        return ConfigurationError(_redact(f"{what} in {where} refused by the OSS SDK: {body}", secret))
    cls = _ERROR_TABLE.get((status, code)) or _ERROR_TABLE.get((status, None))
    if cls is None:
        cls = Unavailable if status >= 500 else CasError
    message = str(getattr(exc, "message", "") or "")
    text = f"{what} in {where} failed: {status} {code or 'error'}"
    if message:
        text += f": {message}"
    hint = _HINTS.get(cls)
    if hint:
        text += f" ({hint})"
    return cls(_redact(text, secret), request_id=request_id)


def _redact(text: str, secrets: tuple[str, ...]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def _md5(body: bytes) -> str:
    return base64.b64encode(hashlib.md5(body).digest()).decode("ascii")


def _slices(view: memoryview, part_size: int) -> Iterator[bytes]:
    """Parts of an in-memory payload, copied one part at a time."""
    for start in range(0, len(view), part_size):
        yield bytes(view[start : start + part_size])


def _stream_parts(head: bytes, stream: BinaryIO, part_size: int) -> Iterator[bytes]:
    """Parts of a file whose first bytes were already read into ``head``; one part read at a time."""
    pending = memoryview(head)
    while len(pending) >= part_size:
        yield bytes(pending[:part_size])
        pending = pending[part_size:]
    rest = bytes(pending)
    del pending, head
    while True:
        part = rest + read_up_to(stream, part_size - len(rest))
        rest = b""
        if not part:
            return
        yield part
        if len(part) < part_size:
            return


def _option(options: Mapping[str, object], name: str) -> str:
    value = options.get(name)
    if value is None or value == "":
        env = _ENV.get(name)
        value = os.environ.get(env, "") if env else ""
    if not value:
        source = f" (or environment variable {_ENV[name]})" if name in _ENV else ""
        raise ConfigurationError(f"OSS option {name}{source} is not set")
    if not isinstance(value, str):
        raise ConfigurationError(f"OSS option {name} must be a string")
    return value


def environment_fallbacks() -> dict[str, tuple[str, str]]:
    """The options :func:`from_url` takes from the environment when they are not given: option
    name -> (environment variable, its value now or "" when unset), always in the same order.

    For callers that check a configuration before opening a backend (the AIFlow managers), so they
    and :func:`from_url` agree on which variables stand in for which options.
    """
    return {name: (env, os.environ.get(env, "")) for name, env in _ENV.items()}


def _number(options: Mapping[str, object], name: str, kind: Callable[[Any], _N], default: _N) -> _N:
    value = options.get(name)
    if value is None:
        return default
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise ConfigurationError(f"OSS option {name} must be a number, got {value!r}") from None


def from_url(url: str, **options: object) -> OssBackend:
    """Open ``oss://bucket[/prefix]``.

    Options, named as AIFlow's ``OssBlobManager`` names them: ``access_key_id``,
    ``access_key_secret``, ``endpoint`` (falling back to ``OSS_ACCESS_KEY_ID``,
    ``OSS_ACCESS_KEY_SECRET``, ``OSS_ENDPOINT``), ``bucket`` (when the URL has no host) and
    ``root_directory`` (when the URL has no path); and ``part_size``, ``multipart_threshold``,
    ``connect_timeout``, ``read_timeout``. A missing setting raises :class:`ConfigurationError`
    naming it.
    """
    url_bucket, path = split_bucket_url(
        url, "oss", options, _OPTIONS,
        "use the access_key_id/access_key_secret options or OSS_ACCESS_KEY_ID/OSS_ACCESS_KEY_SECRET",
    )
    bucket = url_bucket or options.get("bucket")
    if url_bucket and options.get("bucket") and options["bucket"] != url_bucket:
        raise ConfigurationError(
            f"bucket {url_bucket!r} in the URL disagrees with option bucket {options['bucket']!r}"
        )
    if not bucket or not isinstance(bucket, str):
        raise ConfigurationError(
            "OSS option bucket is not set (give it as oss://bucket/prefix or the bucket option)"
        )
    prefix = path.strip("/") or str(options.get("root_directory") or "").strip("/")
    return OssBackend(
        bucket,
        prefix,
        endpoint=_option(options, "endpoint"),
        access_key_id=_option(options, "access_key_id"),
        access_key_secret=_option(options, "access_key_secret"),
        part_size=_number(options, "part_size", int, DEFAULT_PART_SIZE),
        multipart_threshold=_number(options, "multipart_threshold", int, DEFAULT_MULTIPART_THRESHOLD),
        connect_timeout=_number(options, "connect_timeout", float, DEFAULT_CONNECT_TIMEOUT),
        read_timeout=_number(options, "read_timeout", float, DEFAULT_READ_TIMEOUT),
    )


__all__ = ["OssBackend", "environment_fallbacks", "from_url"]
