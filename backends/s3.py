"""Amazon S3 (and S3-compatible) backend: one S3 object per key under ``bucket/prefix/``.

boto3 is imported here and nowhere else, and only when a backend is built, so ``backends`` costs
nothing without it. Credentials come from the options or from the standard AWS chain
(environment, shared config files, SSO, container/instance metadata). Secrets given as options are
handed to the SDK and never kept on the backend, printed, logged or put into an error message.

Behaviour worth knowing:

* ``put(..., overwrite=False)`` sends ``If-None-Match: *`` (S3 conditional writes, also on
  ``CompleteMultipartUpload``), so the server decides who wins a race; a lost race is
  :class:`AlreadyExists`. Servers that ignore the header would silently overwrite; AWS S3 and moto
  honour it.
* Objects larger than ``multipart_threshold`` go up as a multipart upload read part by part from
  the payload, so at most one part (plus the first ``multipart_threshold`` bytes while deciding) is
  in memory. A failed multipart upload is aborted; nothing is visible under the key until the
  upload completes.
* The SDK's own retries are off by default (``sdk_attempts=1``): retrying is the job of
  :class:`backends.retry.RetryingBackend`, and two layers of retries multiply each other's delays.
* Every SDK failure goes through one table (:func:`_translate`) to the fixed error set, raised
  ``from`` the SDK error with the request id kept.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, BinaryIO

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

if TYPE_CHECKING:  # pragma: no cover - typing only
    from botocore.client import BaseClient  # type: ignore[import-untyped]

_log = logging.getLogger(__name__)

MIB = 1024 * 1024
#: S3's own limits on multipart uploads.
MIN_PART_SIZE = 5 * MIB
MAX_PART_SIZE = 5 * 1024 * MIB
MAX_PARTS = 10_000

DEFAULT_MULTIPART_THRESHOLD = 64 * MIB
DEFAULT_PART_SIZE = 16 * MIB
DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_READ_TIMEOUT = 60.0

# S3 error code -> domain error. Codes not listed fall back to the HTTP status (see _translate).
_ERROR_CODES: Mapping[str, type[CasError]] = {
    "NoSuchKey": NotFound,
    "NotFound": NotFound,
    "404": NotFound,
    "PreconditionFailed": AlreadyExists,
    "412": AlreadyExists,
    "ConditionalRequestConflict": AlreadyExists,
    "AccessDenied": PermissionDenied,
    "InvalidAccessKeyId": PermissionDenied,
    "SignatureDoesNotMatch": PermissionDenied,
    "ExpiredToken": PermissionDenied,
    "InvalidToken": PermissionDenied,
    "TokenRefreshRequired": PermissionDenied,
    "AllAccessDisabled": PermissionDenied,
    "AccountProblem": PermissionDenied,
    "403": PermissionDenied,
    "NoSuchBucket": ConfigurationError,
    "InvalidBucketName": ConfigurationError,
    "PermanentRedirect": ConfigurationError,
    "AuthorizationHeaderMalformed": ConfigurationError,
    "IllegalLocationConstraintException": ConfigurationError,
    "InvalidArgument": ConfigurationError,
    "EntityTooSmall": ConfigurationError,
    "EntityTooLarge": ConfigurationError,
    "SlowDown": Unavailable,
    "Throttling": Unavailable,
    "ThrottlingException": Unavailable,
    "RequestLimitExceeded": Unavailable,
    "TooManyRequestsException": Unavailable,
    "RequestTimeout": Unavailable,
    "RequestTimeTooSkewed": Unavailable,
    "InternalError": Unavailable,
    "ServiceUnavailable": Unavailable,
    "OperationAborted": Unavailable,
}

_HINTS: Mapping[type[CasError], str] = {
    PermissionDenied: "check the credentials (access key, secret, session token) and the bucket policy",
    ConfigurationError: "check the bucket name, region and endpoint_url",
    Unavailable: "the service could not be reached or is overloaded; retrying may help",
}

_OPTIONS = frozenset(
    {
        "endpoint_url",
        "region_name",
        "addressing_style",
        "access_key_id",
        "secret_access_key",
        "session_token",
        "profile_name",
        "multipart_threshold",
        "part_size",
        "connect_timeout",
        "read_timeout",
        "sdk_attempts",
        "max_pool_connections",
    }
)


class S3Backend(Backend):
    """Objects under ``s3://bucket/prefix/``; keys map to ``prefix/key``.

    ``put`` is atomic (S3 shows an object only once its upload completes) and, with
    ``overwrite=False``, decided by the server through ``If-None-Match: *``. ``delete`` raises
    :class:`NotFound` for an absent key even though S3's DeleteObject succeeds either way: it
    asks HeadObject first, so a concurrent delete between the two calls can make both callers
    succeed. Thread safe: one boto3 client is shared, and boto3 clients are.
    """

    capabilities = Capabilities(atomic_put=True, conditional_put=True, range_reads=True)

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region_name: str | None = None,
        addressing_style: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        session_token: str | None = None,
        profile_name: str | None = None,
        multipart_threshold: int = DEFAULT_MULTIPART_THRESHOLD,
        part_size: int = DEFAULT_PART_SIZE,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        read_timeout: float = DEFAULT_READ_TIMEOUT,
        sdk_attempts: int = 1,
        max_pool_connections: int = 10,
    ) -> None:
        """Build the client; nothing is sent over the network until the first call.

        ``endpoint_url`` defaults to ``$AWS_ENDPOINT_URL_S3`` then ``$AWS_ENDPOINT_URL``. With a
        custom endpoint the default ``addressing_style`` is ``"path"`` (what S3-compatible servers
        on an IP or ``localhost`` need), otherwise the SDK's ``"auto"``. ``part_size`` must lie in
        S3's 5 MiB..5 GiB; an upload needing more than 10,000 parts fails with
        :class:`ConfigurationError` (raise ``part_size``). Timeouts are in seconds and finite.
        """
        if not bucket:
            raise ConfigurationError("S3 URL has no bucket: use s3://bucket/prefix")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self._root = self.prefix + "/" if self.prefix else ""
        if endpoint_url is None:
            endpoint_url = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None
        self.endpoint_url = endpoint_url
        if part_size < MIN_PART_SIZE or part_size > MAX_PART_SIZE:
            raise ConfigurationError(
                f"S3 part_size must be between {MIN_PART_SIZE} and {MAX_PART_SIZE} bytes, got {part_size}"
            )
        if multipart_threshold < 0:
            raise ConfigurationError(
                f"S3 multipart_threshold must not be negative, got {multipart_threshold}"
            )
        self.multipart_threshold = multipart_threshold
        self.part_size = part_size
        for name, value in (("connect_timeout", connect_timeout), ("read_timeout", read_timeout)):
            if not (value > 0 and math.isfinite(value)):
                raise ConfigurationError(f"S3 {name} must be a positive number of seconds, got {value}")
        if sdk_attempts < 1:
            raise ConfigurationError(f"S3 sdk_attempts must be at least 1, got {sdk_attempts}")
        if addressing_style is None:
            addressing_style = "path" if endpoint_url else "auto"
        if addressing_style not in ("auto", "path", "virtual"):
            raise ConfigurationError(
                f"S3 addressing_style must be 'auto', 'path' or 'virtual', got {addressing_style!r}"
            )
        if (access_key_id is None) != (secret_access_key is None):
            raise ConfigurationError("S3 access_key_id and secret_access_key must be given together")
        # Kept only to scrub them from messages, behind a repr that never shows them.
        self._secrets = _Secrets(
            tuple(s for s in (secret_access_key, session_token) if s) + endpoint_secrets(endpoint_url)
        )

        try:
            import boto3  # type: ignore[import-untyped]
            from botocore.config import Config  # type: ignore[import-untyped]
        except ImportError as exc:
            raise MissingDependency(
                f"the s3:// backend needs boto3 ({exc.name} is missing): pip install 'cas-store[s3]'"
            ) from exc
        config = Config(
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            retries={"total_max_attempts": sdk_attempts, "mode": "standard"},
            s3={"addressing_style": addressing_style},
            max_pool_connections=max_pool_connections,
        )
        try:
            session = boto3.session.Session(
                aws_access_key_id=access_key_id,
                aws_secret_access_key=secret_access_key,
                aws_session_token=session_token,
                region_name=region_name,
                profile_name=profile_name,
            )
            self._client: BaseClient = session.client("s3", endpoint_url=endpoint_url, config=config)
        except Exception as exc:
            raise self._translate(exc, "connect", "") from exc
        self._closed = False

    # -- helpers -------------------------------------------------------------------------------

    def describe(self) -> str:
        """``s3://bucket/prefix``, plus the endpoint when it is not AWS's; never a secret."""
        url = f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"
        if self.endpoint_url:
            url += f" (endpoint {redact_endpoint(self.endpoint_url)})"
        return url

    def _key(self, key: str) -> str:
        return self._root + check_key(key)

    def _translate(self, exc: BaseException, operation: str, key: str) -> CasError:
        """Map an SDK failure to the fixed error set; the message names the object and a fix."""
        return _translate(exc, operation, self._where(key), self._secrets.values)

    def _where(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._root}{key}"

    # -- Backend -------------------------------------------------------------------------------

    def put(self, key: str, data: bytes | memoryview | BinaryIO, *, overwrite: bool = True) -> None:
        name = self._key(key)
        conditional: dict[str, Any] = {} if overwrite else {"IfNoneMatch": "*"}
        if isinstance(data, (bytes, bytearray, memoryview)):
            view = memoryview(data).cast("B")
            if len(view) <= self.multipart_threshold:
                self._put_single(key, name, data if isinstance(data, bytes) else bytes(view), conditional)
            else:
                parts = (bytes(view[i : i + self.part_size]) for i in range(0, len(view), self.part_size))
                self._put_multipart(key, name, parts, conditional)
            return
        # A stream: read until we know whether it fits under the threshold.
        head: list[bytes] = []
        buffered = 0
        while buffered <= self.multipart_threshold:
            block = read_up_to(data, min(self.part_size, self.multipart_threshold + 1 - buffered))
            if not block:
                break
            head.append(block)
            buffered += len(block)
        if buffered <= self.multipart_threshold:
            body = b"".join(head)
            head.clear()
            self._put_single(key, name, body, conditional)
            return
        self._put_multipart(key, name, _stream_parts(head, data, self.part_size), conditional)

    def _put_single(self, key: str, name: str, body: bytes, conditional: dict[str, Any]) -> None:
        try:
            self._client.put_object(Bucket=self.bucket, Key=name, Body=body, **conditional)
        except Exception as exc:
            raise self._translate(exc, "put", key) from exc

    def _put_multipart(
        self, key: str, name: str, parts: Iterator[bytes], conditional: dict[str, Any]
    ) -> None:
        if conditional and self.exists(key):
            # Cheap early answer before uploading gigabytes; the server still decides at the end.
            raise AlreadyExists(f"object already exists: {self._where(key)}")
        try:
            upload_id = self._client.create_multipart_upload(
                Bucket=self.bucket, Key=name, ChecksumAlgorithm="CRC32"
            )["UploadId"]
        except Exception as exc:
            raise self._translate(exc, "put", key) from exc
        try:
            done: list[dict[str, Any]] = []
            for number, body in enumerate(parts, start=1):
                if number > MAX_PARTS:
                    raise ConfigurationError(
                        f"{self._where(key)} needs more than {MAX_PARTS} parts of {self.part_size} bytes: "
                        "raise the part_size option"
                    )
                resp = self._client.upload_part(
                    Bucket=self.bucket,
                    Key=name,
                    UploadId=upload_id,
                    PartNumber=number,
                    Body=body,
                    ChecksumAlgorithm="CRC32",
                )
                part = {"PartNumber": number, "ETag": resp["ETag"]}
                if resp.get("ChecksumCRC32"):
                    part["ChecksumCRC32"] = resp["ChecksumCRC32"]
                done.append(part)
            self._client.complete_multipart_upload(
                Bucket=self.bucket,
                Key=name,
                UploadId=upload_id,
                MultipartUpload={"Parts": done},
                **conditional,
            )
        except BaseException as exc:
            self._abort(name, upload_id)
            if isinstance(exc, CasError):
                raise
            if isinstance(exc, Exception):
                raise self._translate(exc, "put", key) from exc
            raise

    def _abort(self, name: str, upload_id: str) -> None:
        try:
            self._client.abort_multipart_upload(Bucket=self.bucket, Key=name, UploadId=upload_id)
        except Exception as exc:  # noqa: BLE001 - best effort; a lifecycle rule cleans up what is left
            _log.warning(
                "could not abort multipart upload of s3://%s/%s: %s", self.bucket, name, type(exc).__name__
            )

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        name = self._key(key)
        if length is not None and length < 0:
            raise ConfigurationError(f"negative length {length} reading {self._where(key)}")
        if length == 0:
            self.stat(key)  # still NotFound for a missing key
            return b""
        if offset < 0:
            byte_range: str | None = f"bytes={offset}"  # suffix range: the last -offset bytes
        elif length is None:
            byte_range = f"bytes={offset}-" if offset else None
        else:
            byte_range = f"bytes={offset}-{offset + length - 1}"
        request: dict[str, Any] = {"Bucket": self.bucket, "Key": name}
        if byte_range:
            request["Range"] = byte_range
        try:
            resp = self._client.get_object(**request)
            body = resp["Body"]
            try:
                data: bytes = body.read()
            finally:
                body.close()
        except Exception as exc:
            if _error_code(exc) == "InvalidRange" or _status(exc) == 416:
                return b""  # the object exists (else NoSuchKey) but the range starts past its end
            raise self._translate(exc, "get", key) from exc
        if byte_range and resp.get("ResponseMetadata", {}).get("HTTPStatusCode") == 200:
            # The server ignored Range and sent the whole object: cut the range out ourselves.
            data = data[offset:] if offset < 0 or length is None else data[offset : offset + length]
        if offset < 0 and length is not None:
            data = data[:length]
        return data

    def stat(self, key: str) -> ObjectInfo:
        try:
            resp = self._client.head_object(Bucket=self.bucket, Key=self._key(key))
        except Exception as exc:
            raise self._translate(exc, "stat", key) from exc
        return ObjectInfo(key, int(resp["ContentLength"]))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        paginator = self._client.get_paginator("list_objects_v2")
        pages = paginator.paginate(Bucket=self.bucket, Prefix=self._root + prefix)
        try:
            for page in pages:
                for item in page.get("Contents", ()):
                    yield ObjectInfo(item["Key"][len(self._root) :], int(item["Size"]))
        except Exception as exc:
            raise self._translate(exc, "list", prefix) from exc

    def delete(self, key: str) -> None:
        """Remove ``key``; :class:`NotFound` if absent.

        S3's DeleteObject succeeds whether or not the key exists, so this asks HeadObject first.
        The two calls are not atomic: a concurrent delete between them makes both callers succeed.
        """
        self.stat(key)
        try:
            self._client.delete_object(Bucket=self.bucket, Key=self._key(key))
        except Exception as exc:
            raise self._translate(exc, "delete", key) from exc

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            close = getattr(self._client, "close", None)
            if close is not None:
                close()


class _Secrets:
    """Secret strings that must be scrubbed from messages; ``repr`` never shows them."""

    __slots__ = ("values",)

    def __init__(self, values: tuple[str, ...]) -> None:
        self.values = values

    def __repr__(self) -> str:
        return f"<{len(self.values)} redacted>"


def _stream_parts(head: list[bytes], stream: BinaryIO, part_size: int) -> Iterator[bytes]:
    """Parts of exactly ``part_size`` bytes (the last may be shorter): ``head`` then the stream.

    ``head`` blocks are each at most ``part_size``; they are released as they are consumed, so
    memory stays near one part beyond what was already buffered.
    """
    pending = bytearray()
    while head:
        pending += head.pop(0)
        if len(pending) >= part_size:
            yield bytes(pending[:part_size])
            del pending[:part_size]
    while True:
        block = read_up_to(stream, part_size - len(pending))
        pending += block
        if len(pending) >= part_size or (not block and pending):
            yield bytes(pending)
            pending = bytearray()
        if not block:
            return


def _error_code(exc: BaseException) -> str | None:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        code = response.get("Error", {}).get("Code")
        return str(code) if code is not None else None
    return None


def _status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return int(status) if status is not None else None
    return None


def _request_id(exc: BaseException) -> str | None:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        meta = response.get("ResponseMetadata", {})
        rid = meta.get("RequestId") or response.get("Error", {}).get("RequestId")
        return str(rid) if rid else None
    return None


def _scrub(text: str, secrets: tuple[str, ...]) -> str:
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


def _translate(exc: BaseException, operation: str, where: str, secrets: tuple[str, ...] = ()) -> CasError:
    """The one translation table from boto3/botocore failures to the fixed error set."""
    if isinstance(exc, CasError):
        return exc
    from botocore import exceptions as bexc  # type: ignore[import-untyped]

    if isinstance(exc, bexc.ClientError):
        code = _error_code(exc) or ""
        status = _status(exc)
        kind = _ERROR_CODES.get(code)
        if kind is None and status is not None:
            if status >= 500 or status == 429:
                kind = Unavailable
            elif status == 404:
                kind = NotFound
            elif status == 403:
                kind = PermissionDenied
            elif status == 412:
                kind = AlreadyExists
        if kind is None:
            kind = CasError
        if kind is NotFound:
            message = f"object not found: {where}"
        elif kind is AlreadyExists:
            message = f"object already exists: {where}"
        else:
            detail = exc.response.get("Error", {}).get("Message") or ""
            message = f"S3 {operation} {where} failed: {code or status} {detail}".rstrip()
            hint = _HINTS.get(kind)
            if hint:
                message += f" ({hint})"
        return kind(_scrub(message, secrets), request_id=_request_id(exc))
    if isinstance(exc, (bexc.NoCredentialsError, bexc.PartialCredentialsError)):
        return ConfigurationError(
            f"S3 {operation} {where}: no usable AWS credentials ({type(exc).__name__}); set "
            "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, a profile, or the access_key_id/secret_access_key options"
        )
    if isinstance(exc, (bexc.ChecksumError, bexc.FlexibleChecksumError)):
        return IntegrityError(f"S3 {operation} {where}: checksum mismatch: {_scrub(str(exc), secrets)}")
    if isinstance(exc, (bexc.ConnectionError, bexc.HTTPClientError, bexc.IncompleteReadError)):
        return Unavailable(f"S3 {operation} {where} failed: {_scrub(str(exc), secrets)}")
    if isinstance(exc, (bexc.ParamValidationError, bexc.InvalidEndpointConfigurationError, ValueError)):
        return ConfigurationError(f"S3 {operation} {where}: {_scrub(str(exc), secrets)}")
    if isinstance(exc, bexc.ProfileNotFound):
        return ConfigurationError(f"S3: {_scrub(str(exc), secrets)}")
    if isinstance(exc, (OSError, TimeoutError)):
        return Unavailable(f"S3 {operation} {where} failed: {_scrub(str(exc), secrets)}")
    return CasError(f"S3 {operation} {where} failed: {type(exc).__name__}: {_scrub(str(exc), secrets)}")


def _number(options: dict[str, Any], name: str, kind: type[int | float]) -> None:
    """Coerce a numeric option that may arrive as a string (from a URL or config file)."""
    if name in options and options[name] is not None:
        value = options[name]
        try:
            options[name] = kind(value)
        except (TypeError, ValueError) as exc:
            raise ConfigurationError(f"S3 option {name} must be a number, got {value!r}") from exc


def from_url(url: str, **options: Any) -> S3Backend:
    """Open ``s3://bucket[/prefix]``; ``options`` are :class:`S3Backend`'s keyword arguments."""
    bucket, path = split_bucket_url(
        url, "s3", options, _OPTIONS,
        "use the AWS credential chain or the access_key_id/secret_access_key options",
    )
    for name in ("multipart_threshold", "part_size", "sdk_attempts", "max_pool_connections"):
        _number(options, name, int)
    for name in ("connect_timeout", "read_timeout"):
        _number(options, name, float)
    return S3Backend(bucket, path, **options)


__all__ = ["S3Backend", "from_url"]
