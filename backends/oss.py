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

What OSS shares with S3 (parts, multipart with abort, ranges, delete) is
:class:`backends.objectstore.ObjectStoreBackend`; settings are read by :mod:`backends.oss_config`.
Every ``oss2`` failure goes through :func:`_translate`, one table from OSS's (status, code) to the
errors in :mod:`backends.errors`, raised ``from`` the SDK's exception with its request id.
The access key secret never appears in a message, a log line or :meth:`OssBackend.describe`.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import re
from collections.abc import Iterator
from typing import Any, NoReturn

from backends import errors
from backends.base import Capabilities, ObjectInfo, check_key
from backends.objectstore import ObjectStoreBackend, Upload
from backends.oss_config import MAX_PARTS, OssConfig, parse
from backends.redact import Secrets, endpoint_secrets, redact_endpoint

#: Keys asked for per list request: OSS's maximum.
LIST_PAGE = 1000
_OCTET_STREAM = "application/octet-stream"
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")

# (status, code) -> error class; a code of None matches any code with that status. Looked up by
# the exact pair first, then by status alone, then by status class.
_ERROR_TABLE: dict[tuple[int, str | None], type[errors.CasError]] = {
    (404, "NoSuchKey"): errors.NotFound,
    (404, "NoSuchBucket"): errors.ConfigurationError,
    (400, "InvalidBucketName"): errors.ConfigurationError,
    (409, "FileAlreadyExists"): errors.AlreadyExists,
    (403, "InvalidAccessKeyId"): errors.PermissionDenied,
    (403, "SignatureDoesNotMatch"): errors.PermissionDenied,
    (403, "AccessDenied"): errors.PermissionDenied,
    (403, "RequestTimeTooSkewed"): errors.ConfigurationError,  # the local clock is wrong
    (400, "InvalidDigest"): errors.IntegrityError,
    (404, "NoSuchUpload"): errors.Unavailable,  # aborted under us (lifecycle rule, another process)
    (403, None): errors.PermissionDenied,
    (404, None): errors.NotFound,
    (408, None): errors.Unavailable,
    (429, None): errors.Unavailable,
}
#: oss2's pseudo statuses for failures that never got an HTTP answer.
_SDK_CLIENT_ERROR = -1
_SDK_REQUEST_ERROR = -2
_SDK_INCONSISTENT = -3

#: The RAM action each request needs, named when OSS refuses it by policy (docs/ROLES.md).
_ACTIONS = {
    "put": "oss:PutObject",
    "get": "oss:GetObject",
    "stat": "oss:GetObject",
    "list": "oss:ListObjects",
    "delete": "oss:DeleteObject",
}

_HINTS = {
    errors.ConfigurationError: "check the bucket name, endpoint and clock",
    errors.PermissionDenied: "check access_key_id / access_key_secret (or OSS_ACCESS_KEY_ID / OSS_ACCESS_KEY_SECRET)",
}


def _import_sdk() -> tuple[Any, Any]:
    """``oss2`` and ``requests`` (oss2's transport, whose errors escape it while a body is read)."""
    try:
        import oss2
        import requests
    except ImportError as exc:
        raise errors.MissingDependency(
            f"the oss:// backend needs the oss2 package ({exc.name}): pip install 'cas-store[oss]'"
        ) from exc
    return oss2, requests


class OssBackend(ObjectStoreBackend):
    """Objects in one OSS bucket under an optional prefix. Thread-safe: ``oss2.Bucket`` is."""

    capabilities = Capabilities(remote=True, put_if_absent=True)

    def __init__(self, config: OssConfig) -> None:
        """Configure a client; no request is sent until the first operation."""
        oss2, requests = _import_sdk()
        if config.prefix.strip("/"):
            check_key(config.prefix.strip("/"))
        super().__init__(
            config.prefix,
            part_size=config.part_size,
            multipart_threshold=config.multipart_threshold,
            max_parts=MAX_PARTS,
            # Scrubbed from every message: the key secret and any credentials in the endpoint.
            secrets=Secrets(config.access_key_secret, *endpoint_secrets(config.endpoint)),
        )
        self.bucket_name = config.bucket
        self.endpoint = config.endpoint
        self._encryption = _encryption_headers(config)
        self._oss2 = oss2
        self._transport_error: type[Exception] = requests.RequestException
        # Our own session, so close() releases its pooled connections without reaching into oss2.
        self._session = oss2.Session()
        try:
            v4 = _signs_v4(oss2, config)
            auth = (oss2.AuthV4 if v4 else oss2.Auth)(config.access_key_id, config.access_key_secret)
            self._bucket: Any = oss2.Bucket(
                auth,
                self.endpoint,
                config.bucket,
                session=self._session,
                region=config.region if v4 else None,
                # requests takes (connect, read): a dead endpoint fails fast, a slow part does not.
                connect_timeout=(config.connect_timeout, config.read_timeout),
                enable_crc=True,
            )
        except oss2.exceptions.OssError as exc:
            self._raise(exc, "open", "")

    def describe(self) -> str:
        """``oss://bucket/prefix (endpoint ...)``; never a credential."""
        url = f"oss://{self.bucket_name}/{self.prefix}" if self.prefix else f"oss://{self.bucket_name}"
        return f"{url} (endpoint {redact_endpoint(self.endpoint)})"

    def close(self) -> None:
        """Release pooled connections. Idempotent."""
        self._session.session.close()  # oss2.Session holds a requests.Session as ``session``

    # -- errors --------------------------------------------------------------------------------

    def _where(self, key: str) -> str:
        return f"{key} in {self.describe()}"

    def _translate(self, exc: Exception, operation: str, key: str) -> errors.CasError:
        return _translate(exc, operation, key, self.describe(), self._secrets.values)

    def _is_sdk_error(self, exc: Exception) -> bool:
        return isinstance(exc, (self._oss2.exceptions.OssError, self._transport_error))

    def _raise(self, exc: Exception, operation: str, key: str) -> NoReturn:
        raise self._translate(exc, operation, key) from exc

    @contextlib.contextmanager
    def _translating(self, operation: str, key: str) -> Iterator[None]:
        """Turn any SDK or transport failure inside the block into a domain error."""
        try:
            yield
        except (self._oss2.exceptions.OssError, self._transport_error) as exc:
            self._raise(exc, operation, key)

    # -- the requests ObjectStoreBackend makes ---------------------------------------------------

    def _put_object(self, key: str, name: str, body: bytes, overwrite: bool) -> None:
        headers = {
            "Content-Type": _OCTET_STREAM, "Content-MD5": _md5(body), **_forbid_overwrite(overwrite), **self._encryption,
        }
        with self._translating("put", key):
            self._bucket.put_object(name, body, headers=headers)

    def _start_multipart(self, key: str, name: str, overwrite: bool) -> Upload:
        # The forbid-overwrite header goes on the initiation (fail early) and the completion (decide).
        headers = {"Content-Type": _OCTET_STREAM, **_forbid_overwrite(overwrite), **self._encryption}
        with self._translating("put", key):
            upload_id = self._bucket.init_multipart_upload(name, headers=headers).upload_id
        return Upload(key, name, upload_id, overwrite)

    def _upload_part(self, upload: Upload, number: int, body: bytes) -> Any:
        # Every part carries its Content-MD5; oss2 checks the CRC-64 OSS reports for it.
        result = self._bucket.upload_part(
            upload.name, upload.upload_id, number, body, headers={"Content-MD5": _md5(body)}
        )
        return self._oss2.models.PartInfo(number, result.etag, size=len(body), part_crc=result.crc)

    def _complete_multipart(self, upload: Upload) -> None:
        headers = _forbid_overwrite(upload.overwrite)
        self._bucket.complete_multipart_upload(upload.name, upload.upload_id, upload.parts, headers=headers)

    def _abort_multipart(self, upload: Upload) -> None:
        self._bucket.abort_multipart_upload(upload.name, upload.upload_id)

    def _read_object(self, key: str, name: str, byte_range: str | None) -> tuple[bytes, bool]:
        if byte_range is None:
            return self._get_whole(name, key), True
        headers = {"Range": byte_range, "x-oss-range-behavior": "standard"}
        with self._translating("get", key):
            try:
                result = self._bucket.get_object(name, headers=headers)
                body = result.read()
            except self._oss2.exceptions.ServerError as exc:
                if exc.status == 416:
                    return b"", False  # the range starts at or past the end (or the object is empty)
                raise
        if result.status != 206:
            return body, True  # the server ignored the range (compatible behaviour)
        content_range = result.headers.get("Content-Range") or ""
        match = _CONTENT_RANGE.match(content_range.strip())
        if match is None:
            raise errors.IntegrityError(
                f"OSS sent an unreadable Content-Range {content_range!r} for {key}",
                request_id=result.request_id,
            )
        first, last = int(match.group(1)), int(match.group(2))
        total = match.group(3)
        offset = int(byte_range[len("bytes=") :].split("-", 1)[0] or -1)  # -1: a suffix range
        misplaced = first != offset if offset >= 0 else (total != "*" and last != int(total) - 1)
        if misplaced or len(body) != last - first + 1:
            raise errors.IntegrityError(
                f"OSS answered range {content_range} for {byte_range} of {key}", request_id=result.request_id
            )
        return body, False

    def _get_whole(self, name: str, key: str) -> bytes:
        with self._translating("get", key):
            result = self._bucket.get_object(name)
            body = result.read()
        if result.server_crc is not None and result.client_crc != result.server_crc:
            raise errors.IntegrityError(
                f"CRC-64 of {key} read from {self.describe()} does not match OSS's",
                request_id=result.request_id,
            )
        return bytes(body)

    def _delete_object(self, key: str, name: str) -> None:
        with self._translating("delete", key):
            self._bucket.delete_object(name)

    # -- the rest of Backend ---------------------------------------------------------------------

    def stat(self, key: str) -> ObjectInfo:
        name = self._name(key)
        with self._translating("stat", key):
            result = self._bucket.head_object(name)
        if result.content_length is None:
            raise errors.IntegrityError(f"OSS sent no Content-Length for {key}", request_id=result.request_id)
        return ObjectInfo(key, int(result.content_length))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        start = len(self._root)
        pages = self._oss2.ObjectIteratorV2(self._bucket, prefix=self._root + prefix, max_keys=LIST_PAGE)
        with self._translating("list", prefix or "/"):
            for item in pages:
                if item.is_prefix():
                    continue
                yield ObjectInfo(item.key[start:], int(item.size))


def _forbid_overwrite(overwrite: bool) -> dict[str, str]:
    """OSS's put-if-absent: the server answers 409 ``FileAlreadyExists`` for a taken name."""
    return {} if overwrite else {"x-oss-forbid-overwrite": "true"}


def _signs_v4(oss2: Any, config: OssConfig) -> bool:
    """Whether requests are signed V4: asked for, or by default when oss2 can and the region is
    known. V4 asked of an oss2 without ``AuthV4`` is refused."""
    supported = hasattr(oss2, "AuthV4")
    if config.auth_version == "v4" and not supported:
        raise errors.ConfigurationError("OSS auth_version v4 needs an oss2 with V4 signing: pip install -U oss2")
    if config.auth_version is None:
        return supported and config.region is not None
    return config.auth_version == "v4"


def _encryption_headers(config: OssConfig) -> dict[str, str]:
    """What every upload (PutObject, InitiateMultipartUpload) sends for server-side encryption;
    OSS decrypts on reads by itself."""
    headers = {}
    if config.server_side_encryption:
        headers["x-oss-server-side-encryption"] = config.server_side_encryption
    if config.sse_kms_key_id:
        headers["x-oss-server-side-encryption-key-id"] = config.sse_kms_key_id
    return headers


def _translate(exc: Exception, operation: str, key: str, where: str, secret: tuple[str, ...]) -> errors.CasError:
    """The domain error for an ``oss2`` exception, with OSS's request id and never the secret."""
    if not hasattr(exc, "status"):  # a requests error that escaped oss2 while reading a body
        what = f"OSS {operation} of {key}" if key else f"OSS {operation}"
        return errors.Unavailable(f"{what} in {where} failed: connection lost ({type(exc).__name__})")
    status = int(getattr(exc, "status", 0) or 0)
    code = str(getattr(exc, "code", "") or "")
    request_id = str(getattr(exc, "request_id", "") or "") or None
    what = f"OSS {operation} of {key}" if key else f"OSS {operation}"
    if status == _SDK_REQUEST_ERROR:
        inner = getattr(exc, "exception", None)
        reason = type(inner).__name__ if inner is not None else "connection error"
        return errors.Unavailable(_scrub(f"{what} in {where} failed: cannot reach OSS ({reason})", secret))
    if status == _SDK_INCONSISTENT:
        return errors.IntegrityError(
            _scrub(f"{what} in {where}: CRC-64 mismatch between client and OSS", secret),
            request_id=request_id,
        )
    if status == _SDK_CLIENT_ERROR:
        body = str(getattr(exc, "body", "") or exc)
        return errors.ConfigurationError(_scrub(f"{what} in {where} refused by the OSS SDK: {body}", secret))
    cls = _ERROR_TABLE.get((status, code)) or _ERROR_TABLE.get((status, None))
    if cls is None:
        cls = errors.Unavailable if status >= 500 else errors.CasError
    message = str(getattr(exc, "message", "") or "")
    text = f"{what} in {where} failed: {status} {code or 'error'}"
    if message:
        text += f": {message}"
    hint = _HINTS.get(cls)
    if status == 403 and code == "AccessDenied" and operation in _ACTIONS:
        hint = f"this identity needs {_ACTIONS[operation]} on it; see docs/ROLES.md"
        if operation == "put":
            hint += "; or the bucket policy requires server-side encryption: see the options " \
                "server_side_encryption, sse_kms_key_id"
    if hint:
        text += f" ({hint})"
    return cls(_scrub(text, secret), request_id=request_id)


def _scrub(text: str, secrets: tuple[str, ...]) -> str:
    return Secrets(*secrets).scrub(text)


def _md5(body: bytes) -> str:
    return base64.b64encode(hashlib.md5(body).digest()).decode("ascii")


def from_url(url: str, **options: object) -> OssBackend:
    """Open ``oss://bucket[/prefix]``; options as :func:`backends.oss_config.parse` reads them."""
    return OssBackend(parse(url, options))


__all__ = ["OssBackend", "from_url"]
