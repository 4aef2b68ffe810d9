"""A real HDFS for tests: Hadoop's MiniDFSCluster (one NameNode, one DataNode) on 127.0.0.1.

Import the fixture explicitly in a test module::

    from tests.servers.hdfs import hdfs_cluster  # noqa: F401

The session fixture runs ``tests/hdfs/build.sh`` (Maven resolves the Hadoop jars into ~/.m2 on
the first run, then it only checks timestamps), starts ``tests/hdfs/run.sh`` in a subprocess,
waits for its ready line and stops it at the end of the session by closing its stdin. WebHDFS
uses simple authentication: the ``user.name`` a client sends is who it is. ``/user/<USER>`` is
owned by :data:`USER`; everything else belongs to the superuser (whoever runs the JVM), so
permissions are enforced for real.

Java (17) and Maven are required: without them the fixture fails with what to install, because a
silently skipped backend is an untested one. ``CAS_SKIP_HDFS=1`` skips the HDFS tests on purpose.
"""

from __future__ import annotations

import os
import queue
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pytest

HOST = "127.0.0.1"
#: The unprivileged user the tests speak as; it owns ``/user/<USER>``.
USER = "cas"
HDFS_DIR = Path(__file__).resolve().parents[1] / "hdfs"
READY_PREFIX = "MINIHDFS READY "
BUILD_TIMEOUT = 900.0
START_TIMEOUT = float(os.environ.get("CAS_HDFS_START_TIMEOUT", "120"))
STOP_TIMEOUT = 30.0


@dataclass(frozen=True)
class HdfsCluster:
    http_port: int
    rpc_port: int
    superuser: str
    list_limit: int
    """Entries the NameNode lists per request (its ``dfs.ls.limit``)."""
    user: str = USER

    @property
    def webhdfs_url(self) -> str:
        """Base of the WebHDFS REST API, e.g. ``http://127.0.0.1:PORT/webhdfs/v1``."""
        return f"http://{HOST}:{self.http_port}/webhdfs/v1"

    @property
    def home(self) -> str:
        return f"/user/{self.user}"

    def url(self, path: str, scheme: str = "hdfs") -> str:
        """A backend URL for an absolute HDFS path on this cluster."""
        return f"{scheme}://{HOST}:{self.http_port}{path}"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (at the moment of asking)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def build_launcher() -> float:
    """Run build.sh; return the seconds it took. Fails the session with its output on error."""
    started = time.monotonic()
    try:
        done = subprocess.run(
            ["bash", str(HDFS_DIR / "build.sh")],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"tests/hdfs/build.sh took more than {BUILD_TIMEOUT:.0f}s (Maven download stuck?)")
    if done.returncode != 0:
        output = (done.stdout + done.stderr).strip().splitlines()[-30:]
        pytest.fail("tests/hdfs/build.sh failed:\n" + "\n".join(output))
    return time.monotonic() - started


def _read_lines(stream: IO[str], lines: queue.Queue[str | None]) -> None:
    """Forward the launcher's stdout, so the ready line can be awaited with a timeout and the
    pipe never fills up later."""
    for line in stream:
        lines.put(line.rstrip("\n"))
    lines.put(None)


def _stop(process: subprocess.Popen[str]) -> None:
    if process.poll() is None and process.stdin is not None:
        try:
            process.stdin.close()  # the launcher stops the cluster at end of stdin
        except OSError:
            pass
        try:
            process.wait(STOP_TIMEOUT)
            return
        except subprocess.TimeoutExpired:
            pass
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="session")
def hdfs_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HdfsCluster]:
    if os.environ.get("CAS_SKIP_HDFS") == "1":
        pytest.skip("CAS_SKIP_HDFS=1: HDFS backend tests skipped on request")
    missing = [tool for tool in ("java", "javac", "mvn") if shutil.which(tool) is None]
    if missing:
        pytest.fail(
            f"the HDFS tests need a JDK 17 and Maven; missing from PATH: {', '.join(missing)}. Install: "
            "apt-get install openjdk-17-jdk-headless maven (or set CAS_SKIP_HDFS=1 to skip them)"
        )
    build_launcher()

    base = tmp_path_factory.mktemp("minihdfs")
    log_path = base / "minihdfs.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            ["bash", str(HDFS_DIR / "run.sh"), str(base / "dfs"), "0", USER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
    try:
        assert process.stdout is not None
        lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=_read_lines, args=(process.stdout, lines), daemon=True).start()
        deadline = time.monotonic() + START_TIMEOUT
        ready: str | None = None
        while ready is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                pytest.fail(f"MiniHdfs not ready after {START_TIMEOUT:.0f}s; log:\n{_tail(log_path)}")
            try:
                line = lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                pytest.fail(f"MiniHdfs exited with {process.wait()} before ready; log:\n{_tail(log_path)}")
            if line.startswith(READY_PREFIX):
                ready = line
        fields = dict(item.split("=", 1) for item in ready[len(READY_PREFIX) :].split())
        yield HdfsCluster(
            http_port=int(fields["http"].rsplit(":", 1)[1]),
            rpc_port=int(fields["rpc"].rsplit(":", 1)[1]),
            superuser=fields["superuser"],
            list_limit=int(fields["list_limit"]),
        )
    finally:
        _stop(process)
