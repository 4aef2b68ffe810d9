"""A real S3 server for tests: moto's standalone server on a free 127.0.0.1 port, in a subprocess.

Import the fixtures explicitly in a test module (a non-root conftest may not use
``pytest_plugins``)::

    from tests.servers.s3 import moto_server  # noqa: F401

or bind them to module names (``moto_server = s3_servers.moto_server``), which needs no noqa
where test functions take them as parameters.

``moto_server`` accepts any credentials (moto checks none by default). ``moto_auth_server`` is a
second instance with IAM authentication switched on after setup, holding one user whose key is
:data:`AUTH_ACCESS_KEY_ID`/``moto_auth_server.secret_access_key``, allowed everything on S3.

:class:`DroppingProxy` is a loopback TCP proxy that cuts connections after a byte budget, to
make "connection dropped mid-transfer" happen on a real socket.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

HOST = "127.0.0.1"
#: Credentials for the unauthenticated server; moto accepts anything there.
TEST_ACCESS_KEY_ID = "testing-access-key"
TEST_SECRET_ACCESS_KEY = "testing-secret-key-not-real"
REGION = "us-east-1"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (at the moment of asking)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@dataclass
class MotoServer:
    """A running moto server: where it listens and how to reach it with boto3."""

    endpoint_url: str
    process: subprocess.Popen[bytes]
    log_path: str
    access_key_id: str = TEST_ACCESS_KEY_ID
    secret_access_key: str = TEST_SECRET_ACCESS_KEY
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def port(self) -> int:
        return int(self.endpoint_url.rsplit(":", 1)[1])

    def client(self, service: str = "s3", **credentials: str) -> Any:
        """A boto3 client for this server, bypassing any cas code."""
        import boto3  # type: ignore[import-untyped]
        from botocore.config import Config  # type: ignore[import-untyped]

        return boto3.client(
            service,
            endpoint_url=self.endpoint_url,
            region_name=REGION,
            aws_access_key_id=credentials.get("access_key_id", self.access_key_id),
            aws_secret_access_key=credentials.get("secret_access_key", self.secret_access_key),
            config=Config(s3={"addressing_style": "path"}, retries={"total_max_attempts": 1}),
        )

    def backend_options(self) -> dict[str, Any]:
        """Options for :func:`backends.s3.from_url` that reach this server."""
        return {
            "endpoint_url": self.endpoint_url,
            "region_name": REGION,
            "access_key_id": self.access_key_id,
            "secret_access_key": self.secret_access_key,
        }

    def post(self, path: str, body: bytes = b"") -> bytes:
        # Not form-encoded: Flask would swallow a form body and moto reads the raw one.
        request = urllib.request.Request(
            self.endpoint_url + path, data=body, method="POST", headers={"Content-Type": "text/plain"}
        )
        with urllib.request.urlopen(request, timeout=10) as resp:
            return bytes(resp.read())


def start_moto_server(env: dict[str, str] | None = None, timeout: float = 30.0) -> MotoServer:
    """Start moto's server on a free loopback port, through :mod:`tests.servers.moto_launcher`
    (which mends its signature check of listings whose prefix holds a ``/``, needed once
    authentication is on, and makes its conditional writes atomic, as S3's are), and wait until
    it answers HTTP."""
    port = free_port()
    log = tempfile.NamedTemporaryFile(prefix="moto-server-", suffix=".log", delete=False)  # noqa: SIM115
    child_env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MOTO_"))}
    child_env.update(env or {})
    module = "tests.servers.moto_launcher"
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    child_env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, child_env.get("PYTHONPATH")]))
    process = subprocess.Popen(
        [sys.executable, "-m", module, "-H", HOST, "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=child_env,
    )
    log.close()
    server = MotoServer(f"http://{HOST}:{port}", process, log.name)
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            with open(log.name, encoding="utf-8", errors="replace") as f:
                raise RuntimeError(f"moto server exited with {process.returncode}:\n{f.read()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{server.endpoint_url}/moto-api/data.json", timeout=2):
                return server
        except (urllib.error.URLError, OSError):
            if time.monotonic() > deadline:
                stop_moto_server(server)
                raise RuntimeError(f"moto server did not answer on port {port} within {timeout}s") from None
            time.sleep(0.05)


def stop_moto_server(server: MotoServer) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait(timeout=5)
    try:
        os.unlink(server.log_path)
    except OSError:
        pass


def isolate_from_ambient_aws(monkeypatch: pytest.MonkeyPatch, home: str) -> None:
    """Keep the developer's AWS setup (and cas's SSE-C key) out of a test, and never let the SDK
    look for instance metadata: config and credentials files point at nothing under ``home``."""
    for name in list(os.environ):
        if name.startswith("AWS_") or name == "CAS_S3_SSE_CUSTOMER_KEY":
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", os.path.join(home, "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.path.join(home, "no-aws-credentials"))


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    """One moto S3 server for the whole session, without authentication."""
    server = start_moto_server()
    try:
        yield server
    finally:
        stop_moto_server(server)


AUTH_USER = "cas-test-user"


@pytest.fixture(scope="session")
def moto_auth_server() -> Iterator[MotoServer]:
    """A separate moto server that checks signatures and IAM policies.

    moto authenticates only once ``INITIAL_NO_AUTH_ACTION_COUNT`` requests have been served; it
    starts at infinity, we create an IAM user with an access key and an allow-all S3 policy and a
    bucket ``auth-bucket``, then lower the count to 0 through ``/moto-api/reset-auth``.
    """
    server = start_moto_server()
    try:
        iam = server.client("iam")
        iam.create_user(UserName=AUTH_USER)
        policy = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
        }
        iam.put_user_policy(UserName=AUTH_USER, PolicyName="s3-all", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName=AUTH_USER)["AccessKey"]
        server.client("s3").create_bucket(Bucket="auth-bucket")
        server.access_key_id = key["AccessKeyId"]
        server.secret_access_key = key["SecretAccessKey"]
        server.post("/moto-api/reset-auth", b"0")
        yield server
    finally:
        stop_moto_server(server)


class DroppingProxy:
    """Forward 127.0.0.1:``port`` to ``target_port``, cutting up to ``drop_connections`` connections.

    A connection is cut (closed with a TCP reset both ways) once more than ``cut_after`` bytes
    have flowed from the server back to the client, or ``cut_request_after`` bytes from the client
    to the server, until ``drop_connections`` connections have been cut; after that everything
    passes, and a connection not cut ends as the client or the server ended it (its last bytes
    delivered). Counting per connection and not per request keeps it independent of keep-alive.
    ``dropped`` counts the connections cut.
    """

    def __init__(
        self,
        target_port: int,
        *,
        drop_connections: int = 1_000_000,
        cut_after: int | None = None,
        cut_request_after: int | None = None,
    ) -> None:
        self.target_port = target_port
        self.drop_connections = drop_connections
        self.cut_after = cut_after
        self.cut_request_after = cut_request_after
        self.dropped = 0
        self._lock = threading.Lock()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((HOST, 0))
        self._listener.listen(16)
        self.port = int(self._listener.getsockname()[1])
        self.endpoint_url = f"http://{HOST}:{self.port}"
        self._closed = False
        self._thread = threading.Thread(target=self._accept_loop, name="dropping-proxy", daemon=True)
        self._thread.start()

    def __enter__(self) -> DroppingProxy:  # noqa: PYI034 - final class in practice
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._closed = True
        try:
            self._listener.close()
        except OSError:
            pass

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection((HOST, self.target_port), timeout=10)
        except OSError:
            _reset(client)
            return
        done = threading.Event()
        cut: list[bool] = []
        budgets = {"up": self.cut_request_after, "down": self.cut_after}
        # Neither pump closes a socket: it shuts both down, which wakes the other pump, and the
        # sockets are closed (reset) once both pumps are done. Closed by one pump while the other
        # was about to call recv on it, a socket's descriptor could be reused by the next
        # connection accepted, and that pump would read the next connection's bytes.

        def pump(src: socket.socket, dst: socket.socket, direction: str) -> None:
            budget = budgets[direction]
            try:
                while not done.is_set():
                    data = src.recv(65536)
                    if not data:
                        break
                    if budget is not None:
                        if len(data) >= budget and self._claim_cut():
                            cut.append(True)
                            dst.sendall(data[:budget])
                            break
                        budget = None if len(data) >= budget else budget - len(data)
                    dst.sendall(data)
            except OSError:
                pass
            finally:
                done.set()
                _wake(client)
                _wake(upstream)

        down = threading.Thread(target=pump, args=(upstream, client, "down"), daemon=True)
        down.start()
        pump(client, upstream, "up")
        down.join()
        if cut:
            _reset(client)
            _reset(upstream)
        else:
            # An end that is not a cut passes as one: what was sent reaches the other side before
            # the close (a reset would discard it, and the client would see a cut that was not one
            # when the server ended the connection right after a response it had not read yet).
            client.close()
            upstream.close()

    def _claim_cut(self) -> bool:
        """Whether this over-budget connection is one of the first ``drop_connections`` to cut."""
        with self._lock:
            if self.dropped >= self.drop_connections:
                return False
            self.dropped += 1
            return True


def _wake(sock: socket.socket) -> None:
    """Shut ``sock`` down for reading, which ends a ``recv`` blocked on it in another thread."""
    try:
        sock.shutdown(socket.SHUT_RD)
    except OSError:
        pass


def _reset(sock: socket.socket) -> None:
    """Close with SO_LINGER 0, so the peer sees a reset rather than a clean end of stream (once no
    thread uses ``sock``: a pump blocked in ``recv`` is woken by :func:`_wake` first)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass
