"""The backend contract suite, shipped with ``backends`` so any driver can be checked against it.

Subclass :class:`BackendContract` in a test module and provide two fixtures:

``backend``
    a fresh, empty :class:`backends.base.Backend` for each test;
``raw``
    an object with ``read(key) -> bytes`` and ``write(key, data)`` that reach the same storage
    *without* going through the backend under test (the filesystem, boto3, an HTTP client...), so
    the suite checks the real effect of each call rather than the backend agreeing with itself.

Each backend's test file is then a few lines saying how to reach its server.
"""

from __future__ import annotations

import io
import os
import tempfile
import threading
from typing import Protocol

import pytest

from backends.base import Backend, Capabilities
from backends.errors import AlreadyExists, CasError, NotFound


class RawAccess(Protocol):
    def read(self, key: str) -> bytes: ...
    def write(self, key: str, data: bytes) -> None: ...


#: Large enough to force multipart uploads on S3/OSS drivers whose part size is set low in tests.
MULTIPART_SIZE = 11 * 1024 * 1024 + 17


def _needs_put_if_absent(backend: Backend) -> None:
    if not backend.capabilities.put_if_absent:
        pytest.skip("the backend does not claim put_if_absent")


class BackendContract:
    """Behaviour every backend must have. Test names say the rule they check."""

    def test_put_then_raw_read_round_trips(self, backend: Backend, raw: RawAccess) -> None:
        backend.put("data/ab/object", b"hello world")
        assert raw.read("data/ab/object") == b"hello world"

    def test_raw_write_then_get(self, backend: Backend, raw: RawAccess) -> None:
        raw.write("x/written-elsewhere", b"\x00\x01payload")
        assert backend.get("x/written-elsewhere") == b"\x00\x01payload"

    def test_empty_object(self, backend: Backend, raw: RawAccess) -> None:
        backend.put("empty", b"")
        assert raw.read("empty") == b""
        assert backend.get("empty") == b""
        assert backend.stat("empty").size == 0

    def test_put_from_file_object(self, backend: Backend, raw: RawAccess) -> None:
        payload = os.urandom(300_000)
        backend.put("stream/obj", io.BytesIO(payload))
        assert raw.read("stream/obj") == payload

    def test_put_from_a_file_stores_the_rest_of_it(self, backend: Backend, raw: RawAccess) -> None:
        # A writer's packs come as temporary files (cas/repo/packfile.py): read from where the
        # file is positioned to its end, across multipart sizes.
        payload = os.urandom(MULTIPART_SIZE)
        with tempfile.TemporaryFile() as f:
            f.write(b"not this" + payload)
            f.flush()
            f.seek(len(b"not this"))
            backend.put("stream/file", f)
        assert raw.read("stream/file") == payload

    def test_large_object_round_trip(self, backend: Backend, raw: RawAccess) -> None:
        payload = os.urandom(MULTIPART_SIZE)
        backend.put("big/obj", io.BytesIO(payload))
        assert raw.read("big/obj") == payload
        assert backend.stat("big/obj").size == len(payload)
        assert backend.get("big/obj", MULTIPART_SIZE - 10) == payload[-10:]

    def test_ranges_at_the_edges(self, backend: Backend) -> None:
        payload = bytes(range(256)) * 4
        backend.put("r", payload)
        assert backend.get("r", 0, 1) == payload[:1]
        assert backend.get("r", 0, len(payload)) == payload
        assert backend.get("r", len(payload) - 1, 1) == payload[-1:]
        assert backend.get("r", 100, 50) == payload[100:150]
        assert backend.get("r", 1000) == payload[1000:]
        assert backend.get("r", 1000, 100) == payload[1000:]
        assert backend.get("r", -12) == payload[-12:]
        assert backend.get("r", 0, 0) == b""

    def test_views_hold_what_get_gives(self, backend: Backend) -> None:
        payload = os.urandom(300_000)
        backend.put("v", payload)
        for offset, length in [(0, 10), (0, 300_000), (1000, 200_000), (299_990, 10), (250_000, 100_000)]:
            view = backend.get_view("v", offset, length)
            assert view.readonly
            assert bytes(view) == payload[offset : offset + length]
        backend.put("v", payload[::-1])  # a new object under the name: its bytes from now on
        assert bytes(backend.get_view("v", 0, 200_000)) == payload[::-1][:200_000]
        with pytest.raises(NotFound):
            backend.get_view("missing", 0, 200_000)

    def test_overwrite_allowed_by_default(self, backend: Backend) -> None:
        backend.put("k", b"one")
        backend.put("k", b"two")
        assert backend.get("k") == b"two"

    def test_capabilities_are_declared(self, backend: Backend) -> None:
        assert isinstance(backend.capabilities, Capabilities)

    def test_put_if_absent_refuses_and_keeps_original(self, backend: Backend, raw: RawAccess) -> None:
        _needs_put_if_absent(backend)
        backend.put("k", b"original", overwrite=False)
        with pytest.raises(AlreadyExists):
            backend.put("k", b"intruder", overwrite=False)
        assert raw.read("k") == b"original"

    def test_put_if_absent_race_has_one_winner(self, backend: Backend) -> None:
        _needs_put_if_absent(backend)
        results: list[str] = []
        lock = threading.Lock()

        def attempt(i: int) -> None:
            try:
                backend.put("race", f"writer-{i}".encode(), overwrite=False)
                outcome = f"won-{i}"
            except AlreadyExists:
                outcome = "lost"
            with lock:
                results.append(outcome)

        threads = [threading.Thread(target=attempt, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        winners = [r for r in results if r.startswith("won")]
        assert len(winners) == 1, results
        assert backend.get("race") == f"writer-{winners[0].split('-')[1]}".encode()

    def test_missing_object_is_not_found(self, backend: Backend) -> None:
        with pytest.raises(NotFound):
            backend.get("nope")
        with pytest.raises(NotFound):
            backend.stat("nope")
        with pytest.raises(NotFound):
            backend.delete("nope")
        with pytest.raises(FileNotFoundError):
            backend.get("dir/nope", 0, 10)
        assert not backend.exists("nope")

    def test_stat_reports_size(self, backend: Backend) -> None:
        backend.put("s", b"12345")
        info = backend.stat("s")
        assert (info.key, info.size) == ("s", 5)
        assert backend.exists("s")

    def test_list_by_prefix(self, backend: Backend) -> None:
        for key in ("data/00/a", "data/00/b", "data/01/c", "snapshots/x", "datum"):
            backend.put(key, key.encode())
        assert sorted(i.key for i in backend.list("data/")) == ["data/00/a", "data/00/b", "data/01/c"]
        assert sorted(i.key for i in backend.list("data/00/")) == ["data/00/a", "data/00/b"]
        assert sorted(i.key for i in backend.list("dat")) == ["data/00/a", "data/00/b", "data/01/c", "datum"]
        assert sorted(i.key for i in backend.list("")) == sorted(
            ["data/00/a", "data/00/b", "data/01/c", "snapshots/x", "datum"]
        )
        sizes = {i.key: i.size for i in backend.list("snap")}
        assert sizes == {"snapshots/x": len(b"snapshots/x")}
        assert list(backend.list("absent/")) == []

    @pytest.fixture
    def list_page(self) -> int:
        """The most keys one list request of the backend under test returns, as the test sets up
        its driver or server (a test class lowers it where writing three pages' keys is slow)."""
        return 1000

    def test_list_many_keys_paginates(self, backend: Backend, raw: RawAccess, list_page: int) -> None:
        keys = {f"many/{i:04d}" for i in range(2 * list_page + 17)}
        for key in keys:
            raw.write(key, b"x")
        assert {i.key for i in backend.list("many/")} == keys

    def test_delete(self, backend: Backend, raw: RawAccess) -> None:
        backend.put("gone", b"bye")
        backend.delete("gone")
        assert not backend.exists("gone")
        with pytest.raises(NotFound):
            backend.get("gone")
        with pytest.raises(FileNotFoundError):
            raw.read("gone")

    def test_hostile_keys_refused(self, backend: Backend) -> None:
        for key in ("", "/abs", "../up", "a/../b", "a//b", "a/./b", "nul\x00x"):
            with pytest.raises(CasError):
                backend.put(key, b"x")
