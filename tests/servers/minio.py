"""MinIO for tests: a second, real S3 implementation, on a free 127.0.0.1 port over TLS.

The binary is ``$CAS_TEST_MINIO``, ``tests/.cache/bin/minio`` (where ``tests/servers/build_minio.sh``
builds it, started in the background by ``make test``: a build under way is waited for) or ``minio``
on PATH. Without one the tests that
need it are skipped, unless ``CAS_TEST_MINIO`` names a binary, in which case a missing one fails.

The server gets a self-signed certificate for 127.0.0.1 (MinIO serves SSE-C over TLS only, as S3
does), which clients trust through ``AWS_CA_BUNDLE`` (:attr:`MinioServer.ca_bundle`), and a static
KMS key (``MINIO_KMS_SECRET_KEY``) named :data:`KMS_KEY`, so it serves SSE-S3 and SSE-KMS.
"""

from __future__ import annotations

import base64
import datetime as dt
import fcntl
import ipaddress
import os
import secrets
import shutil
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.servers.s3 import HOST, free_port

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KMS_KEY = "cas-test-key"
ACCESS_KEY_ID = "cas-minio-root"
SECRET_ACCESS_KEY = "cas-minio-root-secret-" + secrets.token_hex(8)


def minio_binary() -> str | None:
    """Where the MinIO binary is, or None."""
    named = os.environ.get("CAS_TEST_MINIO")
    if named:
        return named
    cached = os.path.join(ROOT, "tests", ".cache", "bin", "minio")
    lock = os.path.join(ROOT, "tests", ".cache", "minio-build.lock")
    if not os.access(cached, os.X_OK) and os.path.exists(lock):
        with open(lock, "rb") as held:  # a build under way holds it: wait for its end
            fcntl.flock(held, fcntl.LOCK_SH)
    if os.access(cached, os.X_OK):
        return cached
    return shutil.which("minio")


@dataclass
class MinioServer:
    endpoint_url: str
    ca_bundle: str
    process: subprocess.Popen[bytes]
    workdir: str
    access_key_id: str = ACCESS_KEY_ID
    secret_access_key: str = SECRET_ACCESS_KEY

    def backend_options(self) -> dict[str, Any]:
        return {"endpoint_url": self.endpoint_url, "region_name": "us-east-1",
                "access_key_id": self.access_key_id, "secret_access_key": self.secret_access_key}

    def client(self) -> Any:
        """A boto3 client for this server, bypassing cas."""
        import boto3  # type: ignore[import-untyped]
        from botocore.config import Config  # type: ignore[import-untyped]

        return boto3.client("s3", endpoint_url=self.endpoint_url, region_name="us-east-1",
                            aws_access_key_id=self.access_key_id, aws_secret_access_key=self.secret_access_key,
                            verify=self.ca_bundle,
                            config=Config(s3={"addressing_style": "path"}, retries={"total_max_attempts": 1}))


def _self_signed(directory: str) -> str:
    """``public.crt`` and ``private.key`` for 127.0.0.1 in ``directory``; returns the cert's path."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, HOST)])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(HOST))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path = os.path.join(directory, "public.crt")
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(os.path.join(directory, "private.key"), "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    return cert_path


def start_minio(binary: str, timeout: float = 60.0) -> MinioServer:
    workdir = tempfile.mkdtemp(prefix="cas-minio-")
    certs = os.path.join(workdir, "certs")
    os.makedirs(certs)
    ca_bundle = _self_signed(certs)
    port, console = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MINIO_"))}
    env.update({
        "MINIO_ROOT_USER": ACCESS_KEY_ID,
        "MINIO_ROOT_PASSWORD": SECRET_ACCESS_KEY,
        "MINIO_KMS_SECRET_KEY": f"{KMS_KEY}:{base64.b64encode(secrets.token_bytes(32)).decode()}",
        "MINIO_BROWSER": "off",
        "MINIO_UPDATE": "off",
    })
    log = open(os.path.join(workdir, "minio.log"), "wb")  # noqa: SIM115 - the child writes to it
    process = subprocess.Popen(
        [binary, "server", os.path.join(workdir, "data"), "--address", f"{HOST}:{port}",
         "--console-address", f"{HOST}:{console}", "--certs-dir", certs, "--quiet"],
        stdout=log, stderr=subprocess.STDOUT, env=env,
    )
    log.close()
    server = MinioServer(f"https://{HOST}:{port}", ca_bundle, process, workdir)
    context = ssl.create_default_context(cafile=ca_bundle)
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            with open(os.path.join(workdir, "minio.log"), encoding="utf-8", errors="replace") as f:
                raise RuntimeError(f"minio exited with {process.returncode}:\n{f.read()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{server.endpoint_url}/minio/health/ready", timeout=2, context=context):
                return server
        except (urllib.error.URLError, OSError):
            if time.monotonic() > deadline:
                stop_minio(server)
                raise RuntimeError(f"minio did not become ready within {timeout}s") from None
            time.sleep(0.2)


def stop_minio(server: MinioServer) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait(timeout=5)
    shutil.rmtree(server.workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def minio_server() -> Iterator[MinioServer]:
    binary = minio_binary()
    if binary is None:
        pytest.skip("no MinIO binary: bash tests/servers/build_minio.sh builds tests/.cache/bin/minio "
                    "(needs Go; make test runs it), or set CAS_TEST_MINIO")
    if not os.access(binary, os.X_OK):
        pytest.fail(f"CAS_TEST_MINIO={binary} is not an executable")
    server = start_minio(binary)
    try:
        yield server
    finally:
        stop_minio(server)
