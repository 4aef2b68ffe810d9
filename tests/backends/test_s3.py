"""S3 backend against moto's standalone server over real loopback sockets.

The contract suite runs with a fresh bucket per test and ``raw`` access through boto3 directly.
The rest covers what only S3 has: multipart uploads, conditional writes decided by the server,
error translation (credentials checked by a second moto instance with IAM auth on), unreachable
and silent endpoints, and connections cut mid-transfer by a loopback proxy.
"""

from __future__ import annotations

import io
import logging
import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import backends.s3
from backends import open_backend
from backends.errors import (
    AlreadyExists,
    CasError,
    ConfigurationError,
    NotFound,
    PermissionDenied,
    Unavailable,
)
from backends.retry import RetryingBackend
from backends.s3 import MIN_PART_SIZE, S3Backend, _translate, from_url
from backends.testing import MULTIPART_SIZE, BackendContract, check_against_model
from tests.backends.test_engine import EngineThroughBackend
from tests.servers import s3 as s3_servers
from tests.servers import small_list_pages
from tests.servers.s3 import HOST, DroppingProxy, MotoServer, free_port

# The session fixtures, bound here so pytest finds them (a non-root conftest may not use
# pytest_plugins). Bound by assignment, not import, so parameters of the same name are not
# flagged as redefinitions.
moto_server = s3_servers.moto_server
moto_auth_server = s3_servers.moto_auth_server

PREFIX = "repo/root"
SMALL_PARTS = {"part_size": MIN_PART_SIZE, "multipart_threshold": MIN_PART_SIZE}


@pytest.fixture(autouse=True)
def _no_ambient_aws(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    s3_servers.isolate_from_ambient_aws(monkeypatch, str(tmp_path))


@pytest.fixture
def bucket(moto_server: MotoServer) -> str:
    name = f"cas-{uuid.uuid4().hex[:16]}"
    moto_server.client().create_bucket(Bucket=name)
    return name


class _BotoAccess:
    """Reads and writes the bucket with boto3 directly, not through the backend under test."""

    def __init__(self, client: Any, bucket: str, root: str) -> None:
        self.client = client
        self.bucket = bucket
        self.root = root

    def read(self, key: str) -> bytes:
        try:
            resp = self.client.get_object(Bucket=self.bucket, Key=self.root + key)
        except self.client.exceptions.NoSuchKey as exc:
            raise FileNotFoundError(key) from exc
        return bytes(resp["Body"].read())

    def write(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self.root + key, Body=data)


class TestS3Backend(BackendContract, EngineThroughBackend):
    @pytest.fixture
    def backend(self, moto_server: MotoServer, bucket: str) -> Iterator[S3Backend]:
        be = from_url(f"s3://{bucket}/{PREFIX}", **moto_server.backend_options(), **SMALL_PARTS)
        yield be
        be.close()

    @pytest.fixture
    def raw(self, moto_server: MotoServer, bucket: str) -> _BotoAccess:
        return _BotoAccess(moto_server.client(), bucket, PREFIX + "/")

    @pytest.fixture
    def list_page(self, monkeypatch: pytest.MonkeyPatch) -> int:
        return small_list_pages(monkeypatch, backends.s3)


def _backend(server: MotoServer, bucket: str, prefix: str = PREFIX, **options: Any) -> S3Backend:
    opts = {**server.backend_options(), **SMALL_PARTS, **options}
    return from_url(f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}", **opts)


def test_s3_backend_matches_a_dict_model(moto_server: MotoServer, bucket: str) -> None:
    """Each run gets its own prefix in the bucket, so it starts empty."""
    check_against_model(lambda: _backend(moto_server, bucket, prefix=f"model-{uuid.uuid4().hex[:12]}"))


# -- layout, URLs, options ---------------------------------------------------------------------


def test_registry_opens_s3_urls(moto_server: MotoServer, bucket: str) -> None:
    be = open_backend(f"s3://{bucket}/a/b/", **moto_server.backend_options())
    assert isinstance(be, S3Backend)
    be.put("k", b"v")
    assert moto_server.client().get_object(Bucket=bucket, Key="a/b/k")["Body"].read() == b"v"


def test_bucket_root_without_prefix(moto_server: MotoServer, bucket: str) -> None:
    be = _backend(moto_server, bucket, prefix="")
    be.put("top", b"1")
    be.put("dir/x", b"22")
    assert moto_server.client().get_object(Bucket=bucket, Key="top")["Body"].read() == b"1"
    assert sorted((i.key, i.size) for i in be.list()) == [("dir/x", 2), ("top", 1)]


def test_prefix_isolates_repositories(moto_server: MotoServer, bucket: str) -> None:
    a = _backend(moto_server, bucket, prefix="one")
    b = _backend(moto_server, bucket, prefix="one-more")
    a.put("k", b"a")
    b.put("k", b"b")
    assert [i.key for i in a.list()] == ["k"]
    assert a.get("k") == b"a"


def test_describe_is_url_and_endpoint_without_secrets(moto_server: MotoServer, bucket: str) -> None:
    be = _backend(moto_server, bucket, session_token="the-session-token-value")
    text = be.describe()
    assert text == f"s3://{bucket}/{PREFIX} (endpoint {moto_server.endpoint_url})"
    for secret in (moto_server.secret_access_key, "the-session-token-value"):
        assert secret not in text
        assert secret not in repr(be)
        assert secret not in str(vars(be))


@pytest.mark.parametrize(
    ("url", "options"),
    [
        ("s3://", {}),
        ("s3://bucket/p?region=x", {}),
        ("s3://key:secret-in-url@bucket/p", {}),
        ("s3://bucket/p", {"colour": "blue"}),
        ("s3://bucket/p", {"part_size": 1024}),
        ("s3://bucket/p", {"part_size": "lots"}),
        ("s3://bucket/p", {"read_timeout": 0}),
        ("s3://bucket/p", {"addressing_style": "sideways"}),
        ("s3://bucket/p", {"access_key_id": "only-half"}),
    ],
)
def test_bad_urls_and_options_are_configuration_errors(url: str, options: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError) as info:
        from_url(url, **options)
    assert "secret-in-url" not in str(info.value)


def test_numeric_options_may_be_strings(moto_server: MotoServer, bucket: str) -> None:
    be = from_url(
        f"s3://{bucket}/p",
        **moto_server.backend_options(),
        part_size=str(MIN_PART_SIZE),
        multipart_threshold="0",
        connect_timeout="2.5",
    )
    be.put("k", b"abc")
    assert be.get("k") == b"abc"


@pytest.mark.parametrize("variable", ["AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"])
def test_endpoint_from_environment(
    moto_server: MotoServer, bucket: str, monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    monkeypatch.setenv(variable, moto_server.endpoint_url)
    if variable == "AWS_ENDPOINT_URL_S3":  # the S3-specific one wins over the general one
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://{HOST}:{free_port()}")
    options = moto_server.backend_options()
    del options["endpoint_url"]
    be = from_url(f"s3://{bucket}/p", **options)
    assert moto_server.endpoint_url in be.describe()
    be.put("k", b"v")
    assert be.get("k") == b"v"


def test_credentials_from_environment_chain(
    moto_server: MotoServer, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "from-env")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "from-env-secret")
    be = from_url(f"s3://{bucket}/p", endpoint_url=moto_server.endpoint_url, region_name="us-east-1")
    be.put("k", b"v")
    assert be.get("k") == b"v"


def test_missing_credentials_is_one_line_configuration_error(bucket: str, moto_server: MotoServer) -> None:
    be = from_url(f"s3://{bucket}/p", endpoint_url=moto_server.endpoint_url, region_name="us-east-1")
    with pytest.raises(ConfigurationError, match="AWS_ACCESS_KEY_ID"):
        be.get("k")


# -- multipart and conditional writes -----------------------------------------------------------


class _CountingReader(io.RawIOBase):
    """A stream that records the largest single read, to show uploads are read part by part."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)
        self.largest_read = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        chunk = self._data.read(size)
        self.largest_read = max(self.largest_read, len(chunk))
        return chunk


def test_large_stream_goes_up_in_parts(moto_server: MotoServer, bucket: str) -> None:
    be = _backend(moto_server, bucket)
    payload = os.urandom(MULTIPART_SIZE)
    stream = _CountingReader(payload)
    be.put("big", stream)  # type: ignore[arg-type]
    assert stream.largest_read <= MIN_PART_SIZE
    head = moto_server.client().head_object(Bucket=bucket, Key=f"{PREFIX}/big")
    assert head["ETag"].strip('"').endswith("-3")  # three parts: 5 MiB, 5 MiB, the rest
    assert be.get("big") == payload


def test_large_bytes_go_up_in_parts(moto_server: MotoServer, bucket: str) -> None:
    be = _backend(moto_server, bucket)
    payload = os.urandom(2 * MIN_PART_SIZE + 1)
    be.put("big", memoryview(payload))
    head = moto_server.client().head_object(Bucket=bucket, Key=f"{PREFIX}/big")
    assert head["ETag"].strip('"').endswith("-3")
    assert be.get("big", -5) == payload[-5:]


def test_exact_multiple_of_part_size(moto_server: MotoServer, bucket: str) -> None:
    be = _backend(moto_server, bucket, multipart_threshold=0)
    payload = os.urandom(2 * MIN_PART_SIZE)
    be.put("even", io.BytesIO(payload))
    assert be.get("even") == payload
    assert be.stat("even").size == len(payload)


def test_conditional_multipart_is_decided_by_the_server(
    moto_server: MotoServer, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    be = _backend(moto_server, bucket)
    be.put("big", b"original")
    # Skip the early existence check, as if another writer won the race during our upload.
    monkeypatch.setattr(be, "exists", lambda key: False)
    with pytest.raises(AlreadyExists):
        be.put("big", io.BytesIO(os.urandom(MULTIPART_SIZE)), overwrite=False)
    assert be.get("big") == b"original"
    uploads = moto_server.client().list_multipart_uploads(Bucket=bucket)
    assert not uploads.get("Uploads"), "the refused upload must be aborted"


def test_single_put_if_none_match_is_decided_by_the_server(moto_server: MotoServer, bucket: str) -> None:
    be = _backend(moto_server, bucket)
    moto_server.client().put_object(Bucket=bucket, Key=f"{PREFIX}/k", Body=b"theirs")
    with pytest.raises(AlreadyExists) as info:
        be.put("k", b"mine", overwrite=False)
    assert info.value.request_id  # kept from the S3 response
    assert isinstance(info.value.__cause__, Exception)
    assert be.get("k") == b"theirs"


# -- errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "status", "expected"),
    [
        ("SlowDown", 503, Unavailable),
        ("InternalError", 500, Unavailable),
        ("SomethingNew", 502, Unavailable),
        ("TooManyRequests", 429, Unavailable),
        ("ConditionalRequestConflict", 409, AlreadyExists),
        ("PreconditionFailed", 412, AlreadyExists),
        ("AccessDenied", 403, PermissionDenied),
        ("ExpiredToken", 400, PermissionDenied),
        ("InvalidBucketName", 400, ConfigurationError),
        ("NoSuchKey", 404, NotFound),
        ("Teapot", 418, CasError),
    ],
)
def test_translation_table(code: str, status: int, expected: type[CasError]) -> None:
    # Server replies moto cannot be made to send (throttling, 5xx); the table is the unit under test.
    from botocore.exceptions import ClientError  # type: ignore[import-untyped]

    response = {
        "Error": {"Code": code, "Message": "msg with s3cr3t inside"},
        "ResponseMetadata": {"HTTPStatusCode": status, "RequestId": "REQ123"},
    }
    error = _translate(ClientError(response, "GetObject"), "get", "s3://b/k", ("s3cr3t",))
    assert type(error) is expected
    assert error.request_id == "REQ123"
    assert "s3cr3t" not in str(error)
    assert error.temporary == (expected is Unavailable)


def test_missing_bucket_is_configuration_error(moto_server: MotoServer) -> None:
    be = _backend(moto_server, f"absent-{uuid.uuid4().hex[:8]}")
    with pytest.raises(ConfigurationError, match="NoSuchBucket") as info:
        be.get("k")
    assert info.value.request_id
    with pytest.raises(ConfigurationError):
        list(be.list())


def test_invalid_bucket_name_is_configuration_error(moto_server: MotoServer) -> None:
    be = _backend(moto_server, "Not_A/Valid:Bucket"[:9])
    with pytest.raises(ConfigurationError):
        be.put("k", b"v")


def test_wrong_secret_fails_fast_without_leaking_it(
    moto_auth_server: MotoServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "wrong-secret-0123456789abcdefghijklmnopq"
    be = from_url(
        "s3://auth-bucket/p",
        endpoint_url=moto_auth_server.endpoint_url,
        region_name="us-east-1",
        access_key_id=moto_auth_server.access_key_id,
        secret_access_key=wrong,
    )
    start = time.monotonic()
    with pytest.raises(PermissionDenied) as info:
        be.put("k", b"v")
    assert time.monotonic() - start < 5
    assert "SignatureDoesNotMatch" in str(info.value)
    assert not info.value.temporary
    for text in (str(info.value), str(info.value.__cause__), be.describe(), caplog.text):
        assert wrong not in text


def test_backends_of_one_process_each_sign_with_their_own_credentials(
    moto_auth_server: MotoServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The backends of a process share the SDK's parsed service descriptions, never credentials:
    built one after another, a right key, a wrong one and a named profile each sign as given."""
    (tmp_path / "credentials").write_text(
        f"[right]\naws_access_key_id = {moto_auth_server.access_key_id}\n"
        f"aws_secret_access_key = {moto_auth_server.secret_access_key}\n"
        "[wrong]\naws_access_key_id = AKIAUNKNOWNUNKNOWN00\naws_secret_access_key = unknown-secret-value\n"
    )
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    where = {"endpoint_url": moto_auth_server.endpoint_url, "region_name": "us-east-1"}
    right = {"access_key_id": moto_auth_server.access_key_id, "secret_access_key": moto_auth_server.secret_access_key}
    wrong = {"access_key_id": right["access_key_id"], "secret_access_key": "wrong-secret-0123456789abcdefghijkl"}
    built = [
        ("right", from_url("s3://auth-bucket/own", **where, **right)),
        ("wrong", from_url("s3://auth-bucket/own", **where, **wrong)),
        ("right", from_url("s3://auth-bucket/own", **where, profile_name="right")),
        ("wrong", from_url("s3://auth-bucket/own", **where, profile_name="wrong")),
        ("right", from_url("s3://auth-bucket/own", **where, **right)),
    ]
    for n, (expected, be) in enumerate(built):
        if expected == "right":
            be.put(f"k{n}", b"v", overwrite=True)
            assert be.get(f"k{n}") == b"v"
        else:
            with pytest.raises(PermissionDenied):
                be.put(f"k{n}", b"v", overwrite=True)
        be.close()


def test_unknown_access_key_is_permission_denied(moto_auth_server: MotoServer) -> None:
    be = from_url(
        "s3://auth-bucket/p",
        endpoint_url=moto_auth_server.endpoint_url,
        region_name="us-east-1",
        access_key_id="AKIAUNKNOWNUNKNOWN00",
        secret_access_key="unknown-secret-value",
    )
    with pytest.raises(PermissionDenied, match="InvalidAccessKeyId") as info:
        be.get("k")
    assert "unknown-secret-value" not in str(info.value)


def test_right_credentials_work_on_the_authenticating_server(moto_auth_server: MotoServer) -> None:
    be = from_url("s3://auth-bucket/ok", **moto_auth_server.backend_options())
    be.put("k", b"signed")
    assert be.get("k") == b"signed"
    be.delete("k")


def test_unreachable_endpoint_is_unavailable_quickly() -> None:
    port = free_port()  # nothing listens there: connections are refused at once
    be = from_url(
        "s3://bucket-name/p",
        endpoint_url=f"http://{HOST}:{port}",
        region_name="us-east-1",
        access_key_id="id",
        secret_access_key="unreachable-secret",
    )
    start = time.monotonic()
    with pytest.raises(Unavailable) as info:
        be.get("k")
    assert time.monotonic() - start < 5
    assert info.value.temporary
    assert "unreachable-secret" not in str(info.value)


def test_silent_server_times_out_as_unavailable() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind((HOST, 0))
        listener.listen(4)  # accepts connections (in the backlog) but never answers
        be = from_url(
            "s3://bucket-name/p",
            endpoint_url=f"http://{HOST}:{listener.getsockname()[1]}",
            region_name="us-east-1",
            access_key_id="id",
            secret_access_key="secret",
            connect_timeout=1,
            read_timeout=0.5,
        )
        start = time.monotonic()
        with pytest.raises(Unavailable):
            be.stat("k")
        assert time.monotonic() - start < 5


# -- connections cut mid-transfer -----------------------------------------------------------------


def test_download_cut_midway_is_unavailable_then_retry_recovers(moto_server: MotoServer, bucket: str) -> None:
    payload = os.urandom(1 << 20)
    _backend(moto_server, bucket).put("k", payload)
    with DroppingProxy(moto_server.port, drop_connections=1, cut_after=64 * 1024) as proxy:
        be = _backend(moto_server, bucket, endpoint_url=proxy.endpoint_url)
        with pytest.raises(Unavailable):
            be.get("k")
        assert proxy.dropped == 1
        assert be.get("k") == payload  # the next connection is not cut

    with DroppingProxy(moto_server.port, drop_connections=2, cut_after=64 * 1024) as proxy:
        be = _backend(moto_server, bucket, endpoint_url=proxy.endpoint_url)
        retrying = RetryingBackend(be, sleep=lambda _: None)
        assert retrying.get("k") == payload
        assert proxy.dropped == 2


def test_upload_cut_midway_leaves_nothing_behind(moto_server: MotoServer, bucket: str) -> None:
    with DroppingProxy(moto_server.port, drop_connections=1, cut_request_after=256 * 1024) as proxy:
        be = _backend(moto_server, bucket, endpoint_url=proxy.endpoint_url)
        with pytest.raises(Unavailable):
            be.put("small", os.urandom(1 << 20))
    with pytest.raises(NotFound):
        _backend(moto_server, bucket).stat("small")


def test_multipart_upload_cut_midway_is_aborted(moto_server: MotoServer, bucket: str) -> None:
    with DroppingProxy(moto_server.port, drop_connections=1, cut_request_after=MIN_PART_SIZE // 2) as proxy:
        be = _backend(moto_server, bucket, endpoint_url=proxy.endpoint_url)
        with pytest.raises(Unavailable):
            be.put("big", io.BytesIO(os.urandom(MULTIPART_SIZE)))
        assert proxy.dropped == 1
    direct = _backend(moto_server, bucket)
    assert not direct.exists("big")
    uploads = moto_server.client().list_multipart_uploads(Bucket=bucket)
    assert not uploads.get("Uploads"), "the broken upload must be aborted"


def test_every_error_is_a_cas_error_with_its_cause(moto_server: MotoServer, bucket: str) -> None:
    be = _backend(moto_server, bucket)
    with pytest.raises(CasError) as info:
        be.get("absent")
    assert isinstance(info.value, FileNotFoundError)
    assert type(info.value.__cause__).__module__.startswith("botocore")
