"""The OSS backend against the OSS protocol server (and against real OSS when configured).

Three groups:

* the backend contract and OSS-specific behaviour, through ``backends.oss`` and the unmodified
  ``oss2`` SDK, against :class:`tests.oss_server.OssProtocolServer`;
* the protocol server itself, spoken to with a small hand-written signing client: it must reject
  what OSS rejects (bad signature, unknown key, tampered header or sub-resource, stale Date, bad
  Content-MD5), or it would be a test double that cannot fail;
* the contract against real OSS, when ``CAS_TEST_OSS_ENDPOINT``, ``CAS_TEST_OSS_BUCKET``,
  ``CAS_TEST_OSS_ACCESS_KEY_ID`` and ``CAS_TEST_OSS_ACCESS_KEY_SECRET`` are set.
"""

# ruff: noqa: F811 - pytest fixtures are parameters named like the imported oss_server fixture

from __future__ import annotations

import base64
import email.utils
import hashlib
import hmac
import io
import logging
import os
import socket
import time
import uuid
from collections.abc import Iterator, Mapping
from typing import Any

import oss2
import pytest
import requests

import backends.oss
from backends import open_backend
from backends.errors import (
    AlreadyExists,
    ConfigurationError,
    IntegrityError,
    NotFound,
    PermissionDenied,
    Unavailable,
)
from backends.oss import OssBackend, from_url
from backends.testing import BackendContract, check_against_model
from tests.backends.test_engine import EngineThroughBackend
from tests.oss_server import OssProtocolServer, crc64ecma, v1_signature, v1_string_to_sign
from tests.servers import small_list_pages
from tests.servers.oss import ACCESS_KEY_ID, ACCESS_KEY_SECRET, new_bucket, oss_server  # noqa: F401

PREFIX = "repo"
#: Small parts so the contract's large object (11 MiB) goes up in a dozen parts.
PART_SIZE = 1 << 20
THRESHOLD = 3 << 20


class _ServerStorage:
    """Reads and writes the protocol server's memory directly, bypassing HTTP and the backend."""

    def __init__(self, server: OssProtocolServer, bucket: str, prefix: str = PREFIX) -> None:
        self.server = server
        self.bucket = bucket
        self.prefix = prefix

    def read(self, key: str) -> bytes:
        return self.server.get_object(self.bucket, f"{self.prefix}/{key}")

    def write(self, key: str, data: bytes) -> None:
        self.server.put_object(self.bucket, f"{self.prefix}/{key}", data)


def _options(server: OssProtocolServer, **overrides: Any) -> dict[str, Any]:
    options: dict[str, Any] = {
        "endpoint": server.endpoint,
        "access_key_id": ACCESS_KEY_ID,
        "access_key_secret": ACCESS_KEY_SECRET,
        "part_size": PART_SIZE,
        "multipart_threshold": THRESHOLD,
        "connect_timeout": 2,
        "read_timeout": 30,
    }
    options.update(overrides)
    return options


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def bucket(oss_server: OssProtocolServer) -> str:
    return new_bucket(oss_server)


@pytest.fixture
def oss_backend(oss_server: OssProtocolServer, bucket: str) -> Iterator[OssBackend]:
    be = from_url(f"oss://{bucket}/{PREFIX}", **_options(oss_server))
    yield be
    be.close()


class TestOssBackend(BackendContract, EngineThroughBackend):
    @pytest.fixture
    def backend(self, oss_backend: OssBackend) -> OssBackend:
        return oss_backend

    @pytest.fixture
    def raw(self, oss_server: OssProtocolServer, bucket: str) -> _ServerStorage:
        return _ServerStorage(oss_server, bucket)

    @pytest.fixture
    def list_page(self, monkeypatch: pytest.MonkeyPatch) -> int:
        return small_list_pages(monkeypatch, backends.oss)


def test_oss_backend_matches_a_dict_model(oss_server: OssProtocolServer, bucket: str) -> None:
    """Each run gets its own prefix in the bucket, so it starts empty."""
    check_against_model(
        lambda: from_url(f"oss://{bucket}/model-{uuid.uuid4().hex[:12]}", **_options(oss_server))
    )


# -- OSS-specific backend behaviour -----------------------------------------------------------


def _requests_for(server: OssProtocolServer, bucket: str) -> list[Any]:
    return [r for r in server.requests if r.bucket == bucket]


def test_large_put_is_multipart_and_leaves_no_upload(
    oss_server: OssProtocolServer,
    bucket: str,
    oss_backend: OssBackend,
) -> None:
    payload = os.urandom(THRESHOLD + PART_SIZE // 2)
    oss_backend.put("big", io.BytesIO(payload))
    oss_backend.put("big-bytes", memoryview(payload))
    for key in ("big", "big-bytes"):
        assert oss_server.get_object(bucket, f"{PREFIX}/{key}") == payload
        assert oss_server.object_kind(bucket, f"{PREFIX}/{key}") == "Multipart"
    parts = [r for r in _requests_for(oss_server, bucket) if r.method == "PUT" and "partNumber" in r.query]
    assert len(parts) == 2 * 4  # 3.5 MiB in 1 MiB parts, twice
    assert all("content-md5" in r.headers for r in parts)
    assert oss_server.pending_uploads(bucket) == 0


def test_small_put_is_one_request_with_md5_and_forbid_overwrite(
    oss_server: OssProtocolServer,
    bucket: str,
    oss_backend: OssBackend,
) -> None:
    oss_backend.put("a", b"payload", overwrite=False)
    oss_backend.put("b", b"payload")
    puts = {r.key: r for r in _requests_for(oss_server, bucket) if r.method == "PUT"}
    assert puts[f"{PREFIX}/a"].headers["x-oss-forbid-overwrite"] == "true"
    assert "x-oss-forbid-overwrite" not in puts[f"{PREFIX}/b"].headers
    assert (
        puts[f"{PREFIX}/a"].headers["content-md5"]
        == base64.b64encode(hashlib.md5(b"payload").digest()).decode()
    )
    assert oss_server.object_kind(bucket, f"{PREFIX}/a") == "Normal"


class _SlowReader(io.RawIOBase):
    """A file that records how much each ``read`` asked for and can run a hook part-way through."""

    def __init__(self, data: bytes, hook_at: int | None = None, hook: Any = None) -> None:
        self._data = memoryview(data)
        self._pos = 0
        self.asks: list[int] = []
        self._hook_at = hook_at
        self._hook = hook

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        self.asks.append(size)
        if self._hook is not None and self._hook_at is not None and self._pos >= self._hook_at:
            self._hook()
            self._hook = None
        end = len(self._data) if size < 0 else min(len(self._data), self._pos + size)
        chunk = bytes(self._data[self._pos : end])
        self._pos = end
        return chunk


def test_stream_is_read_in_bounded_pieces(
    oss_server: OssProtocolServer,
    bucket: str,
    oss_backend: OssBackend,
) -> None:
    payload = os.urandom(THRESHOLD + 3 * PART_SIZE + 5)
    reader = _SlowReader(payload)
    oss_backend.put("streamed", reader)  # type: ignore[arg-type]
    assert oss_server.get_object(bucket, f"{PREFIX}/streamed") == payload
    assert all(0 < ask <= THRESHOLD + 1 for ask in reader.asks), reader.asks  # never "read it all"


def test_multipart_put_if_absent_refused_keeps_original(
    oss_server: OssProtocolServer,
    bucket: str,
    oss_backend: OssBackend,
) -> None:
    oss_backend.put("taken", b"original")
    with pytest.raises(AlreadyExists):
        oss_backend.put("taken", io.BytesIO(os.urandom(THRESHOLD + 1)), overwrite=False)
    assert oss_server.get_object(bucket, f"{PREFIX}/taken") == b"original"
    assert oss_server.pending_uploads(bucket) == 0


def test_multipart_put_if_absent_decided_at_completion(
    oss_server: OssProtocolServer,
    bucket: str,
    oss_backend: OssBackend,
) -> None:
    """Another writer creates the key while our parts upload: completion refuses, the upload is aborted."""
    name = f"{PREFIX}/late"
    reader = _SlowReader(
        os.urandom(THRESHOLD + 2 * PART_SIZE),
        hook_at=THRESHOLD + 1,
        hook=lambda: oss_server.put_object(bucket, name, b"other writer"),
    )
    with pytest.raises(AlreadyExists):
        oss_backend.put("late", reader, overwrite=False)  # type: ignore[arg-type]
    assert oss_server.get_object(bucket, name) == b"other writer"
    assert oss_server.pending_uploads(bucket) == 0


def test_ranges_when_server_ignores_standard_behaviour() -> None:
    """An OSS that ignores ``x-oss-range-behavior`` answers bad ranges with the whole object; still correct."""
    with OssProtocolServer({ACCESS_KEY_ID: ACCESS_KEY_SECRET}) as server:
        server.standard_ranges = False
        name = new_bucket(server)
        be = from_url(f"oss://{name}/{PREFIX}", **_options(server))
        BackendContract().test_ranges_at_the_edges(be)
        be.put("empty", b"")
        assert be.get("empty", 0, 10) == b""
        assert be.get("empty", -3) == b""


def test_range_reads_ask_for_standard_behaviour(
    oss_server: OssProtocolServer,
    bucket: str,
    oss_backend: OssBackend,
) -> None:
    """Without the header OSS answers a bad range with the whole object: correct after cutting, but slow."""
    oss_backend.put("r", b"0123456789")
    assert oss_backend.get("r", 3, 4) == b"3456"
    assert oss_backend.get("r", -2) == b"89"
    ranged = [r for r in _requests_for(oss_server, bucket) if r.method == "GET" and "range" in r.headers]
    assert [r.headers["range"] for r in ranged] == ["bytes=3-6", "bytes=-2"]
    assert all(r.headers.get("x-oss-range-behavior") == "standard" for r in ranged)


def test_whole_reads_are_crc_checked(
    oss_server: OssProtocolServer,
    bucket: str,
    oss_backend: OssBackend,
) -> None:
    oss_backend.put("rot", b"good bytes")
    oss_server.corrupt_object(bucket, f"{PREFIX}/rot", b"bad! bytes")
    with pytest.raises(IntegrityError, match="CRC"):
        oss_backend.get("rot")


def test_server_errors_are_unavailable_with_request_id(
    oss_server: OssProtocolServer,
    bucket: str,
    oss_backend: OssBackend,
) -> None:
    oss_server.inject_fault(status=503, code="ServiceUnavailable")
    with pytest.raises(Unavailable) as info:
        oss_backend.put("k", b"x")
    assert info.value.temporary and info.value.request_id
    oss_server.inject_fault(status=500, code="InternalError")
    with pytest.raises(Unavailable):
        oss_backend.stat("k")
    oss_backend.put("k", b"x")  # the next request is served normally


def test_read_timeout_is_unavailable_fast(oss_server: OssProtocolServer, bucket: str) -> None:
    be = from_url(f"oss://{bucket}/{PREFIX}", **_options(oss_server, read_timeout=0.3))
    oss_server.inject_fault(status=0, delay=1.5)
    started = time.monotonic()
    with pytest.raises(Unavailable, match="cannot reach OSS"):
        be.get("k")
    assert time.monotonic() - started < 1.4


def test_connection_lost_mid_body_is_unavailable(
    oss_server: OssProtocolServer, bucket: str, oss_backend: OssBackend
) -> None:
    payload = os.urandom(200_000)
    oss_backend.put("cut", payload)
    for call in (lambda: oss_backend.get("cut"), lambda: oss_backend.get("cut", 10, 150_000)):
        oss_server.inject_fault(status=0, truncate=True)
        with pytest.raises(Unavailable, match="connection lost|cannot reach"):
            call()
    assert oss_backend.get("cut") == payload


def test_failed_multipart_upload_is_aborted(
    oss_server: OssProtocolServer,
    bucket: str,
    oss_backend: OssBackend,
) -> None:
    payload = io.BytesIO(os.urandom(THRESHOLD + PART_SIZE))
    # initiate and part 1 succeed; part 2 fails.
    reader = _SlowReader(
        payload.getvalue(),
        hook_at=THRESHOLD + 1,
        hook=lambda: oss_server.inject_fault(status=503, code="ServiceUnavailable"),
    )
    with pytest.raises(Unavailable):
        oss_backend.put("half", reader)  # type: ignore[arg-type]
    assert oss_server.pending_uploads(bucket) == 0
    assert f"{PREFIX}/half" not in oss_server.keys(bucket)


def test_list_sees_only_its_prefix(
    oss_server: OssProtocolServer,
    bucket: str,
    oss_backend: OssBackend,
) -> None:
    oss_server.put_object(bucket, "other/x", b"1")
    oss_server.put_object(bucket, f"{PREFIX}x/y", b"1")
    oss_backend.put("mine", b"22")
    assert [(i.key, i.size) for i in oss_backend.list()] == [("mine", 2)]


def test_wrong_secret_is_permission_denied_fast_and_secret_free(
    oss_server: OssProtocolServer,
    bucket: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    secret = "wrong-secret-Hq93LxUe0"
    be = from_url(f"oss://{bucket}/{PREFIX}", **_options(oss_server, access_key_secret=secret))
    caplog.set_level(logging.DEBUG)
    started = time.monotonic()
    for call in (
        lambda: be.put("k", b"x"),
        lambda: be.get("k"),
        lambda: be.stat("k"),
        lambda: list(be.list()),
    ):
        with pytest.raises(PermissionDenied) as info:
            call()
        message = str(info.value)
        assert secret not in message and ACCESS_KEY_SECRET not in message
        assert info.value.request_id and info.value.request_id in message
        assert "SignatureDoesNotMatch" in message
        assert not info.value.temporary
    assert time.monotonic() - started < 3
    assert secret not in caplog.text
    assert secret not in be.describe()


def test_unknown_access_key_id_is_permission_denied(oss_server: OssProtocolServer, bucket: str) -> None:
    be = from_url(f"oss://{bucket}/{PREFIX}", **_options(oss_server, access_key_id="LTAInobody"))
    with pytest.raises(PermissionDenied, match="InvalidAccessKeyId"):
        be.get("k")


def test_unreachable_endpoint_is_unavailable_fast() -> None:
    endpoint = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    be = from_url(
        "oss://some-bucket/p",
        endpoint=endpoint,
        access_key_id="id",
        access_key_secret="Sekr1t-unreach",
        connect_timeout=1,
    )
    started = time.monotonic()
    with pytest.raises(Unavailable) as info:
        be.put("k", b"x")
    assert time.monotonic() - started < 3
    assert info.value.temporary
    assert "Sekr1t-unreach" not in str(info.value)


def test_missing_bucket_is_configuration_error(oss_server: OssProtocolServer) -> None:
    be = from_url("oss://no-such-bucket-here/p", **_options(oss_server))
    with pytest.raises(ConfigurationError, match="NoSuchBucket"):
        be.get("k")
    with pytest.raises(ConfigurationError, match="NoSuchBucket"):
        be.stat("k")  # a HEAD: the code comes from the x-oss-err header


def test_missing_settings_name_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("OSS_ACCESS_KEY_ID", "OSS_ACCESS_KEY_SECRET", "OSS_ENDPOINT"):
        monkeypatch.delenv(var, raising=False)
    full = {"endpoint": "http://127.0.0.1:9", "access_key_id": "id", "access_key_secret": "s"}
    for missing in full:
        options = {k: v for k, v in full.items() if k != missing}
        with pytest.raises(ConfigurationError, match=missing):
            from_url("oss://b-b-b/p", **options)
    with pytest.raises(ConfigurationError, match="bucket"):
        from_url("oss:///p", **full)
    with pytest.raises(ConfigurationError, match="unknown OSS option"):
        from_url("oss://b-b-b/p", colour="red", **full)


def test_settings_from_environment(
    oss_server: OssProtocolServer,
    bucket: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OSS_ACCESS_KEY_ID", ACCESS_KEY_ID)
    monkeypatch.setenv("OSS_ACCESS_KEY_SECRET", ACCESS_KEY_SECRET)
    monkeypatch.setenv("OSS_ENDPOINT", oss_server.endpoint)
    be = open_backend(f"oss://{bucket}/{PREFIX}")
    assert isinstance(be, OssBackend)
    be.put("via-env", b"ok")
    assert oss_server.get_object(bucket, f"{PREFIX}/via-env") == b"ok"


def test_aiflow_style_options(oss_server: OssProtocolServer, bucket: str) -> None:
    be = open_backend("oss://", **_options(oss_server, bucket=bucket, root_directory="/aiflow/blobs/"))
    be.put("x", b"1")
    assert oss_server.get_object(bucket, "aiflow/blobs/x") == b"1"
    assert be.describe() == f"oss://{bucket}/aiflow/blobs (endpoint {oss_server.endpoint})"
    assert ACCESS_KEY_SECRET not in be.describe()


def test_credentials_in_url_refused_without_echo() -> None:
    with pytest.raises(ConfigurationError) as info:
        from_url("oss://id:TopSecret99@bucket/p")
    assert "TopSecret99" not in str(info.value)


def test_missing_key_with_zero_length_is_not_found(oss_backend: OssBackend) -> None:
    with pytest.raises(NotFound):
        oss_backend.get("absent", 0, 0)
    with pytest.raises(NotFound):
        oss_backend.get("absent", -5)


# -- the protocol server itself -----------------------------------------------------------------


def _client_string_to_sign(
    method: str, path_bucket: str, key: str, headers: Mapping[str, str], sub: Mapping[str, str]
) -> str:
    """Written from the OSS V1 documentation, independently of the server's implementation."""
    lower = {k.lower(): v for k, v in headers.items()}
    oss_lines = "".join(f"{k}:{lower[k]}\n" for k in sorted(lower) if k.startswith("x-oss-"))
    resource = f"/{path_bucket}/{key}"
    if sub:
        resource += "?" + "&".join(k if v == "" else f"{k}={v}" for k, v in sorted(sub.items()))
    return (
        f"{method}\n{lower.get('content-md5', '')}\n{lower.get('content-type', '')}\n{lower['date']}\n"
        f"{oss_lines}{resource}"
    )


def _send(
    server: OssProtocolServer,
    method: str,
    bucket: str,
    key: str = "",
    *,
    headers: Mapping[str, str] | None = None,
    params: Mapping[str, str] | None = None,
    body: bytes = b"",
    key_id: str = ACCESS_KEY_ID,
    secret: str = ACCESS_KEY_SECRET,
    signed_headers: Mapping[str, str] | None = None,
    signed_params: Mapping[str, str] | None = None,
    signed_key: str | None = None,
) -> requests.Response:
    """A request signed by hand; ``signed_*`` sign something other than what is sent (tampering)."""
    sent_headers = {"Date": email.utils.formatdate(usegmt=True), **(headers or {})}
    to_sign = {
        "Date": sent_headers["Date"],
        **(signed_headers if signed_headers is not None else headers or {}),
    }
    string = _client_string_to_sign(
        method,
        bucket,
        key if signed_key is None else signed_key,
        to_sign,
        signed_params if signed_params is not None else params or {},
    )
    signature = base64.b64encode(hmac.new(secret.encode(), string.encode(), hashlib.sha1).digest()).decode()
    sent_headers["Authorization"] = f"OSS {key_id}:{signature}"
    url = f"{server.endpoint}/{bucket}/{requests.utils.quote(key, safe='')}"
    return requests.request(method, url, headers=sent_headers, params=params, data=body, timeout=10)


def _error_code(response: requests.Response) -> str:
    assert response.headers.get("x-oss-request-id")
    text = response.text or base64.b64decode(response.headers.get("x-oss-err", "")).decode()
    assert f"<RequestId>{response.headers['x-oss-request-id']}</RequestId>" in text
    return text.split("<Code>", 1)[1].split("</Code>", 1)[0]


def test_v1_signature_matches_the_documented_example() -> None:
    """The worked example of OSS's V1 signature documentation (AccessKeySecret OtxrzxIs...)."""
    headers = {
        "content-md5": "c8fdb181845a4ca6b8fec737b3581d76",
        "content-type": "text/html",
        "date": "Thu, 17 Nov 2005 18:49:58 GMT",
        "x-oss-meta-author": "foo@bar.com",
        "x-oss-magic": "abracadabra",
    }
    string = v1_string_to_sign("PUT", headers, "quotes", "nelson", [])
    assert v1_signature("OtxrzxIsfpFjA7SwPzILwy8Bw21TLhquhboDYROV", string) == "63mwfl+zYIOG6k95yxbgMruQ6QI="


def test_crc64_is_the_ecma_variant_oss_uses() -> None:
    assert crc64ecma(b"123456789") == 0x995DC9BBDF1939FA  # CRC-64/XZ check value
    sdk = oss2.utils.Crc64(0)
    sdk.update(b"some bytes")
    assert crc64ecma(b"some bytes") == sdk.crc


def test_hand_signed_request_is_accepted(oss_server: OssProtocolServer, bucket: str) -> None:
    """The baseline that makes the rejections below mean something."""
    put = _send(
        oss_server,
        "PUT",
        bucket,
        "dir/a b",
        headers={"Content-Type": "text/plain", "x-oss-meta-k": "v"},
        body=b"hello",
    )
    assert put.status_code == 200, put.text
    get = _send(oss_server, "GET", bucket, "dir/a b")
    assert (get.status_code, get.content) == (200, b"hello")


@pytest.mark.parametrize(
    ("tamper", "status", "code"),
    [
        ({"secret": "not-the-secret"}, 403, "SignatureDoesNotMatch"),
        ({"key_id": "LTAIunknown"}, 403, "InvalidAccessKeyId"),
        ({"signed_headers": {"x-oss-forbid-overwrite": "false"}}, 403, "SignatureDoesNotMatch"),
        ({"signed_headers": {"Content-Type": "text/html"}}, 403, "SignatureDoesNotMatch"),
        ({"signed_headers": {}}, 403, "SignatureDoesNotMatch"),  # x-oss header added after signing
        ({"signed_key": "other-key"}, 403, "SignatureDoesNotMatch"),
        ({"signed_params": {"acl": ""}}, 403, "SignatureDoesNotMatch"),  # sub-resource added
    ],
)
def test_tampered_requests_are_rejected(
    oss_server: OssProtocolServer,
    bucket: str,
    tamper: dict[str, Any],
    status: int,
    code: str,
) -> None:
    response = _send(
        oss_server,
        "PUT",
        bucket,
        "victim",
        body=b"x",
        headers={"Content-Type": "text/plain", "x-oss-forbid-overwrite": "true"},
        **tamper,
    )
    assert response.status_code == status
    assert _error_code(response) == code
    assert "victim" not in oss_server.keys(bucket)


def test_tampered_part_number_is_rejected(oss_server: OssProtocolServer, bucket: str) -> None:
    upload = oss2.Bucket(oss2.Auth(ACCESS_KEY_ID, ACCESS_KEY_SECRET), oss_server.endpoint, bucket)
    upload_id = upload.init_multipart_upload("m").upload_id
    response = _send(
        oss_server,
        "PUT",
        bucket,
        "m",
        body=b"x",
        params={"uploadId": upload_id, "partNumber": "2"},
        signed_params={"uploadId": upload_id, "partNumber": "1"},
    )
    assert (response.status_code, _error_code(response)) == (403, "SignatureDoesNotMatch")


def test_unsigned_stale_and_foreign_scheme_requests_are_rejected(
    oss_server: OssProtocolServer,
    bucket: str,
) -> None:
    anonymous = requests.get(f"{oss_server.endpoint}/{bucket}/x", timeout=10)
    assert (anonymous.status_code, _error_code(anonymous)) == (403, "AccessDenied")
    stale = email.utils.formatdate(time.time() - 3600, usegmt=True)
    old = _send(oss_server, "GET", bucket, "x", headers={"Date": stale})
    assert (old.status_code, _error_code(old)) == (403, "RequestTimeTooSkewed")
    v4 = requests.get(
        f"{oss_server.endpoint}/{bucket}/x",
        timeout=10,
        headers={
            "Authorization": f"OSS4-HMAC-SHA256 Credential={ACCESS_KEY_ID}/20250101/cn-hangzhou/oss/aliyun_v4_request,"
            "Signature=00",
            "x-oss-date": "20250101T000000Z",
        },
    )
    assert v4.status_code == 403


def test_content_md5_mismatch_is_rejected(oss_server: OssProtocolServer, bucket: str) -> None:
    wrong = base64.b64encode(hashlib.md5(b"other").digest()).decode()
    response = _send(oss_server, "PUT", bucket, "md5", headers={"Content-MD5": wrong}, body=b"payload")
    assert (response.status_code, _error_code(response)) == (400, "InvalidDigest")
    assert "md5" not in oss_server.keys(bucket)


def test_ranges_follow_oss_behaviours(oss_server: OssProtocolServer, bucket: str) -> None:
    oss_server.put_object(bucket, "r", bytes(range(100)))
    standard = {"x-oss-range-behavior": "standard"}

    def get(range_header: str, extra: Mapping[str, str] | None = None) -> requests.Response:
        return _send(oss_server, "GET", bucket, "r", headers={"Range": range_header, **(extra or {})})

    ok = get("bytes=10-19")
    assert (ok.status_code, ok.content, ok.headers["Content-Range"]) == (
        206,
        bytes(range(10, 20)),
        "bytes 10-19/100",
    )
    assert get("bytes=-5").content == bytes(range(95, 100))
    # Compatible behaviour: out of range means "ignore the Range header".
    assert (get("bytes=100-").status_code, len(get("bytes=100-").content)) == (200, 100)
    assert (get("bytes=90-200").status_code, len(get("bytes=90-200").content)) == (200, 100)
    # Standard behaviour: RFC 7233.
    past = get("bytes=100-", standard)
    assert (past.status_code, _error_code(past)) == (416, "InvalidRange")
    clipped = get("bytes=90-200", standard)
    assert (clipped.status_code, clipped.content) == (206, bytes(range(90, 100)))
    assert get("bytes=-500", standard).content == bytes(range(100))


def test_head_errors_travel_in_x_oss_err(oss_server: OssProtocolServer, bucket: str) -> None:
    response = _send(oss_server, "HEAD", bucket, "absent")
    assert response.status_code == 404 and response.content == b""
    assert _error_code(response) == "NoSuchKey"
    missing_bucket = _send(oss_server, "GET", "no-such-bucket-x", "k")
    assert (missing_bucket.status_code, _error_code(missing_bucket)) == (404, "NoSuchBucket")


def test_multipart_rules_are_enforced(oss_server: OssProtocolServer, bucket: str) -> None:
    sdk = oss2.Bucket(oss2.Auth(ACCESS_KEY_ID, ACCESS_KEY_SECRET), oss_server.endpoint, bucket)
    upload_id = sdk.init_multipart_upload("m").upload_id
    small = sdk.upload_part("m", upload_id, 1, b"tiny")
    last = sdk.upload_part("m", upload_id, 2, b"end")
    with pytest.raises(oss2.exceptions.ServerError) as too_small:
        sdk.complete_multipart_upload(
            "m", upload_id, [oss2.models.PartInfo(1, small.etag), oss2.models.PartInfo(2, last.etag)]
        )
    assert (too_small.value.status, too_small.value.code) == (400, "EntityTooSmall")
    with pytest.raises(oss2.exceptions.ServerError) as bad_etag:
        sdk.complete_multipart_upload("m", upload_id, [oss2.models.PartInfo(2, "0" * 32)])
    assert bad_etag.value.code == "InvalidPart"
    sdk.abort_multipart_upload("m", upload_id)
    with pytest.raises(oss2.exceptions.NoSuchUpload):
        sdk.upload_part("m", upload_id, 3, b"late")
    assert "m" not in oss_server.keys(bucket)


def test_forbid_overwrite_answers_file_already_exists(oss_server: OssProtocolServer, bucket: str) -> None:
    sdk = oss2.Bucket(oss2.Auth(ACCESS_KEY_ID, ACCESS_KEY_SECRET), oss_server.endpoint, bucket)
    sdk.put_object("k", b"first", headers={"x-oss-forbid-overwrite": "true"})
    with pytest.raises(oss2.exceptions.ServerError) as info:
        sdk.put_object("k", b"second", headers={"x-oss-forbid-overwrite": "true"})
    assert (info.value.status, info.value.code) == (409, "FileAlreadyExists")
    assert info.value.request_id
    assert oss_server.get_object(bucket, "k") == b"first"


def test_list_objects_v2_pages_and_url_encodes(oss_server: OssProtocolServer, bucket: str) -> None:
    keys = ["d/a b", "d/é+%", "d/sub/x", "d/sub/y", "e"]
    for key in keys:
        oss_server.put_object(bucket, key, key.encode())
    sdk = oss2.Bucket(oss2.Auth(ACCESS_KEY_ID, ACCESS_KEY_SECRET), oss_server.endpoint, bucket)
    first = sdk.list_objects_v2(prefix="d/", max_keys=2)
    assert first.is_truncated and [o.key for o in first.object_list] == ["d/a b", "d/sub/x"]
    assert [o.key for o in oss2.ObjectIteratorV2(sdk, prefix="d/", max_keys=1)] == sorted(keys[:4])
    by_dir = sdk.list_objects_v2(prefix="d/", delimiter="/")
    assert [o.key for o in by_dir.object_list] == ["d/a b", "d/é+%"] and by_dir.prefix_list == ["d/sub/"]
    with pytest.raises(oss2.exceptions.ServerError):
        sdk.list_objects_v2(max_keys=1001)


def test_server_stops_cleanly() -> None:
    server = OssProtocolServer({ACCESS_KEY_ID: ACCESS_KEY_SECRET}).start()
    endpoint = server.endpoint
    server.stop()
    server.stop()  # idempotent
    with pytest.raises(requests.ConnectionError):
        requests.get(endpoint, timeout=2)


# -- real OSS -----------------------------------------------------------------------------------

_REAL = {
    name: os.environ.get(f"CAS_TEST_OSS_{name}", "")
    for name in ("ENDPOINT", "BUCKET", "ACCESS_KEY_ID", "ACCESS_KEY_SECRET")
}


class _Oss2Access:
    """Raw access to real OSS through oss2 directly, not through the backend."""

    def __init__(self, sdk: oss2.Bucket, prefix: str) -> None:
        self.sdk = sdk
        self.prefix = prefix

    def read(self, key: str) -> bytes:
        try:
            return bytes(self.sdk.get_object(f"{self.prefix}/{key}").read())
        except oss2.exceptions.NoSuchKey as exc:
            raise FileNotFoundError(key) from exc

    def write(self, key: str, data: bytes) -> None:
        self.sdk.put_object(f"{self.prefix}/{key}", data)


@pytest.mark.skipif(
    not all(_REAL.values()), reason="set CAS_TEST_OSS_{ENDPOINT,BUCKET,ACCESS_KEY_ID,ACCESS_KEY_SECRET}"
)
class TestRealOss(BackendContract, EngineThroughBackend):
    @pytest.fixture
    def prefix(self) -> str:
        return f"cas-test/{uuid.uuid4().hex}"

    @pytest.fixture
    def sdk(self, prefix: str) -> Iterator[oss2.Bucket]:
        sdk = oss2.Bucket(
            oss2.Auth(_REAL["ACCESS_KEY_ID"], _REAL["ACCESS_KEY_SECRET"]), _REAL["ENDPOINT"], _REAL["BUCKET"]
        )
        yield sdk
        names = [o.key for o in oss2.ObjectIteratorV2(sdk, prefix=prefix + "/", max_keys=1000)]
        for start in range(0, len(names), 1000):
            sdk.batch_delete_objects(names[start : start + 1000])

    @pytest.fixture
    def backend(self, sdk: oss2.Bucket, prefix: str) -> OssBackend:
        return from_url(
            f"oss://{_REAL['BUCKET']}/{prefix}",
            endpoint=_REAL["ENDPOINT"],
            access_key_id=_REAL["ACCESS_KEY_ID"],
            access_key_secret=_REAL["ACCESS_KEY_SECRET"],
            part_size=PART_SIZE,
            multipart_threshold=THRESHOLD,
        )

    @pytest.fixture
    def raw(self, sdk: oss2.Bucket, prefix: str) -> _Oss2Access:
        return _Oss2Access(sdk, prefix)
