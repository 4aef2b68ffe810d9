from __future__ import annotations

import io
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
import requests

from backends import open_backend
from backends.errors import AlreadyExists, ConfigurationError, NotFound, PermissionDenied, Unavailable
from backends.hdfs import TMP_PREFIX, HdfsBackend, _translate, from_url
from backends.testing import BackendContract
from tests.backends.test_engine import EngineThroughBackend
from tests.servers import hdfs as hdfs_servers
from tests.servers.hdfs import HdfsCluster, free_port

# The session-scoped MiniDFSCluster, imported explicitly (a fixture must be a module attribute).
hdfs_cluster = hdfs_servers.hdfs_cluster


class WebHdfsAccess:
    """Reads and writes a directory with plain WebHDFS HTTP calls, bypassing the backend and HdfsCLI."""

    def __init__(self, cluster: HdfsCluster, root: str, user: str) -> None:
        self.base = cluster.webhdfs_url + root
        self.user = user
        self.http = requests.Session()

    def _url(self, key: str) -> str:
        return f"{self.base}/{key}" if key else self.base

    def read(self, key: str) -> bytes:
        response = self.http.get(self._url(key), params={"op": "OPEN", "user.name": self.user}, timeout=30)
        if response.status_code == 404:
            raise FileNotFoundError(key)
        response.raise_for_status()
        return response.content

    def write(self, key: str, data: bytes) -> None:
        params = {"op": "CREATE", "overwrite": "true", "user.name": self.user}
        step = self.http.put(self._url(key), params=params, allow_redirects=False, timeout=30)
        assert step.status_code == 307, step.text
        done = self.http.put(step.headers["Location"], data=data, timeout=30)
        assert done.status_code == 201, done.text

    def names(self, key: str = "") -> list[str]:
        response = self.http.get(
            self._url(key), params={"op": "LISTSTATUS", "user.name": self.user}, timeout=30
        )
        response.raise_for_status()
        return sorted(s["pathSuffix"] for s in response.json()["FileStatuses"]["FileStatus"])


@pytest.fixture
def root(hdfs_cluster: HdfsCluster) -> str:
    """A fresh directory per test, under the test user's home."""
    return f"{hdfs_cluster.home}/t-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def backend(hdfs_cluster: HdfsCluster, root: str) -> Iterator[HdfsBackend]:
    be = from_url(hdfs_cluster.url(root), hdfs_user=hdfs_cluster.user)
    yield be
    be.close()


@pytest.fixture
def raw(hdfs_cluster: HdfsCluster, root: str) -> WebHdfsAccess:
    return WebHdfsAccess(hdfs_cluster, root, hdfs_cluster.user)


class TestHdfsBackend(BackendContract, EngineThroughBackend):
    @pytest.fixture
    def list_page(self, hdfs_cluster: HdfsCluster) -> int:
        return hdfs_cluster.list_limit


def test_unreachable_namenode_is_unavailable_quickly() -> None:
    be = from_url(f"hdfs://127.0.0.1:{free_port()}/user/cas/x", hdfs_user="cas", timeout=3)
    started = time.monotonic()
    for call in (
        lambda: be.put("k", b"x"),
        lambda: be.get("k"),
        lambda: be.stat("k"),
        lambda: list(be.list("")),
        lambda: be.delete("k"),
    ):
        with pytest.raises(Unavailable) as caught:
            call()
        assert caught.value.temporary
        assert caught.value.__cause__ is not None
    assert time.monotonic() - started < 5


def test_silent_namenode_times_out_as_unavailable() -> None:
    """A namenode that accepts connections and never answers: the timeout option bounds the wait."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        be = from_url(f"hdfs://127.0.0.1:{port}/user/cas/x", hdfs_user="cas", timeout=0.5)
        started = time.monotonic()
        with pytest.raises(Unavailable):
            be.stat("k")
        assert time.monotonic() - started < 3


def test_temporary_files_are_never_listed(backend: HdfsBackend, raw: WebHdfsAccess) -> None:
    raw.write(f"data/{TMP_PREFIX}leftover", b"partial")
    raw.write(f"{TMP_PREFIX}top", b"partial")
    backend.put("data/real", b"object")
    assert [i.key for i in backend.list("")] == ["data/real"]
    assert [i.key for i in backend.list("data/")] == ["data/real"]
    assert [i.key for i in backend.list(f"data/{TMP_PREFIX}")] == []
    # and a put leaves none of its own behind
    assert raw.names("data") == sorted([f"{TMP_PREFIX}leftover", "real"])


def test_put_if_absent_race_across_clients(hdfs_cluster: HdfsCluster, root: str, raw: WebHdfsAccess) -> None:
    """Writers with their own connections and payloads large enough for the uploads to overlap:
    the NameNode's rename lets exactly one in, and the object is that writer's, whole."""
    writers = 8
    payloads = [bytes([i]) * (2 * 1024 * 1024 + i) for i in range(writers)]
    backends = [from_url(hdfs_cluster.url(root), hdfs_user=hdfs_cluster.user) for _ in range(writers)]
    barrier = threading.Barrier(writers)
    outcomes: dict[int, str] = {}

    def attempt(i: int) -> None:
        barrier.wait()
        try:
            backends[i].put("packs/race", io.BytesIO(payloads[i]), overwrite=False)
            outcomes[i] = "won"
        except AlreadyExists:
            outcomes[i] = "lost"

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [i for i, outcome in outcomes.items() if outcome == "won"]
    assert len(outcomes) == writers and len(winners) == 1, outcomes
    assert raw.read("packs/race") == payloads[winners[0]]
    assert raw.names("packs") == ["race"]  # every loser removed its temporary file


def test_overwrite_replaces_in_one_step(backend: HdfsBackend, raw: WebHdfsAccess) -> None:
    backend.put("k", b"old" * 1000)
    backend.put("k", b"new")
    assert raw.read("k") == b"new"
    assert raw.names() == ["k"]


def test_put_streams_memoryview_and_unsized_stream(backend: HdfsBackend, raw: WebHdfsAccess) -> None:
    payload = os.urandom(3 * 1024 * 1024 + 5)
    backend.put("mv", memoryview(payload))
    assert raw.read("mv") == payload
    read_fd, write_fd = os.pipe()

    def feed() -> None:
        with open(write_fd, "wb") as pipe:
            pipe.write(payload)

    feeder = threading.Thread(target=feed)
    feeder.start()
    with open(read_fd, "rb") as pipe:
        backend.put("pipe", pipe)  # no size known: sent chunked
    feeder.join()
    assert raw.read("pipe") == payload


def test_directories_are_not_objects(backend: HdfsBackend, raw: WebHdfsAccess) -> None:
    raw.write("dir/inside", b"x")
    for call in (lambda: backend.stat("dir"), lambda: backend.get("dir"), lambda: backend.delete("dir")):
        with pytest.raises(NotFound):
            call()
    with pytest.raises(AlreadyExists):
        backend.put("dir", b"y", overwrite=False)
    with pytest.raises(AlreadyExists):
        backend.put("dir/inside/below", b"y")
    assert raw.read("dir/inside") == b"x"
    assert raw.names("dir") == ["inside"]


def test_permission_denied_outside_home(hdfs_cluster: HdfsCluster) -> None:
    be = from_url(hdfs_cluster.url("/not-yours"), hdfs_user=hdfs_cluster.user)
    with pytest.raises(PermissionDenied) as caught:
        be.put("k", b"x")
    assert "AccessControlException" in str(caught.value)


def test_opened_through_the_registry(hdfs_cluster: HdfsCluster, root: str, raw: WebHdfsAccess) -> None:
    be = open_backend(hdfs_cluster.url(root, scheme="webhdfs") + f"?user={hdfs_cluster.user}")
    assert isinstance(be, HdfsBackend)
    be.put("via/registry", b"yes")
    assert raw.read("via/registry") == b"yes"
    assert be.describe() == f"webhdfs://127.0.0.1:{hdfs_cluster.http_port}{root} (user=cas)"


def test_describe_never_shows_a_token() -> None:
    be = from_url("hdfs://nn.example:9870/user/ml/cas", token="s3cr3t-delegation-token")
    assert "s3cr3t" not in be.describe()
    assert be.describe().startswith("hdfs://nn.example:9870/user/ml/cas")
    be = from_url("webhdfs://nn.example/data?token=s3cr3t")
    assert "s3cr3t" not in be.describe() and ":9870/data" in be.describe()


def test_bad_options_are_configuration_errors() -> None:
    with pytest.raises(ConfigurationError, match="unknown HDFS option"):
        from_url("hdfs://nn.example:9870/x", usr="typo")
    with pytest.raises(ConfigurationError, match="timeout"):
        from_url("hdfs://nn.example:9870/x", timeout="soon")
    with pytest.raises(ConfigurationError):
        from_url("hdfs:///x")


@pytest.mark.parametrize("name", ["DSQuotaExceededException", "NSQuotaExceededException"])
def test_exceeded_quota_is_unavailable_but_not_temporary(name: str) -> None:
    """The NameNode's answer to a full quota (MiniDFSCluster cannot set one over WebHDFS)."""
    from hdfs.util import HdfsError

    error = _translate(HdfsError("The quota of /user/cas is exceeded", exception=name), "k")
    assert isinstance(error, Unavailable) and not error.temporary
    assert _translate(HdfsError("busy", exception="RetriableException"), "k").temporary
