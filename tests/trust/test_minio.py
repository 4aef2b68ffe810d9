"""The S3 backend against MinIO, a second, real S3 implementation beside moto.

The backend contract and the engine's snapshot and restore run against it plainly, with SSE-KMS
(MinIO's static KMS key) and with SSE-C (over TLS, as MinIO and S3 require); MinIO itself refuses
SSE-C reads without the key and answers ``If-None-Match: *``, so here no gate stands in for S3.
Skipped when no MinIO binary is found (see :mod:`tests.servers.minio`).
"""

from __future__ import annotations

import base64
import os
import secrets
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

import backends.s3
from backends.errors import CasError, PermissionDenied
from backends.s3 import MIN_PART_SIZE, S3Backend, from_url
from backends.testing import BackendContract
from tests.backends.test_engine import EngineThroughBackend
from tests.servers import minio as minio_servers
from tests.servers import s3 as s3_servers
from tests.servers import small_list_pages
from tests.servers.minio import KMS_KEY, MinioServer

minio_server = minio_servers.minio_server

PREFIX = "repo"
SMALL_PARTS = {"part_size": MIN_PART_SIZE, "multipart_threshold": MIN_PART_SIZE}
CUSTOMER_KEY = base64.b64encode(secrets.token_bytes(32)).decode()


@pytest.fixture(autouse=True)
def _trust_minio(monkeypatch: pytest.MonkeyPatch, tmp_path: Any, minio_server: MinioServer) -> None:
    s3_servers.isolate_from_ambient_aws(monkeypatch, str(tmp_path))
    monkeypatch.setenv("AWS_CA_BUNDLE", minio_server.ca_bundle)


@pytest.fixture
def bucket(minio_server: MinioServer) -> str:
    name = f"cas-{uuid.uuid4().hex[:16]}"
    minio_server.client().create_bucket(Bucket=name)
    return name


class _Raw:
    def __init__(self, client: Any, bucket: str, args: dict[str, Any]) -> None:
        self.client, self.bucket, self.args = client, bucket, args

    def read(self, key: str) -> bytes:
        try:
            resp = self.client.get_object(Bucket=self.bucket, Key=f"{PREFIX}/{key}", **self.args)
        except self.client.exceptions.NoSuchKey as exc:
            raise FileNotFoundError(key) from exc
        return bytes(resp["Body"].read())

    def write(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=f"{PREFIX}/{key}", Body=data, **self.args)


def _backend(server: MinioServer, bucket: str, **options: Any) -> S3Backend:
    return from_url(f"s3://{bucket}/{PREFIX}", **server.backend_options(), **SMALL_PARTS, **options)


class TestMinio(BackendContract, EngineThroughBackend):
    @pytest.fixture
    def backend(self, minio_server: MinioServer, bucket: str) -> Iterator[S3Backend]:
        be = _backend(minio_server, bucket)
        yield be
        be.close()

    @pytest.fixture
    def raw(self, minio_server: MinioServer, bucket: str) -> _Raw:
        return _Raw(minio_server.client(), bucket, {})

    @pytest.fixture
    def list_page(self, monkeypatch: pytest.MonkeyPatch) -> int:
        return small_list_pages(monkeypatch, backends.s3)


class TestMinioSseKms(TestMinio):
    # Listing sends no encryption headers: the many-key listing runs once, in TestMinio.
    test_list_many_keys_paginates = None  # type: ignore[assignment]

    @pytest.fixture
    def backend(self, minio_server: MinioServer, bucket: str) -> Iterator[S3Backend]:
        be = _backend(minio_server, bucket, sse_kms_key_id=KMS_KEY)
        yield be
        be.close()


class TestMinioSseC(TestMinio):
    test_list_many_keys_paginates = None  # type: ignore[assignment]  # as in TestMinioSseKms

    @pytest.fixture
    def backend(self, minio_server: MinioServer, bucket: str) -> Iterator[S3Backend]:
        be = _backend(minio_server, bucket, sse_customer_key=CUSTOMER_KEY)
        yield be
        be.close()

    @pytest.fixture
    def raw(self, minio_server: MinioServer, bucket: str) -> _Raw:
        key = {"SSECustomerAlgorithm": "AES256", "SSECustomerKey": base64.b64decode(CUSTOMER_KEY)}
        return _Raw(minio_server.client(), bucket, key)


@pytest.mark.parametrize(("options", "expected"), [
    ({"server_side_encryption": "AES256"}, "AES256"),
    ({"sse_kms_key_id": KMS_KEY}, "aws:kms"),
])
def test_minio_stores_what_the_backend_asked(minio_server: MinioServer, bucket: str, options: dict[str, str],
                                             expected: str) -> None:
    be = _backend(minio_server, bucket, **options)
    be.put("small", b"x" * 100)
    be.put("large", os.urandom(2 * MIN_PART_SIZE + 1))
    assert be.get("large", 5, 10) == be.get("large")[5:15]
    be.close()
    for key in ("small", "large"):
        head = minio_server.client().head_object(Bucket=bucket, Key=f"{PREFIX}/{key}")
        assert head["ServerSideEncryption"] == expected
        if expected == "aws:kms":
            assert KMS_KEY in head["SSEKMSKeyId"]


def test_minio_refuses_sse_c_reads_without_the_key(minio_server: MinioServer, bucket: str) -> None:
    be = _backend(minio_server, bucket, sse_customer_key=CUSTOMER_KEY)
    be.put("secret", os.urandom(2 * MIN_PART_SIZE + 1))  # multipart: every part and the completion carry it
    be.put("small", b"weights")
    assert be.get("small") == b"weights"
    be.close()
    plain = _backend(minio_server, bucket)
    for call in (lambda: plain.get("small"), lambda: plain.stat("small"), lambda: plain.get("secret", 0, 10)):
        with pytest.raises(CasError) as info:
            call()
        assert "\n" not in str(info.value)
    plain.close()
    wrong = _backend(minio_server, bucket, sse_customer_key=base64.b64encode(secrets.token_bytes(32)).decode())
    with pytest.raises((PermissionDenied, CasError)):
        wrong.get("small")
    wrong.close()
