"""Server-side encryption on OSS, against the OSS protocol server configured, as a bucket policy
would make OSS, to refuse uploads without the required encryption.

The server checks the ``x-oss-server-side-encryption`` headers as OSS does and keeps them with
each object, so the tests read what was stored without going through the backend.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Iterator
from typing import Any

import pytest

from backends.errors import ConfigurationError, PermissionDenied
from backends.oss import OssBackend, from_url
from backends.testing import BackendContract
from tests.backends.test_engine import EngineThroughBackend
from tests.oss_server import OssProtocolServer
from tests.servers.oss import ACCESS_KEY_ID, ACCESS_KEY_SECRET, new_bucket

PREFIX = "enc"
KMS_KEY = "key-0123456789"
SMALL_PARTS = {"part_size": 1 << 20, "multipart_threshold": 3 << 20}


@pytest.fixture(scope="module")
def kms_server() -> Iterator[OssProtocolServer]:
    """A server whose bucket policy requires KMS encryption with :data:`KMS_KEY`."""
    with OssProtocolServer({ACCESS_KEY_ID: ACCESS_KEY_SECRET}) as server:
        server.required_encryption = ("KMS", KMS_KEY)
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


class TestOssKms(BackendContract, EngineThroughBackend):
    @pytest.fixture
    def backend(self, kms_server: OssProtocolServer) -> Iterator[OssBackend]:
        bucket = new_bucket(kms_server)
        be = from_url(f"oss://{bucket}/{PREFIX}", **_options(kms_server, sse_kms_key_id=KMS_KEY))
        be._test_bucket = bucket  # type: ignore[attr-defined]
        yield be
        be.close()

    @pytest.fixture
    def raw(self, kms_server: OssProtocolServer, backend: OssBackend) -> _Storage:
        return _Storage(kms_server, backend._test_bucket)  # type: ignore[attr-defined]


def test_uploads_are_stored_encrypted(kms_server: OssProtocolServer) -> None:
    bucket = new_bucket(kms_server)
    be = from_url(f"oss://{bucket}/{PREFIX}", **_options(kms_server, sse_kms_key_id=KMS_KEY))
    be.put("small", b"x" * 100)
    be.put("large", os.urandom(4 << 20))  # multipart
    be.close()
    for key in ("small", "large"):
        assert kms_server.lookup(bucket, f"{PREFIX}/{key}").encryption == ("KMS", KMS_KEY)


@pytest.mark.parametrize("options", [{}, {"server_side_encryption": "AES256"}, {"sse_kms_key_id": "other"}],
                         ids=["none", "aes256", "other-key"])
def test_uploads_without_the_required_encryption_are_refused(
    kms_server: OssProtocolServer, options: dict[str, str]
) -> None:
    bucket = new_bucket(kms_server)
    be = from_url(f"oss://{bucket}/{PREFIX}", **_options(kms_server, **options))
    for payload in (b"x" * 100, os.urandom(4 << 20)):
        with pytest.raises(PermissionDenied, match="server_side_encryption") as info:
            be.put("refused", payload)
        assert "\n" not in str(info.value)
    be.close()
    assert kms_server.keys(bucket) == []


@pytest.mark.parametrize("options", [{"server_side_encryption": "AES128"},
                                     {"server_side_encryption": "AES256", "sse_kms_key_id": "k"}])
def test_encryption_options_are_checked(options: dict[str, str]) -> None:
    from backends.oss_config import parse

    with pytest.raises(ConfigurationError):
        parse("oss://bucket/p", {"endpoint": "e", "access_key_id": "i", "access_key_secret": "s", **options})


def test_url_sets_encryption_but_no_credentials() -> None:
    from backends.oss_config import parse

    creds = {"endpoint": "oss.example", "access_key_id": "i", "access_key_secret": "s"}
    config = parse("oss://bucket/p?server_side_encryption=KMS&sse_kms_key_id=abc", creds)
    assert (config.server_side_encryption, config.sse_kms_key_id) == ("KMS", "abc")
    with pytest.raises(ConfigurationError, match="cannot be given in an oss:// URL") as info:
        parse("oss://bucket/p?access_key_secret=hunter2", creds)
    assert "hunter2" not in str(info.value)
    with pytest.raises(ConfigurationError, match="disagrees"):
        parse("oss://bucket/p?server_side_encryption=KMS", {**creds, "server_side_encryption": "AES256"})


def test_cli_snapshots_into_a_bucket_that_requires_encryption(kms_server: OssProtocolServer, tmp_path: Any) -> None:
    from cas.cli import main

    bucket = new_bucket(kms_server)
    source = tmp_path / "src"
    source.mkdir()
    (source / "model.bin").write_bytes(os.urandom(50_000))
    env = {"OSS_ACCESS_KEY_ID": ACCESS_KEY_ID, "OSS_ACCESS_KEY_SECRET": ACCESS_KEY_SECRET,
           "OSS_ENDPOINT": kms_server.endpoint, "CAS_HOME": str(tmp_path / "home")}
    index = ["--index", f"sqlite:///{tmp_path}/index.sqlite"]

    def cas(*argv: str) -> tuple[int, str]:
        saved = dict(os.environ)
        os.environ.update(env)
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                return main(list(argv)), err.getvalue()
        finally:
            os.environ.clear()
            os.environ.update(saved)

    status, err = cas("--repo", f"oss://{bucket}/{PREFIX}", *index, "snapshot", str(source), "-e", "run-1")
    assert status == 1 and len(err.strip().splitlines()) == 1 and "server_side_encryption" in err, err
    repo = f"oss://{bucket}/{PREFIX}?sse_kms_key_id={KMS_KEY}"
    status, err = cas("--repo", repo, *index, "snapshot", str(source), "-e", "run-1")
    assert status == 0, err
    status, err = cas("--repo", repo, *index, "restore", "run-1", str(tmp_path / "out"))
    assert status == 0, err
    assert (tmp_path / "out" / "model.bin").read_bytes() == (source / "model.bin").read_bytes()
