"""Server-side encryption on S3: SSE-KMS, SSE-S3 and SSE-C against a bucket that refuses the rest.

moto stores the encryption headers but evaluates no bucket-policy condition and ignores SSE-C, so
the server here is moto behind :class:`tests.servers.s3_gate.S3Gate`, which applies the bucket
policies of docs/backends-s3.md to the headers and refuses SSE-C reads without the key, as S3 does.
Through it go every kind of request the backend makes (:class:`GatedRequests`) and the engine's
snapshot and restore, with each kind of encryption; what reaches moto is then checked with boto3
directly. The whole backend contract runs with SSE-KMS and SSE-C against MinIO
(tests/trust/test_minio.py), a real server that encrypts; the gate is here for what MinIO does not
check: that the bucket policy refuses a put without the headers, so none of the backend's write
paths may leave them out, and that every request on an SSE-C object carries the key.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import re
import secrets
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from backends.errors import AlreadyExists, CasError, ConfigurationError, NotFound, PermissionDenied
from backends.s3 import MIN_PART_SIZE, S3Backend, from_url
from tests.backends.test_engine import EngineThroughBackend
from tests.servers import s3 as s3_servers
from tests.servers.s3 import MotoServer
from tests.servers.s3_gate import S3Gate

moto_server = s3_servers.moto_server

DOC = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "docs", "backends-s3.md")
PREFIX = "enc"
KMS_KEY = "cas-key"  # the key id the documented policy names
SMALL_PARTS = {"part_size": MIN_PART_SIZE, "multipart_threshold": MIN_PART_SIZE}
CUSTOMER_KEY = base64.b64encode(secrets.token_bytes(32)).decode()


def bucket_policy(name: str, bucket: str) -> dict[str, Any]:
    """The bucket policy marked ``<!-- s3-bucket-policy: NAME -->`` in docs/backends-s3.md."""
    with open(DOC, encoding="utf-8") as f:
        text = f.read()
    found = re.search(rf"<!-- s3-bucket-policy: {name} -->\n```json\n(.*?)```", text, re.DOTALL)
    assert found, f"docs/backends-s3.md has no policy {name}"
    return json.loads(found.group(1).replace("my-bucket", bucket))


@pytest.fixture(autouse=True)
def _no_ambient_aws(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    s3_servers.isolate_from_ambient_aws(monkeypatch, str(tmp_path))


@pytest.fixture
def bucket(moto_server: MotoServer) -> str:
    name = f"sse-{uuid.uuid4().hex[:16]}"
    moto_server.client().create_bucket(Bucket=name)
    return name


def _options(server: MotoServer, gate: S3Gate, **extra: Any) -> dict[str, Any]:
    return {**server.backend_options(), "endpoint_url": gate.endpoint_url, **SMALL_PARTS, **extra}


def _client(endpoint_url: str, server: MotoServer) -> Any:
    import boto3  # type: ignore[import-untyped]
    from botocore.config import Config  # type: ignore[import-untyped]

    return boto3.client("s3", endpoint_url=endpoint_url, region_name="us-east-1",
                        aws_access_key_id=server.access_key_id, aws_secret_access_key=server.secret_access_key,
                        config=Config(s3={"addressing_style": "path"}, retries={"total_max_attempts": 1}))


def _head(server: MotoServer, bucket: str, key: str, **args: Any) -> dict[str, Any]:
    return dict(_client(server.endpoint_url, server).head_object(Bucket=bucket, Key=f"{PREFIX}/{key}", **args))


# -- SSE-KMS: the contract and the engine through a bucket that refuses anything else ------------


class GatedRequests:
    """Each kind of request the backend makes, through the gate; needs ``backend`` and ``raw_read``
    fixtures. The contract's own checks of these calls run on moto (tests/backends/test_s3.py) and,
    with SSE-KMS and SSE-C, on MinIO; here what matters is that the gate lets every one through."""

    def test_every_kind_of_request_passes_the_gate(self, backend: S3Backend, raw_read: Any) -> None:
        large = os.urandom(2 * MIN_PART_SIZE + 7)
        backend.put("one/bytes", b"x" * 100)
        backend.put("one/bytes", b"overwritten")
        backend.put("one/view", memoryview(b"a view"))
        backend.put("one/stream", io.BytesIO(b"a stream"))
        backend.put("one/empty", b"")
        backend.put("one/large", io.BytesIO(large))  # a multipart upload: initiation, parts, completion
        backend.put("one/absent", b"first", overwrite=False)
        with pytest.raises(AlreadyExists):
            backend.put("one/absent", b"second", overwrite=False)
        backend.put("one/large-absent", large, overwrite=False)  # multipart, completed if absent
        assert raw_read("one/large") == large and raw_read("one/bytes") == b"overwritten"
        assert backend.get("one/bytes") == b"overwritten"
        assert backend.get("one/view") == b"a view" and backend.get("one/stream") == b"a stream"
        assert backend.get("one/empty") == b"" and backend.get("one/absent") == b"first"
        assert backend.get("one/large", MIN_PART_SIZE - 3, 10) == large[MIN_PART_SIZE - 3 : MIN_PART_SIZE + 7]
        assert backend.get("one/large-absent", -12) == large[-12:]
        assert backend.stat("one/large").size == len(large) and backend.exists("one/empty")
        assert sorted(i.key for i in backend.list("one/")) == [
            "one/absent", "one/bytes", "one/empty", "one/large", "one/large-absent", "one/stream", "one/view"]
        backend.delete("one/bytes")
        with pytest.raises(NotFound):
            backend.get("one/bytes")
        with pytest.raises(NotFound):
            backend.stat("one/bytes")


class TestSseKms(GatedRequests, EngineThroughBackend):
    @pytest.fixture
    def gate(self, moto_server: MotoServer, bucket: str) -> Iterator[S3Gate]:
        with S3Gate(moto_server.port, bucket_policy("require-kms", bucket)) as gate:
            yield gate

    @pytest.fixture
    def backend(self, moto_server: MotoServer, bucket: str, gate: S3Gate) -> Iterator[S3Backend]:
        be = from_url(f"s3://{bucket}/{PREFIX}", **_options(moto_server, gate, sse_kms_key_id=KMS_KEY))
        yield be
        be.close()
        # Every put reached moto: the gate refused none (a refusal fails the test above anyway).
        puts = [r for r in gate.requests if r.method in ("PUT", "POST") and "uploadId" not in r.query]
        assert puts and all(r.headers.get("x-amz-server-side-encryption") == "aws:kms" for r in puts), puts

    @pytest.fixture
    def raw_read(self, moto_server: MotoServer, bucket: str) -> Any:
        client = _client(moto_server.endpoint_url, moto_server)
        return lambda key: bytes(client.get_object(Bucket=bucket, Key=f"{PREFIX}/{key}")["Body"].read())


def test_kms_uploads_carry_the_key_and_moto_stores_it(moto_server: MotoServer, bucket: str) -> None:
    with S3Gate(moto_server.port, bucket_policy("require-kms", bucket)) as gate:
        be = from_url(f"s3://{bucket}/{PREFIX}", **_options(moto_server, gate, sse_kms_key_id=KMS_KEY))
        be.put("small", b"x" * 100)
        be.put("large", os.urandom(2 * MIN_PART_SIZE + 7))  # a multipart upload
        be.close()
    for key in ("small", "large"):
        head = _head(moto_server, bucket, key)
        assert head["ServerSideEncryption"] == "aws:kms"
        assert KMS_KEY in head["SSEKMSKeyId"]


@pytest.mark.parametrize("options", [{}, {"server_side_encryption": "AES256"}, {"sse_kms_key_id": "another-key"}],
                         ids=["none", "sse-s3", "other-kms-key"])
def test_bucket_refuses_other_encryption_and_nothing_is_stored(
    moto_server: MotoServer, bucket: str, options: dict[str, str]
) -> None:
    with S3Gate(moto_server.port, bucket_policy("require-kms", bucket)) as gate:
        be = from_url(f"s3://{bucket}/{PREFIX}", **_options(moto_server, gate, **options))
        for payload in (b"x" * 100, os.urandom(2 * MIN_PART_SIZE)):
            with pytest.raises(PermissionDenied, match="server_side_encryption") as info:
                be.put("refused", payload)
            assert "\n" not in str(info.value)
        be.close()
    listing = _client(moto_server.endpoint_url, moto_server).list_objects_v2(Bucket=bucket)
    assert listing.get("KeyCount", 0) == 0


# -- SSE-C: the key goes with every request --------------------------------------------------------


class TestSseC(GatedRequests, EngineThroughBackend):
    @pytest.fixture
    def gate(self, moto_server: MotoServer, bucket: str) -> Iterator[S3Gate]:
        with S3Gate(moto_server.port, bucket_policy("require-sse-c", bucket)) as gate:
            yield gate

    @pytest.fixture
    def backend(self, moto_server: MotoServer, bucket: str, gate: S3Gate) -> Iterator[S3Backend]:
        be = from_url(f"s3://{bucket}/{PREFIX}", **_options(moto_server, gate, sse_customer_key=CUSTOMER_KEY))
        yield be
        be.close()
        # Every request that reached an object carried the key (the gate refuses the rest anyway).
        on_objects = [r for r in gate.requests if r.path.count("/") >= 2 and r.method != "DELETE"]
        assert {r.method for r in on_objects} >= {"GET", "PUT"}, on_objects
        for seen in on_objects:  # GET, HEAD, PUT, a part, an initiation or a completion
            assert seen.headers.get("x-amz-server-side-encryption-customer-algorithm") == "AES256", seen

    @pytest.fixture
    def raw_read(self, moto_server: MotoServer, bucket: str, gate: S3Gate) -> Any:
        client = _client(gate.endpoint_url, moto_server)
        key = {"SSECustomerAlgorithm": "AES256", "SSECustomerKey": base64.b64decode(CUSTOMER_KEY)}
        return lambda name: bytes(client.get_object(Bucket=bucket, Key=f"{PREFIX}/{name}", **key)["Body"].read())


def test_sse_c_objects_are_refused_without_their_key(moto_server: MotoServer, bucket: str) -> None:
    """The gate refuses as S3 does, so a request the backend sent without the key would fail."""
    with S3Gate(moto_server.port) as gate:
        be = from_url(f"s3://{bucket}/{PREFIX}", **_options(moto_server, gate, sse_customer_key=CUSTOMER_KEY))
        be.put("secret", b"model weights")
        assert be.get("secret") == b"model weights"
        be.close()
        plain = from_url(f"s3://{bucket}/{PREFIX}", **_options(moto_server, gate))
        with pytest.raises(ConfigurationError, match="sse_customer_key"):
            plain.get("secret")
        with pytest.raises(CasError, match="sse_customer_key"):
            plain.stat("secret")
        other = base64.b64encode(secrets.token_bytes(32)).decode()
        wrong = from_url(f"s3://{bucket}/{PREFIX}", **_options(moto_server, gate, sse_customer_key=other))
        with pytest.raises(PermissionDenied) as info:
            wrong.get("secret")
        for be in (plain, wrong):
            be.close()
    assert CUSTOMER_KEY not in str(info.value) and other not in str(info.value)


def test_customer_key_is_never_shown(moto_server: MotoServer, bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from backends.s3_config import parse

    config = parse(f"s3://{bucket}/{PREFIX}", {"sse_customer_key": CUSTOMER_KEY})
    raw_key = base64.b64decode(CUSTOMER_KEY)
    assert CUSTOMER_KEY not in repr(config) and repr(raw_key) not in repr(config)
    be = S3Backend(config)
    assert CUSTOMER_KEY not in be.describe() and CUSTOMER_KEY not in repr(vars(be)).replace(repr(raw_key), "")
    be.close()
    with pytest.raises(ConfigurationError) as info:
        parse(f"s3://{bucket}/{PREFIX}?sse_customer_key={CUSTOMER_KEY}", {})
    assert CUSTOMER_KEY not in str(info.value)
    with pytest.raises(ConfigurationError, match="base64 of 32") as info:
        parse(f"s3://{bucket}/{PREFIX}", {"sse_customer_key": "c2hvcnQ="})
    assert "c2hvcnQ=" not in str(info.value)
    monkeypatch.setenv("CAS_S3_SSE_CUSTOMER_KEY", CUSTOMER_KEY)
    assert parse(f"s3://{bucket}/{PREFIX}", {}).sse_customer_key == raw_key


@pytest.mark.parametrize("options", [
    {"server_side_encryption": "AES257"},
    {"server_side_encryption": "AES256", "sse_kms_key_id": "k"},
    {"server_side_encryption": "aws:kms", "sse_customer_key": CUSTOMER_KEY},
])
def test_encryption_options_are_checked(options: dict[str, str]) -> None:
    from backends.s3_config import parse

    with pytest.raises(ConfigurationError) as info:
        parse("s3://bucket/p", options)
    assert CUSTOMER_KEY not in str(info.value)


# -- the command line: URL options and the environment ----------------------------------------------


def _cas(argv: list[str], env: dict[str, str], home: str) -> tuple[int, str]:
    from cas.cli import main

    saved = dict(os.environ)
    os.environ.update(env)
    os.environ["CAS_HOME"] = home
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            status = main(argv)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return status, err.getvalue()


@pytest.mark.parametrize("mode", ["sse-s3", "sse-kms", "sse-c"])
def test_cli_snapshots_and_restores_into_a_bucket_that_requires_encryption(
    moto_server: MotoServer, bucket: str, tmp_path: Any, mode: str
) -> None:
    policy = {
        "sse-s3": {"Version": "2012-10-17", "Statement": [{
            "Effect": "Deny", "Principal": "*", "Action": "s3:PutObject", "Resource": f"arn:aws:s3:::{bucket}/*",
            "Condition": {"StringNotEquals": {"s3:x-amz-server-side-encryption": "AES256"}}}]},
        "sse-kms": bucket_policy("require-kms", bucket),
        "sse-c": bucket_policy("require-sse-c", bucket),
    }[mode]
    query = {"sse-s3": "?server_side_encryption=AES256", "sse-kms": f"?sse_kms_key_id={KMS_KEY}", "sse-c": ""}[mode]
    source = tmp_path / "src"
    source.mkdir()
    (source / "model.bin").write_bytes(os.urandom(100_000))
    with S3Gate(moto_server.port, policy) as gate:
        env = {"AWS_ACCESS_KEY_ID": moto_server.access_key_id, "AWS_SECRET_ACCESS_KEY": moto_server.secret_access_key,
               "AWS_ENDPOINT_URL": gate.endpoint_url, "AWS_DEFAULT_REGION": "us-east-1"}
        index = ["--index", f"sqlite:///{tmp_path}/index.sqlite"]
        status, err = _cas(["--repo", f"s3://{bucket}/{PREFIX}", *index, "snapshot", str(source), "-e", "run-1"],
                           env, str(tmp_path / "home"))
        assert status == 1 and len(err.strip().splitlines()) == 1 and "server_side_encryption" in err, err
        if mode == "sse-c":
            env["CAS_S3_SSE_CUSTOMER_KEY"] = CUSTOMER_KEY
        repo = ["--repo", f"s3://{bucket}/{PREFIX}{query}", *index]
        status, err = _cas([*repo, "snapshot", str(source), "-e", "run-1"], env, str(tmp_path / "home"))
        assert status == 0, err
        status, err = _cas([*repo, "restore", "run-1", str(tmp_path / "out")], env, str(tmp_path / "home2"))
        assert status == 0, err
        assert (tmp_path / "out" / "model.bin").read_bytes() == (source / "model.bin").read_bytes()
        assert CUSTOMER_KEY not in err
