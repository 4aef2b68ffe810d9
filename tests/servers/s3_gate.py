"""A loopback gate in front of moto that does what moto does not: bucket policies on encryption
headers, and SSE-C's rule that the key goes with every read.

moto 5.2 stores ``x-amz-server-side-encryption`` and its KMS key id, but evaluates no condition of
a bucket policy (a ``Deny`` with a ``Null`` condition denies every put) and ignores SSE-C headers.
AWS S3 does both. The gate forwards every request to moto unchanged (so moto still stores and
checks what it can) after deciding, as S3 would:

* **Bucket policy.** ``Deny`` statements for ``s3:PutObject`` whose conditions hold refuse
  PutObject and CreateMultipartUpload with 403 ``AccessDenied``. Conditions are evaluated on the
  request's headers: ``Null`` (the header is absent: ``"true"``) and ``StringNotEquals`` (absent or
  another value) over ``s3:x-amz-server-side-encryption``,
  ``s3:x-amz-server-side-encryption-aws-kms-key-id`` and
  ``s3:x-amz-server-side-encryption-customer-algorithm``. UploadPart and CompleteMultipartUpload are
  judged by the upload they belong to, as S3 does.
* **SSE-C.** An object stored with a customer key (its MD5 is remembered) is served only to a GET or
  HEAD carrying the same key: without one, 400 ``InvalidRequest``; with another, 403
  ``AccessDenied``. SSE-C headers on an object stored without them are 400 ``InvalidArgument``.
  Parts of an upload begun with a key must carry it too.

``requests`` records each request's method, path and headers, for tests that look at the wire.
"""

from __future__ import annotations

import http.client
import http.server
import threading
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from tests.servers import LoopbackHTTPServer
from tests.servers.s3 import HOST

SSE = "x-amz-server-side-encryption"
SSE_KMS_KEY = "x-amz-server-side-encryption-aws-kms-key-id"
SSE_C_ALGORITHM = "x-amz-server-side-encryption-customer-algorithm"
SSE_C_KEY_MD5 = "x-amz-server-side-encryption-customer-key-md5"
_CONDITION_HEADERS = {f"s3:{h}": h for h in (SSE, SSE_KMS_KEY, SSE_C_ALGORITHM)}


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]


@dataclass
class _State:
    customer_keys: dict[str, str | None] = field(default_factory=dict)  # object -> key MD5 (None: plain)
    uploads: dict[str, dict[str, str]] = field(default_factory=dict)  # object -> headers of its initiation
    lock: threading.Lock = field(default_factory=threading.Lock)


class S3Gate:
    """``S3Gate(moto_port, policy=None)``; reach it at ``endpoint_url``; ``close()`` when done.

    ``policy`` is a bucket policy document (a dict) applied to every bucket behind the gate."""

    def __init__(self, target_port: int, policy: dict[str, Any] | None = None) -> None:
        self.target_port = target_port
        self.policy = policy
        self.requests: list[Seen] = []
        self._state = _State()
        gate = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _any(self) -> None:
                gate._handle(self)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any

        self._server = LoopbackHTTPServer((HOST, 0), Handler)
        self.endpoint_url = f"http://{HOST}:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="s3-gate", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> S3Gate:  # noqa: PYI034 - final class in practice
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- deciding --------------------------------------------------------------------------------

    def _handle(self, handler: http.server.BaseHTTPRequestHandler) -> None:
        parts = urlsplit(handler.path)
        query = parse_qs(parts.query, keep_blank_values=True)
        headers = {k.lower(): v for k, v in handler.headers.items()}
        length = int(headers.get("content-length", "0") or 0)
        body = handler.rfile.read(length) if length else b""
        self.requests.append(Seen(handler.command, parts.path, query, headers))
        obj = unquote(parts.path).lstrip("/")
        refusal = self._refusal(handler.command, obj, query, headers)
        if refusal is not None:
            status, code, message = refusal
            self._reply(handler, status, code, message)
            return
        status, reply_headers, reply = self._forward(handler, body)
        if 200 <= status < 300:
            self._remember(handler.command, obj, query, headers)
        handler.send_response(status)
        for name, value in reply_headers:
            if name.lower() not in ("transfer-encoding", "connection", "content-length"):
                handler.send_header(name, value)
        # A HEAD answer has no body but the object's length.
        length = {k.lower(): v for k, v in reply_headers}.get("content-length", "0")
        handler.send_header("Content-Length", length if handler.command == "HEAD" else str(len(reply)))
        handler.end_headers()
        if handler.command != "HEAD":
            handler.wfile.write(reply)

    def _refusal(
        self, method: str, obj: str, query: dict[str, list[str]], headers: dict[str, str]
    ) -> tuple[int, str, str] | None:
        is_key = "/" in obj
        if not is_key:
            return None
        upload = "uploadId" in query
        if method == "PUT" and not upload or method == "POST" and "uploads" in query:
            if self._denied(headers):
                return 403, "AccessDenied", "Access Denied by the bucket policy"
            return None
        if upload and method in ("PUT", "POST"):
            with self._state.lock:
                started = self._state.uploads.get(obj, {})
            if started.get(SSE_C_KEY_MD5) and headers.get(SSE_C_KEY_MD5) != started[SSE_C_KEY_MD5]:
                return 400, "InvalidRequest", "The multipart upload was initiated with SSE-C; parts must carry the key"
            return None
        if method in ("GET", "HEAD"):
            with self._state.lock:
                stored = self._state.customer_keys.get(obj)
            given = headers.get(SSE_C_KEY_MD5)
            if stored and not given:
                return 400, "InvalidRequest", (
                    "The object was stored using a form of Server Side Encryption. "
                    "The correct parameters must be provided to retrieve the object."
                )
            if stored and given != stored:
                return 403, "AccessDenied", "The SSE-C key does not match the object's"
            with self._state.lock:
                plain = obj in self._state.customer_keys and not stored
            if given and plain:
                return 400, "InvalidArgument", "The encryption parameters are not applicable to this object."
        return None

    def _denied(self, headers: dict[str, str]) -> bool:
        statements = (self.policy or {}).get("Statement", [])
        for statement in statements if isinstance(statements, list) else [statements]:
            actions = statement.get("Action", [])
            actions = [actions] if isinstance(actions, str) else actions
            if statement.get("Effect") != "Deny" or not {"s3:PutObject", "s3:*", "*"} & set(actions):
                continue
            if all(self._holds(op, key, value, headers)
                   for op, pairs in statement.get("Condition", {}).items() for key, value in pairs.items()):
                return True
        return False

    @staticmethod
    def _holds(operator: str, key: str, expected: Any, headers: dict[str, str]) -> bool:
        header = _CONDITION_HEADERS.get(key)
        if header is None:
            raise ValueError(f"the S3 gate does not evaluate condition key {key}")
        actual = headers.get(header)
        if operator == "Null":
            return (actual is None) == (str(expected).lower() == "true")
        if operator == "StringNotEquals":
            allowed = [expected] if isinstance(expected, str) else list(expected)
            return actual is None or actual not in allowed
        raise ValueError(f"the S3 gate does not evaluate condition operator {operator}")

    def _remember(self, method: str, obj: str, query: dict[str, list[str]], headers: dict[str, str]) -> None:
        with self._state.lock:
            if method == "PUT" and "uploadId" not in query and "/" in obj:
                self._state.customer_keys[obj] = headers.get(SSE_C_KEY_MD5)
            elif method == "POST" and "uploads" in query:
                self._state.uploads[obj] = headers
            elif method == "POST" and "uploadId" in query:
                started = self._state.uploads.pop(obj, {})
                self._state.customer_keys[obj] = started.get(SSE_C_KEY_MD5)
            elif method == "DELETE" and "uploadId" not in query:
                self._state.customer_keys.pop(obj, None)

    # -- talking -----------------------------------------------------------------------------------

    def _forward(self, handler: http.server.BaseHTTPRequestHandler, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        conn = http.client.HTTPConnection(HOST, self.target_port, timeout=60)
        try:
            conn.putrequest(handler.command, handler.path, skip_host=True, skip_accept_encoding=True)
            for name, value in handler.headers.items():
                conn.putheader(name, value)
            conn.endheaders(body)
            resp = conn.getresponse()
            return resp.status, resp.getheaders(), resp.read()
        finally:
            conn.close()

    @staticmethod
    def _reply(handler: http.server.BaseHTTPRequestHandler, status: int, code: str, message: str) -> None:
        body = (
            f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message>'
            f"<RequestId>gate</RequestId></Error>"
        ).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/xml")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        if handler.command != "HEAD":
            handler.wfile.write(body)
