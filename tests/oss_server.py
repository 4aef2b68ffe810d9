"""An in-memory Alibaba OSS protocol server for tests, spoken to by the unmodified ``oss2`` SDK.

No real OSS is reachable from the test machines, so this server stands in for it on 127.0.0.1 and
checks the wire protocol rather than trusting the client:

* every request must carry a valid OSS signature, version 1 (``Authorization: OSS <id>:<sig>``,
  HMAC-SHA1 over the verb, Content-MD5, Content-Type, Date, the canonicalized ``x-oss-*`` headers
  and the canonicalized resource with its sub-resources) or version 4 (``Authorization:
  OSS4-HMAC-SHA256 Credential=<id>/<date>/<region>/oss/aliyun_v4_request,
  [AdditionalHeaders=...,] Signature=<hex>``: HMAC-SHA256 with a key derived from the secret, the
  date, the region and the product, over a canonical request of the verb, the URI-encoded
  ``/bucket/key``, every query parameter, the ``x-oss-*``, Content-Type, Content-MD5 and additional
  headers, and ``x-oss-content-sha256``). ``signature_versions`` says which are accepted (both by
  default; ``{4}`` proves a client signs V4) and ``region`` which region V4 scopes must name. V2
  requests are refused. An unknown key id answers 403 ``InvalidAccessKeyId``, a wrong signature 403
  ``SignatureDoesNotMatch`` (with the string the server signed, as OSS does), a wrong V4 scope
  (region, date, product) 400 ``InvalidArgument``, a Date or ``x-oss-date`` more than 15 minutes
  off 403 ``RequestTimeTooSkewed``, a signed payload hash that is not the body's 400
  ``InvalidArgument``;
* a ``Content-MD5`` that does not match the body answers 400 ``InvalidDigest``;
* ``x-oss-forbid-overwrite: true`` on PutObject, InitiateMultipartUpload and
  CompleteMultipartUpload answers 409 ``FileAlreadyExists`` when the key is taken, decided under
  one lock so racing writers have exactly one winner;
* GetObject honours ``Range``: by default with OSS's compatible behaviour (an invalid or
  out-of-range range returns the whole object with 200) and with ``x-oss-range-behavior:
  standard`` with RFC 7233 semantics (416 ``InvalidRange`` for an unsatisfiable range);
* ListObjectsV2 (``list-type=2``) with prefix, delimiter, start-after, max-keys (at most 1000),
  continuation-token and ``encoding-type=url``;
* multipart upload: initiate, upload part, complete (parts ascending, ETags matching, every part
  but the last at least 100 KiB, as OSS requires), abort;
* HEAD (errors in the base64 ``x-oss-err`` header, since a HEAD has no body), DELETE (idempotent:
  204 whether or not the key existed, like OSS), ``NoSuchKey``, ``NoSuchBucket``,
  ``InvalidBucketName``, ``NoSuchUpload``;
* responses carry ``x-oss-request-id`` and ``x-oss-hash-crc64ecma`` so the SDK's CRC checks run;
* server-side encryption: ``x-oss-server-side-encryption`` (``AES256``, ``KMS``, ``SM4``) and
  ``x-oss-server-side-encryption-key-id`` (KMS only) on PutObject and InitiateMultipartUpload are
  checked (400 ``InvalidEncryptionAlgorithmError`` / ``InvalidArgument``), kept with the object and
  returned on GET and HEAD; with ``required_encryption`` set, an upload without that encryption
  answers 403 ``AccessDenied``, as OSS does under a bucket policy that denies unencrypted puts.

Requests arrive path-style (``/bucket/key``) because ``oss2`` treats an IP or ``localhost``
endpoint that way; virtual-hosted style (``Host: bucket.<anything>``) is understood too.

Usage::

    with OssProtocolServer({"key-id": "secret"}) as server:
        server.create_bucket("b")
        bucket = oss2.Bucket(oss2.Auth("key-id", "secret"), server.endpoint, "b")

The storage is reachable directly (``put_object``, ``get_object``, ``keys``) so tests can check the
real effect of a client's calls without going through that client.
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import hmac
import ipaddress
import re
import threading
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qsl, quote, unquote, urlsplit
from xml.etree import ElementTree
from xml.sax.saxutils import escape

import crcmod
from typing_extensions import Self

from tests.servers import LoopbackHTTPServer

#: Query parameters OSS treats as sub-resources: part of the V1 canonicalized resource.
SUB_RESOURCES = frozenset(
    [
        "acl",
        "uploads",
        "uploadId",
        "partNumber",
        "group",
        "link",
        "delete",
        "website",
        "location",
        "objectInfo",
        "objectMeta",
        "logging",
        "cors",
        "lifecycle",
        "restore",
        "qos",
        "referer",
        "stat",
        "bucketInfo",
        "append",
        "position",
        "security-token",
        "live",
        "comp",
        "status",
        "vod",
        "startTime",
        "endTime",
        "x-oss-process",
        "symlink",
        "callback",
        "callback-var",
        "tagging",
        "encryption",
        "versions",
        "versioning",
        "versionId",
        "policy",
        "requestPayment",
        "x-oss-traffic-limit",
        "qosInfo",
        "asyncFetch",
        "x-oss-request-payer",
        "sequential",
        "inventory",
        "inventoryId",
        "continuation-token",
        "worm",
        "wormId",
        "wormExtend",
        "replication",
        "replicationLocation",
        "replicationProgress",
        "transferAcceleration",
        "cname",
        "metaQuery",
        "response-content-type",
        "response-content-language",
        "response-expires",
        "response-cache-control",
        "response-content-disposition",
        "response-content-encoding",
    ]
)

#: OSS refuses a request whose Date is further than this from its own clock.
MAX_CLOCK_SKEW = 15 * 60
#: Every part of a multipart upload except the last must be at least this large.
MIN_PART_SIZE = 100 * 1024
MAX_LIST_KEYS = 1000
MAX_PART_NUMBER = 10000

_BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")
_crc64 = crcmod.mkCrcFun(0x142F0E1EBA9EA3693, initCrc=0, rev=True, xorOut=0xFFFFFFFFFFFFFFFF)


def crc64ecma(data: bytes) -> int:
    """The CRC-64/ECMA-182 (reflected, XZ variant) OSS reports in ``x-oss-hash-crc64ecma``."""
    return int(_crc64(data))


def v1_string_to_sign(
    method: str,
    headers: Mapping[str, str],
    bucket: str,
    key: str,
    query: Iterable[tuple[str, str]],
) -> str:
    """The OSS V1 string to sign for a request, from the server's side.

    ``headers`` has lower-case names; ``query`` holds decoded parameters in arrival order; ``key``
    is the decoded object key ('' for a bucket request, and ``bucket`` '' for a service request).
    """
    oss_headers = sorted((k, v) for k, v in headers.items() if k.startswith("x-oss-"))
    canonical_headers = "".join(f"{k}:{v}\n" for k, v in oss_headers)
    seen: dict[str, str] = {}
    for name, value in query:
        if name in SUB_RESOURCES and name not in seen:
            seen[name] = value
    sub = "&".join(f"{k}={v}" if v else k for k, v in sorted(seen.items()))
    resource = f"/{bucket}/{key}" if bucket else "/"
    if sub:
        resource += "?" + sub
    date = headers.get("x-oss-date") or headers.get("date", "")
    return "\n".join(
        [
            method,
            headers.get("content-md5", ""),
            headers.get("content-type", ""),
            date,
            canonical_headers + resource,
        ]
    )


V4_ALGORITHM = "OSS4-HMAC-SHA256"
V4_TERMINATOR = "aliyun_v4_request"
_V4_SIGNED_ALWAYS = ("content-type", "content-md5")


def v4_encode(text: str, keep_slash: bool) -> str:
    """V4's URI encoding: every byte but ``A-Z a-z 0-9 - _ . ~`` (and ``/`` in paths) as ``%XX``."""
    return quote(text, safe="-_.~/" if keep_slash else "-_.~")


def v4_canonical_request(
    method: str,
    headers: Mapping[str, str],
    bucket: str,
    key: str,
    query: Iterable[tuple[str, str]],
    additional: Iterable[str],
) -> str:
    """The V4 canonical request, from the server's side. ``headers`` has lower-case names,
    ``query`` holds every decoded parameter, ``additional`` the AdditionalHeaders names."""
    extra = sorted(set(additional))
    uri = v4_encode(f"/{bucket}/{key}" if bucket else "/", keep_slash=True)
    params = sorted((v4_encode(k, False), v4_encode(v, False)) for k, v in query)
    canonical_query = "&".join(f"{k}={v}" if v else k for k, v in params)
    signed = sorted(
        (k, v.strip()) for k, v in headers.items()
        if k.startswith("x-oss-") or k in _V4_SIGNED_ALWAYS or k in extra
    )
    canonical_headers = "".join(f"{k}:{v}\n" for k, v in signed)
    payload = headers.get("x-oss-content-sha256", "")
    return "\n".join([method, uri, canonical_query, canonical_headers, ";".join(extra), payload])


def v4_string_to_sign(date_time: str, scope: str, canonical_request: str) -> str:
    digest = hashlib.sha256(canonical_request.encode("utf-8")).hexdigest()
    return f"{V4_ALGORITHM}\n{date_time}\n{scope}\n{digest}"


def v4_signature(secret: str, date: str, region: str, product: str, string_to_sign: str) -> str:
    """HMAC-SHA256 of the string to sign with the key derived from the secret through the
    date, region, product and terminator, in hex."""
    key = ("aliyun_v4" + secret).encode("utf-8")
    for part in (date, region, product, V4_TERMINATOR):
        key = hmac.new(key, part.encode("utf-8"), hashlib.sha256).digest()
    return hmac.new(key, string_to_sign.encode("utf-8"), hashlib.sha256).hexdigest()


def v1_signature(secret: str, string_to_sign: str) -> str:
    digest = hmac.new(secret.encode("utf-8"), string_to_sign.encode("utf-8"), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


@dataclass
class StoredObject:
    data: bytes
    etag: str
    crc: int
    mtime: float
    kind: str = "Normal"
    encryption: tuple[str, str | None] | None = None  # (algorithm, KMS key id)


@dataclass(frozen=True)
class _Fault:
    status: int
    code: str
    delay: float
    truncate: bool = False


@dataclass
class _Upload:
    bucket: str
    key: str
    parts: dict[int, tuple[bytes, str]] = field(default_factory=dict)
    encryption: tuple[str, str | None] | None = None


class OssError(Exception):
    """An error answer: HTTP status, OSS error code, message and any extra XML fields."""

    def __init__(self, status: int, code: str, message: str, **extra: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.extra = extra


@dataclass(frozen=True)
class RecordedRequest:
    """What the server saw of one authenticated request, for tests that check how a client behaves."""

    method: str
    bucket: str
    key: str
    query: dict[str, str]
    headers: dict[str, str]
    body_size: int


def _etag(data: bytes) -> str:
    return hashlib.md5(data).hexdigest().upper()


def _iso8601(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def _host_name(host_header: str) -> str:
    """The Host header without its port ('[::1]:80' -> '[::1]', 'b.example:80' -> 'b.example')."""
    if host_header.startswith("["):
        return host_header.partition("]")[0] + "]"
    return host_header.rsplit(":", 1)[0]


def _is_ip_or_localhost(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


class OssProtocolServer:
    """A threaded OSS protocol server on 127.0.0.1 with in-memory buckets.

    ``credentials`` maps access key id to secret. All methods are thread-safe. ``start`` binds a
    free port (or ``port``); ``stop`` shuts the listener down and is idempotent.
    ``standard_ranges`` = False makes the server ignore ``x-oss-range-behavior`` (an older OSS or a
    proxy that drops the header), for testing a client's fallback.
    """

    def __init__(self, credentials: Mapping[str, str], *, port: int = 0) -> None:
        self.credentials = dict(credentials)
        self.standard_ranges = True
        self.signature_versions = frozenset({1, 4})
        self.region = "cn-hangzhou"
        self.required_encryption: tuple[str, str | None] | None = None
        """``(algorithm, KMS key id or None)`` every upload must name, else 403 AccessDenied."""
        self.requests: list[RecordedRequest] = []
        self._port = port
        self._lock = threading.Lock()
        self._buckets: dict[str, dict[str, StoredObject]] = {}
        self._uploads: dict[str, _Upload] = {}
        self._httpd: LoopbackHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._faults: list[_Fault] = []

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> OssProtocolServer:
        handler = type("_BoundHandler", (_Handler,), {"store": self})
        httpd = LoopbackHTTPServer(("127.0.0.1", self._port), handler)
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, name="oss-protocol-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.shutdown()
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("server is not running")
        return int(self._httpd.server_address[1])

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- direct storage access (bypasses HTTP and authentication) ------------------------------

    def create_bucket(self, name: str) -> None:
        if not _BUCKET_NAME.match(name):
            raise ValueError(f"invalid bucket name {name!r}")
        with self._lock:
            self._buckets.setdefault(name, {})

    def delete_bucket(self, name: str) -> None:
        with self._lock:
            self._buckets.pop(name, None)

    def put_object(self, bucket: str, key: str, data: bytes) -> None:
        with self._lock:
            self._buckets[bucket][key] = StoredObject(bytes(data), _etag(data), crc64ecma(data), time.time())

    def get_object(self, bucket: str, key: str) -> bytes:
        """The stored bytes; ``FileNotFoundError`` if the key is absent."""
        with self._lock:
            obj = self._buckets[bucket].get(key)
        if obj is None:
            raise FileNotFoundError(f"{bucket}/{key}")
        return obj.data

    def object_kind(self, bucket: str, key: str) -> str:
        """'Normal' for a PutObject, 'Multipart' for an object assembled from parts."""
        with self._lock:
            return self._buckets[bucket][key].kind

    def corrupt_object(self, bucket: str, key: str, data: bytes) -> None:
        """Replace an object's bytes but keep its recorded ETag and CRC, as bit rot would."""
        with self._lock:
            self._buckets[bucket][key].data = bytes(data)

    def inject_fault(
        self,
        *,
        status: int = 503,
        code: str = "ServiceUnavailable",
        delay: float = 0.0,
        count: int = 1,
        truncate: bool = False,
    ) -> None:
        """Make the next ``count`` authenticated requests wait ``delay`` seconds and then fail with
        ``status``/``code``. With ``status`` 0 they are answered normally after the wait, and with
        ``truncate`` the connection is closed half-way through the response body."""
        with self._lock:
            self._faults.extend(_Fault(status, code, delay, truncate) for _ in range(count))

    def next_fault(self) -> _Fault | None:
        with self._lock:
            return self._faults.pop(0) if self._faults else None

    def keys(self, bucket: str) -> list[str]:
        with self._lock:
            return sorted(self._buckets[bucket])

    def pending_uploads(self, bucket: str) -> int:
        with self._lock:
            return sum(1 for u in self._uploads.values() if u.bucket == bucket)

    # -- request handling ----------------------------------------------------------------------

    def authenticate(
        self, method: str, headers: Mapping[str, str], bucket: str, key: str, query: list[tuple[str, str]],
        body: bytes = b"",
    ) -> None:
        """Raise :class:`OssError` unless the request carries a valid, fresh V1 or V4 signature
        (of a version in :attr:`signature_versions`)."""
        auth = headers.get("authorization", "")
        if not auth:
            raise OssError(
                403, "AccessDenied", "AccessDenied: anonymous access is forbidden for this operation"
            )
        if auth.startswith(V4_ALGORITHM + " ") and 4 in self.signature_versions:
            self._authenticate_v4(method, headers, bucket, key, query, body, auth)
            return
        if not auth.startswith("OSS ") or 1 not in self.signature_versions:
            raise OssError(
                403, "AccessDenied", "only OSS signature version 1 (Authorization: OSS id:sig) is accepted"
            )
        key_id, sep, provided = auth[4:].partition(":")
        if not sep or not key_id or not provided:
            raise OssError(400, "InvalidArgument", "malformed Authorization header")
        secret = self.credentials.get(key_id)
        if secret is None:
            raise OssError(
                403,
                "InvalidAccessKeyId",
                "The OSS Access Key Id you provided does not exist in our records.",
                OSSAccessKeyId=key_id,
            )
        date = headers.get("x-oss-date") or headers.get("date")
        if not date:
            raise OssError(403, "AccessDenied", "the request has no Date header")
        try:
            sent = email.utils.parsedate_to_datetime(date).timestamp()
        except (TypeError, ValueError):
            raise OssError(403, "AccessDenied", f"cannot parse Date {date!r}") from None
        if abs(sent - time.time()) > MAX_CLOCK_SKEW:
            raise OssError(
                403,
                "RequestTimeTooSkewed",
                "The difference between the request time and the current time is too large.",
            )
        string_to_sign = v1_string_to_sign(method, headers, bucket, key, query)
        if not hmac.compare_digest(v1_signature(secret, string_to_sign), provided):
            raise OssError(
                403,
                "SignatureDoesNotMatch",
                "The request signature we calculated does not match the signature you provided.",
                OSSAccessKeyId=key_id,
                StringToSign=string_to_sign,
                SignatureProvided=provided,
            )

    def encryption(self, headers: Mapping[str, str]) -> tuple[str, str | None] | None:
        """The server-side encryption an upload asks for, checked as OSS checks it, and against
        :attr:`required_encryption`."""
        algorithm = headers.get("x-oss-server-side-encryption")
        key_id = headers.get("x-oss-server-side-encryption-key-id")
        if algorithm is not None and algorithm not in ("AES256", "KMS", "SM4"):
            raise OssError(400, "InvalidEncryptionAlgorithmError", "The Encryption request you specified is not valid.")
        if key_id is not None and algorithm != "KMS":
            raise OssError(400, "InvalidArgument", "x-oss-server-side-encryption-key-id needs KMS encryption")
        asked = None if algorithm is None else (algorithm, key_id)
        required = self.required_encryption
        if required is not None and (asked is None or asked[0] != required[0] or (required[1] and asked[1] != required[1])):
            raise OssError(403, "AccessDenied", "You have no right to access this object because of bucket acl.")
        return asked

    def _authenticate_v4(
        self, method: str, headers: Mapping[str, str], bucket: str, key: str, query: list[tuple[str, str]],
        body: bytes, auth: str,
    ) -> None:
        fields: dict[str, str] = {}
        for item in auth[len(V4_ALGORITHM) + 1 :].split(","):
            name, sep, value = item.strip().partition("=")
            if not sep:
                raise OssError(400, "InvalidArgument", "malformed V4 Authorization header")
            fields[name] = value
        credential, provided = fields.get("Credential", ""), fields.get("Signature", "")
        scope_parts = credential.split("/")
        if len(scope_parts) != 5 or not provided:
            raise OssError(400, "InvalidArgument", "malformed V4 Authorization header")
        key_id, date, region, product, terminator = scope_parts
        secret = self.credentials.get(key_id)
        if secret is None:
            raise OssError(
                403, "InvalidAccessKeyId", "The OSS Access Key Id you provided does not exist in our records.",
                OSSAccessKeyId=key_id,
            )
        date_time = headers.get("x-oss-date", "")
        try:
            sent = datetime.strptime(date_time, "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc).timestamp()
        except ValueError:
            raise OssError(403, "AccessDenied", f"V4 requests need x-oss-date as YYYYMMDDTHHMMSSZ, got {date_time!r}") from None
        if abs(sent - time.time()) > MAX_CLOCK_SKEW:
            raise OssError(403, "RequestTimeTooSkewed",
                           "The difference between the request time and the current time is too large.")
        if date != date_time[:8]:
            raise OssError(400, "InvalidArgument", "Invalid signing date in Authorization header.")
        if region != self.region:
            raise OssError(400, "InvalidArgument", "Invalid signing region in Authorization header.")
        if product != "oss" or terminator != V4_TERMINATOR:
            raise OssError(400, "InvalidArgument", "Invalid signing product or terminator in Authorization header.")
        payload = headers.get("x-oss-content-sha256")
        if payload is None:
            raise OssError(400, "InvalidArgument", "x-oss-content-sha256 is required in V4 requests")
        if payload != "UNSIGNED-PAYLOAD" and payload != hashlib.sha256(body).hexdigest():
            raise OssError(400, "InvalidArgument", "x-oss-content-sha256 does not match the body")
        additional = [h for h in fields.get("AdditionalHeaders", "").split(";") if h]
        missing = [h for h in additional if h not in headers]
        if missing:
            raise OssError(400, "InvalidArgument", f"additional header {missing[0]} is not in the request")
        canonical = v4_canonical_request(method, headers, bucket, key, query, additional)
        string_to_sign = v4_string_to_sign(date_time, f"{date}/{region}/{product}/{terminator}", canonical)
        if not hmac.compare_digest(v4_signature(secret, date, region, product, string_to_sign), provided):
            raise OssError(
                403, "SignatureDoesNotMatch",
                "The request signature we calculated does not match the signature you provided.",
                OSSAccessKeyId=key_id, StringToSign=string_to_sign, CanonicalRequest=canonical,
                SignatureProvided=provided,
            )

    def _bucket(self, name: str) -> dict[str, StoredObject]:
        """Caller holds the lock."""
        if not _BUCKET_NAME.match(name):
            raise OssError(400, "InvalidBucketName", "The specified bucket is not valid.", BucketName=name)
        objects = self._buckets.get(name)
        if objects is None:
            raise OssError(404, "NoSuchBucket", "The specified bucket does not exist.", BucketName=name)
        return objects

    def check_bucket(self, name: str) -> None:
        with self._lock:
            self._bucket(name)

    def put(
        self, bucket: str, key: str, data: bytes, forbid_overwrite: bool,
        encryption: tuple[str, str | None] | None = None,
    ) -> StoredObject:
        obj = StoredObject(data, _etag(data), crc64ecma(data), time.time(), encryption=encryption)
        with self._lock:
            objects = self._bucket(bucket)
            if forbid_overwrite and key in objects:
                raise OssError(
                    409,
                    "FileAlreadyExists",
                    "The object you specified already exists and can not be overwritten.",
                )
            objects[key] = obj
        return obj

    def lookup(self, bucket: str, key: str) -> StoredObject:
        with self._lock:
            obj = self._bucket(bucket).get(key)
        if obj is None:
            raise OssError(404, "NoSuchKey", "The specified key does not exist.", Key=key)
        return obj

    def delete(self, bucket: str, key: str) -> None:
        with self._lock:
            self._bucket(bucket).pop(key, None)

    def initiate(
        self, bucket: str, key: str, forbid_overwrite: bool, encryption: tuple[str, str | None] | None = None
    ) -> str:
        with self._lock:
            if forbid_overwrite and key in self._bucket(bucket):
                raise OssError(
                    409,
                    "FileAlreadyExists",
                    "The object you specified already exists and can not be overwritten.",
                )
            self._bucket(bucket)
            upload_id = uuid.uuid4().hex.upper()
            self._uploads[upload_id] = _Upload(bucket, key, encryption=encryption)
        return upload_id

    def _upload(self, bucket: str, key: str, upload_id: str) -> _Upload:
        """Caller holds the lock."""
        self._bucket(bucket)
        upload = self._uploads.get(upload_id)
        if upload is None or (upload.bucket, upload.key) != (bucket, key):
            raise OssError(404, "NoSuchUpload", "The specified upload does not exist.", UploadId=upload_id)
        return upload

    def upload_part(self, bucket: str, key: str, upload_id: str, number: int, data: bytes) -> str:
        if not 1 <= number <= MAX_PART_NUMBER:
            raise OssError(400, "InvalidArgument", f"partNumber must be between 1 and {MAX_PART_NUMBER}")
        etag = _etag(data)
        with self._lock:
            self._upload(bucket, key, upload_id).parts[number] = (data, etag)
        return etag

    def complete(
        self, bucket: str, key: str, upload_id: str, listed: list[tuple[int, str]], forbid_overwrite: bool
    ) -> StoredObject:
        with self._lock:
            upload = self._upload(bucket, key, upload_id)
            if not listed:
                raise OssError(400, "MalformedXML", "the part list is empty")
            numbers = [n for n, _ in listed]
            if numbers != sorted(set(numbers)):
                raise OssError(400, "InvalidPartOrder", "The list of parts was not in ascending order.")
            chunks: list[bytes] = []
            digests = b""
            for i, (number, etag) in enumerate(listed):
                part = upload.parts.get(number)
                if part is None or part[1] != etag.strip('"').upper():
                    raise OssError(
                        400,
                        "InvalidPart",
                        "One or more of the specified parts could not be found.",
                        PartNumber=str(number),
                    )
                if i < len(listed) - 1 and len(part[0]) < MIN_PART_SIZE:
                    raise OssError(
                        400,
                        "EntityTooSmall",
                        "Your proposed upload is smaller than the minimum allowed size.",
                        PartNumber=str(number),
                    )
                chunks.append(part[0])
                digests += bytes.fromhex(part[1])
            objects = self._bucket(bucket)
            if forbid_overwrite and key in objects:
                raise OssError(
                    409,
                    "FileAlreadyExists",
                    "The object you specified already exists and can not be overwritten.",
                )
            data = b"".join(chunks)
            etag = f"{hashlib.md5(digests).hexdigest().upper()}-{len(listed)}"
            obj = StoredObject(data, etag, crc64ecma(data), time.time(), "Multipart", upload.encryption)
            objects[key] = obj
            del self._uploads[upload_id]
        return obj

    def abort(self, bucket: str, key: str, upload_id: str) -> None:
        with self._lock:
            self._upload(bucket, key, upload_id)
            del self._uploads[upload_id]

    def list_v2(
        self, bucket: str, prefix: str, delimiter: str, start_after: str, token: str, max_keys: int
    ) -> tuple[list[tuple[str, StoredObject]], list[str], str | None]:
        """(objects, common prefixes, next continuation token or None) for one page."""
        with self._lock:
            items = sorted(self._bucket(bucket).items())
        after = start_after
        if token:
            try:
                after = max(after, base64.urlsafe_b64decode(token.encode("ascii")).decode("utf-8"))
            except (ValueError, UnicodeDecodeError):
                raise OssError(400, "InvalidArgument", "invalid continuation-token") from None
        objects: list[tuple[str, StoredObject]] = []
        prefixes: list[str] = []
        last = ""
        truncated = False
        for key, obj in items:
            if not key.startswith(prefix) or key <= after:
                continue
            if delimiter:
                cut = key.find(delimiter, len(prefix))
                if cut >= 0:
                    common = key[: cut + len(delimiter)]
                    if common in prefixes or common <= after:
                        continue
                    if len(objects) + len(prefixes) >= max_keys:
                        truncated = True
                        break
                    prefixes.append(common)
                    # Skip the rest of this common prefix on the next page.
                    last = common + "\U0010ffff"
                    continue
            if len(objects) + len(prefixes) >= max_keys:
                truncated = True
                break
            objects.append((key, obj))
            last = key
        next_token = base64.urlsafe_b64encode(last.encode("utf-8")).decode("ascii") if truncated else None
        return objects, prefixes, next_token

    def record(self, request: RecordedRequest) -> None:
        with self._lock:
            self.requests.append(request)


def _xml(root: str, body: str) -> bytes:
    return f'<?xml version="1.0" encoding="UTF-8"?>\n<{root}>{body}</{root}>\n'.encode()


def _el(name: str, value: object) -> str:
    return f"<{name}>{escape(str(value))}</{name}>"


class _Handler(BaseHTTPRequestHandler):
    """One request: parse, authenticate, dispatch, answer. ``store`` is bound per server."""

    store: OssProtocolServer
    protocol_version = "HTTP/1.1"
    timeout = 30  # an idle keep-alive connection frees its thread eventually
    server_version = "AliyunOSS"
    sys_version = ""
    _truncate = False

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    def do_HEAD(self) -> None:
        self._handle()

    # -- plumbing ------------------------------------------------------------------------------

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _target(self) -> tuple[str, str, list[tuple[str, str]]]:
        """(bucket, key, decoded query) from the Host header and request target."""
        parts = urlsplit(self.path)
        query = parse_qsl(parts.query, keep_blank_values=True)
        host = _host_name(self.headers.get("Host") or "")
        path = parts.path
        if host and not _is_ip_or_localhost(host) and "." in host:
            bucket = host.split(".", 1)[0]
            key = unquote(path[1:])
        else:
            bucket_part, _, key_part = path[1:].partition("/")
            bucket, key = unquote(bucket_part), unquote(key_part)
        return bucket, key, query

    def _send(
        self, status: int, headers: Mapping[str, str], body: bytes = b"", *, length: int | None = None
    ) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        if self.command != "HEAD" and body:
            if self._truncate:
                self.wfile.write(body[: len(body) // 2])
                self.close_connection = True
                return
            self.wfile.write(body)

    def _send_error(self, error: OssError, request_id: str, resource: str) -> None:
        extra = "".join(_el(k, v) for k, v in error.extra.items())
        body = _xml(
            "Error",
            _el("Code", error.code)
            + _el("Message", error.message)
            + _el("RequestId", request_id)
            + _el("HostId", self.headers.get("Host", ""))
            + _el("Resource", resource)
            + extra,
        )
        headers = {
            "x-oss-request-id": request_id,
            "Content-Type": "application/xml",
            "x-oss-ec": "0000-00000000",
        }
        if self.command == "HEAD":
            headers["x-oss-err"] = base64.b64encode(body).decode("ascii")
            self._send(error.status, headers, b"", length=0)
        else:
            self._send(error.status, headers, body)

    def _handle(self) -> None:
        request_id = uuid.uuid4().hex[:24].upper()
        self._truncate = False
        body = self._read_body()
        bucket, key = "", ""
        try:
            bucket, key, query = self._target()
            headers = {k.lower(): v for k, v in self.headers.items()}
            self.store.authenticate(self.command, headers, bucket, key, query, body)
            params = dict(reversed(query))  # first occurrence wins
            self.store.record(RecordedRequest(self.command, bucket, key, params, headers, len(body)))
            fault = self.store.next_fault()
            if fault is not None:
                self._truncate = fault.truncate
                time.sleep(fault.delay)
                if fault.status:
                    raise OssError(fault.status, fault.code, "injected fault")
            md5 = headers.get("content-md5")
            if md5 is not None and base64.b64encode(hashlib.md5(body).digest()).decode() != md5:
                raise OssError(400, "InvalidDigest", "The Content-MD5 you specified is not valid.")
            if not bucket:
                raise OssError(
                    400, "NotImplemented", "service-level operations are not implemented by this server"
                )
            self.store.check_bucket(bucket)
            if not key:
                self._bucket_request(bucket, params, request_id)
            else:
                if len(key.encode("utf-8")) > 1023:
                    raise OssError(400, "InvalidObjectName", "The object name is too long.")
                self._object_request(bucket, key, params, headers, body, request_id)
        except OssError as error:
            self._send_error(error, request_id, f"/{bucket}/{key}")

    # -- operations ----------------------------------------------------------------------------

    def _bucket_request(self, bucket: str, params: dict[str, str], request_id: str) -> None:
        if self.command != "GET" or params.get("list-type") != "2":
            raise OssError(
                400, "NotImplemented", f"{self.command} on a bucket is not implemented except ListObjectsV2"
            )
        try:
            max_keys = int(params.get("max-keys") or 100)
        except ValueError:
            raise OssError(400, "InvalidArgument", "max-keys is not a number") from None
        if not 0 <= max_keys <= MAX_LIST_KEYS:
            raise OssError(400, "InvalidArgument", f"max-keys must be between 0 and {MAX_LIST_KEYS}")
        prefix = params.get("prefix", "")
        delimiter = params.get("delimiter", "")
        start_after = params.get("start-after", "")
        token = params.get("continuation-token", "")
        url = params.get("encoding-type") == "url"

        def enc(value: str) -> str:
            return quote(value, safe="/") if url else value

        objects, prefixes, next_token = self.store.list_v2(
            bucket, prefix, delimiter, start_after, token, max_keys
        )
        parts = [
            _el("Name", bucket),
            _el("Prefix", enc(prefix)),
            _el("MaxKeys", max_keys),
            _el("Delimiter", enc(delimiter)),
            _el("IsTruncated", "true" if next_token else "false"),
            _el("KeyCount", len(objects) + len(prefixes)),
        ]
        if url:
            parts.append(_el("EncodingType", "url"))
        if start_after:
            parts.append(_el("StartAfter", enc(start_after)))
        if token:
            parts.append(_el("ContinuationToken", enc(token)))
        if next_token:
            parts.append(_el("NextContinuationToken", enc(next_token)))
        for key, obj in objects:
            parts.append(
                "<Contents>"
                + _el("Key", enc(key))
                + _el("LastModified", _iso8601(obj.mtime))
                + _el("ETag", f'"{obj.etag}"')
                + _el("Type", obj.kind)
                + _el("Size", len(obj.data))
                + _el("StorageClass", "Standard")
                + "</Contents>"
            )
        for common in prefixes:
            parts.append("<CommonPrefixes>" + _el("Prefix", enc(common)) + "</CommonPrefixes>")
        self._send(
            200,
            {"x-oss-request-id": request_id, "Content-Type": "application/xml"},
            _xml("ListBucketResult", "".join(parts)),
        )

    def _object_request(
        self,
        bucket: str,
        key: str,
        params: dict[str, str],
        headers: dict[str, str],
        body: bytes,
        request_id: str,
    ) -> None:
        forbid = headers.get("x-oss-forbid-overwrite", "").lower() == "true"
        base = {"x-oss-request-id": request_id}
        method = self.command
        if method == "PUT" and "uploadId" in params:
            try:
                number = int(params.get("partNumber", ""))
            except ValueError:
                raise OssError(400, "InvalidArgument", "partNumber is missing or not a number") from None
            etag = self.store.upload_part(bucket, key, params["uploadId"], number, body)
            self._send(200, {**base, "ETag": f'"{etag}"', "x-oss-hash-crc64ecma": str(crc64ecma(body))})
        elif method == "PUT":
            obj = self.store.put(bucket, key, body, forbid, self.store.encryption(headers))
            self._send(200, {**base, "ETag": f'"{obj.etag}"', "x-oss-hash-crc64ecma": str(obj.crc)})
        elif method == "POST" and "uploads" in params:
            upload_id = self.store.initiate(bucket, key, forbid, self.store.encryption(headers))
            self._send(
                200,
                {**base, "Content-Type": "application/xml"},
                _xml(
                    "InitiateMultipartUploadResult",
                    _el("Bucket", bucket) + _el("Key", key) + _el("UploadId", upload_id),
                ),
            )
        elif method == "POST" and "uploadId" in params:
            listed = _parse_complete(body)
            obj = self.store.complete(bucket, key, params["uploadId"], listed, forbid)
            self._send(
                200,
                {
                    **base,
                    "Content-Type": "application/xml",
                    "ETag": f'"{obj.etag}"',
                    "x-oss-hash-crc64ecma": str(obj.crc),
                },
                _xml(
                    "CompleteMultipartUploadResult",
                    _el("Bucket", bucket) + _el("Key", key) + _el("ETag", f'"{obj.etag}"'),
                ),
            )
        elif method == "DELETE" and "uploadId" in params:
            self.store.abort(bucket, key, params["uploadId"])
            self._send(204, base)
        elif method == "DELETE":
            self.store.delete(bucket, key)
            self._send(204, base)
        elif method in ("GET", "HEAD"):
            self._get(bucket, key, headers, base)
        else:
            raise OssError(405, "MethodNotAllowed", f"{method} is not allowed here")

    def _get(self, bucket: str, key: str, headers: dict[str, str], base: dict[str, str]) -> None:
        obj = self.store.lookup(bucket, key)
        data = obj.data
        size = len(data)
        meta = {
            **base,
            "ETag": f'"{obj.etag}"',
            "x-oss-hash-crc64ecma": str(obj.crc),
            "Last-Modified": email.utils.formatdate(obj.mtime, usegmt=True),
            "Accept-Ranges": "bytes",
            "x-oss-object-type": obj.kind,
            "Content-Type": "application/octet-stream",
        }
        if obj.encryption is not None:
            meta["x-oss-server-side-encryption"] = obj.encryption[0]
            if obj.encryption[1]:
                meta["x-oss-server-side-encryption-key-id"] = obj.encryption[1]
        standard = (
            self.store.standard_ranges and headers.get("x-oss-range-behavior", "").lower() == "standard"
        )
        span = _parse_range(headers.get("range"), size, standard) if self.command == "GET" else None
        if span is None:
            self._send(200, meta, data, length=size)
            return
        start, end = span
        meta["Content-Range"] = f"bytes {start}-{end}/{size}"
        self._send(206, meta, data[start : end + 1])


_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def _parse_range(header: str | None, size: int, standard: bool) -> tuple[int, int] | None:
    """(first, last) inclusive byte positions to send, or None for the whole object with 200.

    Compatible behaviour (OSS's default): anything invalid or out of range is ignored. Standard
    behaviour: RFC 7233, with 416 ``InvalidRange`` when nothing of the object is selected.
    """
    if not header:
        return None
    match = _RANGE.match(header.strip())
    if not match or match.group(1) == match.group(2) == "":
        if standard and header.strip().startswith("bytes=") and "," in header:
            raise OssError(416, "InvalidRange", "The requested range cannot be satisfied.")
        return None
    first_s, last_s = match.groups()
    unsatisfiable = OssError(
        416,
        "InvalidRange",
        "The requested range cannot be satisfied.",
        RangeRequested=header,
        ActualObjectSize=str(size),
    )
    if first_s == "":  # suffix: the last N bytes
        n = int(last_s)
        if n == 0 or size == 0:
            if standard:
                raise unsatisfiable
            return None
        if n > size:
            return (0, size - 1) if standard else None
        return size - n, size - 1
    first = int(first_s)
    last = int(last_s) if last_s else size - 1
    if last_s and last < first:
        return None  # syntactically invalid: ignored under both behaviours, as RFC 7233 says
    if first >= size:
        if standard:
            raise unsatisfiable
        return None
    if last >= size:
        if standard:
            last = size - 1
        else:
            return None
    return first, last


def _parse_complete(body: bytes) -> list[tuple[int, str]]:
    try:
        root = ElementTree.fromstring(body)
    except ElementTree.ParseError:
        raise OssError(400, "MalformedXML", "The XML you provided was not well-formed.") from None
    listed: list[tuple[int, str]] = []
    for part in root.findall("Part"):
        number = part.findtext("PartNumber")
        etag = part.findtext("ETag")
        if number is None or etag is None or not number.strip().isdigit():
            raise OssError(400, "MalformedXML", "a Part lacks PartNumber or ETag")
        listed.append((int(number), etag.strip()))
    return listed


__all__ = [
    "MAX_CLOCK_SKEW",
    "MIN_PART_SIZE",
    "SUB_RESOURCES",
    "OssError",
    "OssProtocolServer",
    "RecordedRequest",
    "crc64ecma",
    "v1_signature",
    "v1_string_to_sign",
    "v4_canonical_request",
    "v4_encode",
    "v4_signature",
    "v4_string_to_sign",
]
