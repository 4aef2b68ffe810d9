"""Amazon S3 (and S3-compatible) backend: one S3 object per key under ``bucket/prefix/``.

botocore (boto3's core, installed with boto3 by the ``s3`` extra) is imported here and nowhere else,
and only when a backend is built, so ``backends`` costs nothing without it. The SDK's service
descriptions (megabytes of JSON) are parsed once per process and shared by every backend built in
it (:func:`_sdk_session`): parsing them again for each backend cost about 0.38 s a backend.
Settings and credentials are read by :mod:`backends.s3_config`; secrets are handed to the SDK and
never kept on the backend, printed, logged or put into an error message.
What S3 shares with OSS (parts, multipart with abort, ranges, delete) is
:class:`backends.objectstore.ObjectStoreBackend`; this module says how S3 does each request:

* ``put(..., overwrite=False)`` sends ``If-None-Match: *`` (S3 conditional writes, also on
  ``CompleteMultipartUpload``), so the server decides who wins a race; a lost race is
  :class:`AlreadyExists`. Servers that ignore the header would silently overwrite; AWS S3 and moto
  honour it.
* Parts carry a CRC32 checksum the server verifies.
* Every SDK failure goes through one table (:func:`_translate`) to the fixed error set, raised
  ``from`` the SDK error with the request id kept.
"""

from __future__ import annotations

import base64
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from backends import errors
from backends.base import Capabilities, ObjectInfo
from backends.objectstore import ObjectStoreBackend, Upload
from backends.redact import Secrets, endpoint_secrets, redact_endpoint
from backends.s3_config import MAX_PARTS, MIN_PART_SIZE, S3Config, parse

if TYPE_CHECKING:  # pragma: no cover - typing only
    from collections.abc import Iterator

    from botocore.client import BaseClient  # type: ignore[import-untyped]

_loader_lock = threading.Lock()
_shared_loader: Any = None
"""The SDK's data loader of the first backend built in this process, given to every later one: it
keeps what it has parsed (the S3 service description, endpoint rules, partitions)."""


def _sdk_session(config: S3Config) -> Any:
    """A botocore session of its own for one backend (its credentials, region and profile), reading
    the SDK's data through the process's shared loader. The loader only reads the SDK's packaged
    files and keeps what it parsed; a race between two first parses only parses twice."""
    global _shared_loader
    import botocore.session  # type: ignore[import-untyped]

    session = botocore.session.get_session()
    with _loader_lock:
        if _shared_loader is None:
            _shared_loader = session.get_component("data_loader")
        else:
            session.register_component("data_loader", _shared_loader)
    if config.profile_name is not None:
        session.set_config_variable("profile", config.profile_name)
    if config.access_key_id or config.secret_access_key or config.session_token:
        session.set_credentials(config.access_key_id, config.secret_access_key, config.session_token)
    if config.region_name is not None:
        session.set_config_variable("region", config.region_name)
    return session


# S3 error code -> domain error. Codes not listed fall back to the HTTP status (see _translate).
_ERROR_CODES: Mapping[str, type[errors.CasError]] = {
    "NoSuchKey": errors.NotFound,
    "errors.NotFound": errors.NotFound,
    "404": errors.NotFound,
    "PreconditionFailed": errors.AlreadyExists,
    "412": errors.AlreadyExists,
    "ConditionalRequestConflict": errors.AlreadyExists,
    "AccessDenied": errors.PermissionDenied,
    "InvalidAccessKeyId": errors.PermissionDenied,
    "SignatureDoesNotMatch": errors.PermissionDenied,
    "ExpiredToken": errors.PermissionDenied,
    "InvalidToken": errors.PermissionDenied,
    "TokenRefreshRequired": errors.PermissionDenied,
    "AllAccessDisabled": errors.PermissionDenied,
    "AccountProblem": errors.PermissionDenied,
    "403": errors.PermissionDenied,
    "NoSuchBucket": errors.ConfigurationError,
    "InvalidBucketName": errors.ConfigurationError,
    "PermanentRedirect": errors.ConfigurationError,
    "AuthorizationHeaderMalformed": errors.ConfigurationError,
    "IllegalLocationConstraintException": errors.ConfigurationError,
    "InvalidArgument": errors.ConfigurationError,
    "InvalidRequest": errors.ConfigurationError,
    "EntityTooSmall": errors.ConfigurationError,
    "EntityTooLarge": errors.ConfigurationError,
    "SlowDown": errors.Unavailable,
    "Throttling": errors.Unavailable,
    "ThrottlingException": errors.Unavailable,
    "RequestLimitExceeded": errors.Unavailable,
    "TooManyRequestsException": errors.Unavailable,
    "RequestTimeout": errors.Unavailable,
    "RequestTimeTooSkewed": errors.Unavailable,
    "InternalError": errors.Unavailable,
    "ServiceUnavailable": errors.Unavailable,
    "OperationAborted": errors.Unavailable,
}

#: The IAM action each request needs, named when the server refuses it (docs/ROLES.md).
_ACTIONS: Mapping[str, str] = {
    "put": "s3:PutObject",
    "get": "s3:GetObject",
    "stat": "s3:GetObject",
    "list": "s3:ListBucket",
    "delete": "s3:DeleteObject",
}
#: Keys asked for per list request: S3's maximum, what it returns when not asked.
LIST_PAGE = 1000
#: Refusals by policy, as opposed to credentials the server does not accept.
_POLICY_REFUSALS = frozenset({"AccessDenied", "AllAccessDisabled", "403"})

_HINTS: Mapping[type[errors.CasError], str] = {
    errors.PermissionDenied: "check the credentials (access key, secret, session token) and the bucket policy",
    errors.ConfigurationError: "check the bucket name, region and endpoint_url",
    errors.Unavailable: "the service could not be reached or is overloaded; retrying may help",
}


class S3Backend(ObjectStoreBackend):
    """Objects under ``s3://bucket/prefix/``; keys map to ``prefix/key``.

    ``put`` is atomic (S3 shows an object only once its upload completes) and, with
    ``overwrite=False``, decided by the server through ``If-None-Match: *``. Thread safe: one
    boto3 client is shared, and boto3 clients are.
    """

    capabilities = Capabilities(remote=True, put_if_absent=True)

    def __init__(self, config: S3Config) -> None:
        """Build the client; nothing is sent over the network until the first call."""
        super().__init__(
            config.prefix,
            part_size=config.part_size,
            multipart_threshold=config.multipart_threshold,
            max_parts=MAX_PARTS,
            secrets=Secrets(
                config.secret_access_key, config.session_token, *endpoint_secrets(config.endpoint_url),
                *_key_texts(config.sse_customer_key),
            ),
        )
        self.bucket = config.bucket
        self._upload_args, self._read_args = _encryption_args(config)
        self.endpoint_url = config.endpoint_url
        try:
            from botocore.config import Config  # type: ignore[import-untyped]
        except ImportError as exc:
            raise errors.MissingDependency(
                f"the s3:// backend needs boto3 ({exc.name} is missing): pip install 'cas-store[s3]'"
            ) from exc
        sdk_config = Config(
            connect_timeout=config.connect_timeout,
            read_timeout=config.read_timeout,
            retries={"total_max_attempts": config.sdk_attempts, "mode": "standard"},
            s3={"addressing_style": config.addressing_style},
            max_pool_connections=config.max_pool_connections,
        )
        try:
            self._client: BaseClient = _sdk_session(config).create_client(
                "s3", endpoint_url=config.endpoint_url, config=sdk_config
            )
        except Exception as exc:
            raise self._translate(exc, "connect", "") from exc
        self._closed = False

    def describe(self) -> str:
        """``s3://bucket/prefix``, plus the endpoint when it is not AWS's; never a secret."""
        url = f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"
        if self.endpoint_url:
            url += f" (endpoint {redact_endpoint(self.endpoint_url)})"
        return url

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._client.close()

    # -- the requests ObjectStoreBackend makes ---------------------------------------------------

    def _where(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._root}{key}"

    def _translate(self, exc: BaseException, operation: str, key: str) -> errors.CasError:
        """Map an SDK failure to the fixed error set; the message names the object and a fix."""
        return _translate(exc, operation, self._where(key), self._secrets.values)

    def _is_sdk_error(self, exc: Exception) -> bool:
        return True  # botocore raises a wide set of types; the table knows them all

    def _put_object(self, key: str, name: str, body: bytes, overwrite: bool) -> None:
        try:
            self._client.put_object(
                Bucket=self.bucket, Key=name, Body=body, **_if_none_match(overwrite), **self._upload_args
            )
        except Exception as exc:
            raise self._translate(exc, "put", key) from exc

    def _start_multipart(self, key: str, name: str, overwrite: bool) -> Upload:
        if not overwrite and self.exists(key):
            # Cheap early answer before uploading gigabytes; the server still decides at the end.
            raise errors.AlreadyExists(f"object already exists: {self._where(key)}")
        try:
            upload_id = self._client.create_multipart_upload(
                Bucket=self.bucket, Key=name, ChecksumAlgorithm="CRC32", **self._upload_args
            )["UploadId"]
        except Exception as exc:
            raise self._translate(exc, "put", key) from exc
        return Upload(key, name, upload_id, overwrite)

    def _upload_part(self, upload: Upload, number: int, body: bytes) -> dict[str, Any]:
        resp = self._client.upload_part(
            Bucket=self.bucket,
            Key=upload.name,
            UploadId=upload.upload_id,
            PartNumber=number,
            Body=body,
            ChecksumAlgorithm="CRC32",
            **self._read_args,  # SSE-C: every part carries the key
        )
        part = {"PartNumber": number, "ETag": resp["ETag"]}
        if resp.get("ChecksumCRC32"):
            part["ChecksumCRC32"] = resp["ChecksumCRC32"]
        return part

    def _complete_multipart(self, upload: Upload) -> None:
        self._client.complete_multipart_upload(
            Bucket=self.bucket,
            Key=upload.name,
            UploadId=upload.upload_id,
            MultipartUpload={"Parts": upload.parts},
            **_if_none_match(upload.overwrite),
            **self._read_args,
        )

    def _abort_multipart(self, upload: Upload) -> None:
        self._client.abort_multipart_upload(Bucket=self.bucket, Key=upload.name, UploadId=upload.upload_id)

    def _read_object(self, key: str, name: str, byte_range: str | None) -> tuple[bytes, bool]:
        request: dict[str, Any] = {"Bucket": self.bucket, "Key": name, **self._read_args}
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
                return b"", False  # the object exists (else NoSuchKey) but the range starts past its end
            raise self._translate(exc, "get", key) from exc
        # 200 rather than 206: the server ignored Range and sent the whole object.
        return data, resp.get("ResponseMetadata", {}).get("HTTPStatusCode") == 200

    def _delete_object(self, key: str, name: str) -> None:
        try:
            self._client.delete_object(Bucket=self.bucket, Key=name)
        except Exception as exc:
            raise self._translate(exc, "delete", key) from exc

    # -- the rest of Backend ---------------------------------------------------------------------

    def stat(self, key: str) -> ObjectInfo:
        try:
            resp = self._client.head_object(Bucket=self.bucket, Key=self._name(key), **self._read_args)
        except Exception as exc:
            raise self._translate(exc, "stat", key) from exc
        return ObjectInfo(key, int(resp["ContentLength"]))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        paginator = self._client.get_paginator("list_objects_v2")
        pages = paginator.paginate(Bucket=self.bucket, Prefix=self._root + prefix,
                                   PaginationConfig={"PageSize": LIST_PAGE})
        try:
            for page in pages:
                for item in page.get("Contents", ()):
                    yield ObjectInfo(item["Key"][len(self._root) :], int(item["Size"]))
        except Exception as exc:
            raise self._translate(exc, "list", prefix) from exc


def _encryption_args(config: S3Config) -> tuple[dict[str, Any], dict[str, Any]]:
    """The SDK arguments for server-side encryption: ``(on uploads, on reads)``. SSE-S3 and SSE-KMS
    are named on uploads only (S3 decrypts on its own); an SSE-C key goes with every upload, part,
    GET and HEAD, since S3 keeps only its hash."""
    if config.sse_customer_key is not None:
        customer = {"SSECustomerAlgorithm": "AES256", "SSECustomerKey": config.sse_customer_key}
        return dict(customer), dict(customer)
    upload: dict[str, Any] = {}
    if config.server_side_encryption:
        upload["ServerSideEncryption"] = config.server_side_encryption
    if config.sse_kms_key_id:
        upload["SSEKMSKeyId"] = config.sse_kms_key_id
    return upload, {}


def _key_texts(key: bytes | None) -> tuple[str, ...]:
    """How an SSE-C key could appear in a message: as given (base64) and as latin-1 text."""
    if key is None:
        return ()
    return (base64.b64encode(key).decode("ascii"), key.decode("latin-1"))


def _if_none_match(overwrite: bool) -> dict[str, str]:
    """S3's put-if-absent: the server answers 412 (or 409 for a race) for a taken name."""
    return {} if overwrite else {"IfNoneMatch": "*"}


def _response(exc: BaseException) -> dict[str, Any]:
    """The parsed error response botocore attaches to a ``ClientError`` (empty for other errors)."""
    response = getattr(exc, "response", None)
    return response if isinstance(response, dict) else {}


def _error_code(exc: BaseException) -> str | None:
    code = _response(exc).get("Error", {}).get("Code")
    return None if code is None else str(code)


def _status(exc: BaseException) -> int | None:
    status = _response(exc).get("ResponseMetadata", {}).get("HTTPStatusCode")
    return None if status is None else int(status)


def _request_id(exc: BaseException) -> str | None:
    response = _response(exc)
    rid = response.get("ResponseMetadata", {}).get("RequestId") or response.get("Error", {}).get("RequestId")
    return str(rid) if rid else None


def _translate(exc: BaseException, operation: str, where: str, secrets: tuple[str, ...] = ()) -> errors.CasError:
    """The one translation table from boto3/botocore failures to the fixed error set."""
    if isinstance(exc, errors.CasError):
        return exc
    scrub = Secrets(*secrets).scrub
    from botocore import exceptions as bexc  # type: ignore[import-untyped]

    if isinstance(exc, bexc.ClientError):
        code = _error_code(exc) or ""
        status = _status(exc)
        kind = _ERROR_CODES.get(code)
        if kind is None and status is not None:
            if status >= 500 or status == 429:
                kind = errors.Unavailable
            elif status == 404:
                kind = errors.NotFound
            elif status == 403:
                kind = errors.PermissionDenied
            elif status == 412:
                kind = errors.AlreadyExists
        if kind is None:
            kind = errors.CasError
        if kind is errors.NotFound:
            message = f"object not found: {where}"
        elif kind is errors.AlreadyExists:
            message = f"object already exists: {where}"
        else:
            detail = exc.response.get("Error", {}).get("Message") or ""
            message = f"S3 {operation} {where} failed: {code or status} {detail}".rstrip()
            hint = _HINTS.get(kind)
            if kind is errors.PermissionDenied and (code or str(status)) in _POLICY_REFUSALS and operation in _ACTIONS:
                hint = f"this identity needs {_ACTIONS[operation]} on it; see docs/ROLES.md"
                if operation == "put":
                    hint += "; or the bucket policy requires server-side encryption: see the options " \
                        "server_side_encryption, sse_kms_key_id, sse_customer_key"
            elif code in ("InvalidRequest", "InvalidArgument", "400") and operation in ("get", "stat"):
                hint = "an object stored with SSE-C is read only with its key: check sse_customer_key"
            if hint:
                message += f" ({hint})"
        return kind(scrub(message), request_id=_request_id(exc))
    if isinstance(exc, (bexc.NoCredentialsError, bexc.PartialCredentialsError)):
        return errors.ConfigurationError(
            f"S3 {operation} {where}: no usable AWS credentials ({type(exc).__name__}); set "
            "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, a profile, or the access_key_id/secret_access_key options"
        )
    if isinstance(exc, (bexc.ChecksumError, bexc.FlexibleChecksumError)):
        return errors.IntegrityError(f"S3 {operation} {where}: checksum mismatch: {scrub(str(exc))}")
    if isinstance(exc, (bexc.ConnectionError, bexc.HTTPClientError, bexc.IncompleteReadError)):
        return errors.Unavailable(f"S3 {operation} {where} failed: {scrub(str(exc))}")
    if isinstance(exc, (bexc.ParamValidationError, bexc.InvalidEndpointConfigurationError, ValueError)):
        return errors.ConfigurationError(f"S3 {operation} {where}: {scrub(str(exc))}")
    if isinstance(exc, bexc.ProfileNotFound):
        return errors.ConfigurationError(f"S3: {scrub(str(exc))}")
    if isinstance(exc, (OSError, TimeoutError)):
        return errors.Unavailable(f"S3 {operation} {where} failed: {scrub(str(exc))}")
    return errors.CasError(f"S3 {operation} {where} failed: {type(exc).__name__}: {scrub(str(exc))}")


def from_url(url: str, **options: Any) -> S3Backend:
    """Open ``s3://bucket[/prefix]``; ``options`` are :class:`backends.s3_config.S3Config`'s fields
    (numbers may be strings)."""
    return S3Backend(parse(url, options))


__all__ = ["MIN_PART_SIZE", "S3Backend", "from_url"]
