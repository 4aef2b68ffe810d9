"""OSS signature V4: the backend signs OSS4-HMAC-SHA256 by default where it can, and the OSS
protocol server verifies it as OSS does.

The server accepts only V4 here (``signature_versions = {4}``), so every request of the backend
contract and of the engine's snapshot and restore proves the client signed V4 with the right
region. The verifier is checked from both sides: requests signed by oss2's own signer (an
implementation independent of the server's) pass, and the same requests with any signed part
changed in transit fail.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import oss2
import pytest
import requests

from backends.errors import CasError, ConfigurationError, PermissionDenied
from backends.oss import OssBackend, from_url
from backends.oss_config import parse
from backends.testing import BackendContract
from tests.backends.test_engine import EngineThroughBackend
from tests.oss_server import OssProtocolServer
from tests.servers.oss import ACCESS_KEY_ID, ACCESS_KEY_SECRET, new_bucket

PREFIX = "v4"
REGION = "cn-test-1"
SMALL_PARTS = {"part_size": 1 << 20, "multipart_threshold": 3 << 20}


@pytest.fixture(scope="module")
def v4_server() -> Iterator[OssProtocolServer]:
    with OssProtocolServer({ACCESS_KEY_ID: ACCESS_KEY_SECRET}) as server:
        server.signature_versions = frozenset({4})
        server.region = REGION
        yield server


def _options(server: OssProtocolServer, **extra: Any) -> dict[str, Any]:
    return {"endpoint": server.endpoint, "access_key_id": ACCESS_KEY_ID, "access_key_secret": ACCESS_KEY_SECRET,
            **SMALL_PARTS, **extra}


class _Storage:
    def __init__(self, server: OssProtocolServer, bucket: str) -> None:
        self.server, self.bucket = server, bucket

    def read(self, key: str) -> bytes:
        return self.server.get_object(self.bucket, f"{PREFIX}/{key}")

    def write(self, key: str, data: bytes) -> None:
        self.server.put_object(self.bucket, f"{PREFIX}/{key}", data)


class TestOssV4(BackendContract, EngineThroughBackend):
    @pytest.fixture
    def bucket(self, v4_server: OssProtocolServer) -> str:
        return new_bucket(v4_server)

    @pytest.fixture
    def backend(self, v4_server: OssProtocolServer, bucket: str) -> Iterator[OssBackend]:
        be = from_url(f"oss://{bucket}/{PREFIX}", **_options(v4_server, region=REGION))  # V4 by default
        yield be
        be.close()

    @pytest.fixture
    def raw(self, v4_server: OssProtocolServer, bucket: str) -> _Storage:
        return _Storage(v4_server, bucket)


def test_requests_carry_v4_authorization(v4_server: OssProtocolServer) -> None:
    bucket = new_bucket(v4_server)
    be = from_url(f"oss://{bucket}/{PREFIX}", **_options(v4_server, region=REGION))
    be.put("k", b"v")
    assert be.get("k") == b"v"
    be.close()
    seen = [r for r in v4_server.requests if r.bucket == bucket]
    assert seen and all(r.headers["authorization"].startswith("OSS4-HMAC-SHA256 Credential=") for r in seen)
    assert all(f"/{REGION}/oss/aliyun_v4_request" in r.headers["authorization"] for r in seen)


def test_v1_is_refused_by_a_v4_only_server(v4_server: OssProtocolServer) -> None:
    bucket = new_bucket(v4_server)
    be = from_url(f"oss://{bucket}/{PREFIX}", **_options(v4_server, auth_version="v1"))
    with pytest.raises(PermissionDenied):
        be.put("k", b"v")
    be.close()
    assert v4_server.keys(bucket) == []


def test_wrong_region_and_wrong_secret_are_one_line_errors(v4_server: OssProtocolServer) -> None:
    bucket = new_bucket(v4_server)
    elsewhere = from_url(f"oss://{bucket}/{PREFIX}", **_options(v4_server, region="cn-elsewhere"))
    with pytest.raises(CasError, match="region") as info:
        elsewhere.put("k", b"v")
    assert "\n" not in str(info.value)
    wrong = from_url(f"oss://{bucket}/{PREFIX}",
                     **{**_options(v4_server, region=REGION), "access_key_secret": "not-the-secret"})
    with pytest.raises(PermissionDenied) as info:
        wrong.put("k", b"v")
    assert "not-the-secret" not in str(info.value) and "\n" not in str(info.value)
    for be in (elsewhere, wrong):
        be.close()
    assert v4_server.keys(bucket) == []


# -- the verifier: oss2's signer passes, tampering fails ---------------------------------------------


def _signed(server: OssProtocolServer, bucket: str, key: str, params: dict[str, str], body: bytes = b"",
            headers: dict[str, str] | None = None) -> tuple[str, dict[str, str]]:
    """A PUT (with ``body``) or GET signed by oss2's AuthV4: ``(url, headers)``."""
    method = "PUT" if body else "GET"
    req = oss2.http.Request(method, f"{server.endpoint}/{bucket}/{key}", data=body, params=dict(params),
                            headers=dict(headers or {}), region=REGION, product="oss")
    oss2.AuthV4(ACCESS_KEY_ID, ACCESS_KEY_SECRET)._sign_request(req, bucket, key)
    return method, {k: v for k, v in req.headers.items() if v is not None}


def _send(server: OssProtocolServer, method: str, bucket: str, key: str, params: dict[str, str],
          headers: dict[str, str], body: bytes = b"") -> requests.Response:
    return requests.request(method, f"{server.endpoint}/{bucket}/{key}", params=params, headers=headers,
                            data=body, timeout=10)


def _another_second(date_time: str) -> str:
    """``YYYYMMDDTHHMMSSZ`` with the last digit of its seconds changed."""
    return date_time[:-2] + ("1" if date_time[-2] != "1" else "2") + "Z"


def test_oss2_signed_requests_pass_and_tampered_ones_fail(v4_server: OssProtocolServer) -> None:
    bucket = new_bucket(v4_server)
    key = "dir/a b+c~.txt"  # characters V4's encoding treats differently from form encoding
    body = b"payload"
    meta = {"Content-Type": "application/octet-stream", "x-oss-meta-kind": "model"}
    method, headers = _signed(v4_server, bucket, key, {}, body, meta)
    assert _send(v4_server, method, bucket, key, {}, headers, body).status_code == 200
    params = {"x-oss-process": "none/with slash"}  # every query parameter is signed in V4
    method, headers = _signed(v4_server, bucket, key, params)
    ok = _send(v4_server, method, bucket, key, params, headers)
    assert ok.status_code == 200 and ok.content == body

    tampered = [
        ("key", {}, headers, "dir/a b+c~.tx"),
        ("query value", {"x-oss-process": "none/other"}, headers, key),
        ("extra query parameter", {**params, "versionId": "1"}, headers, key),
        ("signed header", params, {**headers, "x-oss-meta-extra": "1"}, key),
        ("content type", params, {**headers, "Content-Type": "text/plain"}, key),
        ("date", params, {**headers, "x-oss-date": _another_second(headers["x-oss-date"])}, key),
    ]
    for what, query, sent, target in tampered:
        response = _send(v4_server, "GET", bucket, target, query, sent)
        assert response.status_code == 403 and b"SignatureDoesNotMatch" in response.content, what


def test_region_is_read_from_alibaba_endpoints(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OSS_REGION", raising=False)
    creds = {"access_key_id": "i", "access_key_secret": "s"}
    for endpoint, region in [("oss-cn-hangzhou.aliyuncs.com", "cn-hangzhou"),
                             ("https://oss-cn-shanghai-internal.aliyuncs.com", "cn-shanghai"),
                             ("https://oss-ap-southeast-1.aliyuncs.com", "ap-southeast-1"),
                             ("http://127.0.0.1:9000", None)]:
        config = parse("oss://bucket/p", {**creds, "endpoint": endpoint})
        assert config.region == region, endpoint
    default_v4 = OssBackend(parse("oss://bucket/p", {**creds, "endpoint": "oss-cn-hangzhou.aliyuncs.com"}))
    assert isinstance(default_v4._bucket.auth, oss2.AuthV4)
    default_v4.close()
    local = OssBackend(parse("oss://bucket/p", {**creds, "endpoint": "http://127.0.0.1:9"}))
    assert not isinstance(local._bucket.auth, oss2.AuthV4)  # no region known: V1
    local.close()
    monkeypatch.setenv("OSS_REGION", "cn-beijing")
    assert parse("oss://bucket/p", {**creds, "endpoint": "http://127.0.0.1:9"}).region == "cn-beijing"
    with pytest.raises(ConfigurationError, match="region"):
        monkeypatch.delenv("OSS_REGION")
        parse("oss://bucket/p", {**creds, "endpoint": "http://127.0.0.1:9", "auth_version": "v4"})
    with pytest.raises(ConfigurationError, match="auth_version"):
        parse("oss://bucket/p", {**creds, "endpoint": "e", "auth_version": "v2"})
