"""The encrypted repository's backend wrapper (cas/repo/encrypted.py) and its formats
(cas/format/encryption.py): the backend contract through it, over a local directory and over S3
(moto), Hypothesis round trips of ranged reads at every segment boundary, and tampering refused.

``raw`` access for the contract reaches the inner storage directly and seals or opens objects
with the format functions, so the suite checks what is really stored under the encrypted names.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import backends.s3
from backends.base import Backend, ObjectInfo
from backends.local import LocalBackend
from backends.s3 import from_url
from backends.testing import BackendContract, check_against_model
from cas.errors import IntegrityError
from cas.format import encryption as enc
from cas.repo.encrypted import EncryptedBackend
from tests.backends.test_engine import EngineThroughBackend
from tests.backends.test_local import _FilesystemAccess
from tests.backends.test_s3 import _BotoAccess
from tests.servers import s3 as s3_servers
from tests.servers import small_list_pages
from tests.servers.s3 import MotoServer

moto_server = s3_servers.moto_server

KEYS = enc.RepoKeys.from_master(b"\x07" * 32)
OTHER_KEYS = enc.RepoKeys.from_master(b"\x08" * 32)
SEG = enc.SEGMENT


class _SealedAccess:
    """Raw access to what an :class:`EncryptedBackend` stores, through the storage itself."""

    def __init__(self, raw: Any, keys: enc.RepoKeys) -> None:
        self.raw = raw
        self.names = EncryptedBackend(_NoBackend(), keys)  # only for stored_key
        self.keys = keys

    def read(self, key: str) -> bytes:
        return enc.open_object(self.keys, key, self.raw.read(self.names.stored_key(key)))

    def write(self, key: str, data: bytes) -> None:
        self.raw.write(self.names.stored_key(key), bytes(enc.seal(self.keys, key, data)))


class _NoBackend(Backend):
    def put(self, key: str, data: Any, *, overwrite: bool = True) -> None:
        raise AssertionError

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        raise AssertionError

    def stat(self, key: str) -> ObjectInfo:
        raise AssertionError

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        raise AssertionError

    def delete(self, key: str) -> None:
        raise AssertionError


class TestEncryptedOverLocal(BackendContract, EngineThroughBackend):
    @pytest.fixture
    def backend(self, tmp_path: Path) -> Backend:
        return EncryptedBackend(LocalBackend(tmp_path / "repo"), KEYS)

    @pytest.fixture
    def raw(self, tmp_path: Path) -> _SealedAccess:
        return _SealedAccess(_FilesystemAccess(tmp_path / "repo"), KEYS)


class TestEncryptedOverS3(BackendContract):
    @pytest.fixture(autouse=True)
    def _no_ambient_aws(self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
        s3_servers.isolate_from_ambient_aws(monkeypatch, str(tmp_path))

    @pytest.fixture
    def bucket(self, moto_server: MotoServer) -> str:
        name = f"cas-{uuid.uuid4().hex[:16]}"
        moto_server.client().create_bucket(Bucket=name)
        return name

    @pytest.fixture
    def backend(self, moto_server: MotoServer, bucket: str) -> Iterator[Backend]:
        inner = from_url(f"s3://{bucket}/enc", **moto_server.backend_options(),
                         part_size=5 * 1024 * 1024, multipart_threshold=5 * 1024 * 1024)
        yield EncryptedBackend(inner, KEYS)
        inner.close()

    @pytest.fixture
    def raw(self, moto_server: MotoServer, bucket: str) -> _SealedAccess:
        return _SealedAccess(_BotoAccess(moto_server.client(), bucket, "enc/"), KEYS)

    @pytest.fixture
    def list_page(self, monkeypatch: pytest.MonkeyPatch) -> int:
        return small_list_pages(monkeypatch, backends.s3)


def test_encrypted_backend_matches_a_dict_model(tmp_path: Path) -> None:
    runs = iter(range(1_000_000))
    check_against_model(lambda: EncryptedBackend(LocalBackend(tmp_path / f"run-{next(runs)}"), KEYS))


class _Counting(LocalBackend):
    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.gets: list[tuple[int, int | None]] = []

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        self.gets.append((offset, length))
        return super().get(key, offset, length)


#: Sizes around segment boundaries, and ranges starting and ending on every side of them.
_sizes = st.one_of(st.integers(0, 3 * SEG + 17), st.sampled_from([0, 1, SEG - 1, SEG, SEG + 1, 2 * SEG, 3 * SEG]))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(size=_sizes, data=st.data())
def test_ranged_reads_return_exactly_the_plaintext_range(tmp_path: Path, size: int, data: st.DataObject) -> None:
    inner = _Counting(tmp_path / "hyp")
    backend = EncryptedBackend(inner, KEYS)
    payload = os.urandom(size)
    backend.put("data/ab/obj", payload)
    assert backend.stat("data/ab/obj").size == size
    assert inner.stat(backend.stored_key("data/ab/obj")).size == enc.sealed_size(size)
    boundary = st.sampled_from(sorted({0, size, max(0, size - 1), *range(0, size + 1, SEG),
                                       *(b + d for b in range(0, size + 1, SEG) for d in (-1, 1) if 0 <= b + d <= size)}))
    offset = data.draw(st.one_of(st.integers(0, size + 5), boundary), label="offset")
    length = data.draw(st.one_of(st.none(), st.integers(0, size + 5), boundary), label="length")
    assert backend.get("data/ab/obj", offset, length) == (payload[offset:] if length is None else payload[offset : offset + length])
    tail = data.draw(st.integers(1, size + 3), label="tail")
    assert backend.get("data/ab/obj", -tail) == payload[-tail:]
    # A range read after the header is known costs one request covering only its segments.
    inner.gets.clear()
    if size and offset < size and length:
        backend.get("data/ab/obj", offset, length)
        assert len(inner.gets) == 1
        first = offset // SEG
        last = (offset + length - 1) // SEG  # the range asked for (it may run past the end)
        assert inner.gets[0] == (enc.HEADER + first * (SEG + enc.TAG), (last - first + 1) * (SEG + enc.TAG))


def _stored(tmp_path: Path, backend: EncryptedBackend, key: str) -> Path:
    return tmp_path / "t" / backend.stored_key(key)


@pytest.fixture
def three_segments(tmp_path: Path) -> tuple[EncryptedBackend, bytes]:
    backend = EncryptedBackend(LocalBackend(tmp_path / "t"), KEYS)
    payload = os.urandom(2 * SEG + 1000)
    backend.put("data/00/a", payload)
    return backend, payload


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(position=st.integers(0, enc.sealed_size(2 * SEG + 1000) - 1), bit=st.integers(0, 7))
def test_any_flipped_bit_fails_the_reads_that_cover_it(
    tmp_path: Path, three_segments: tuple[EncryptedBackend, bytes], position: int, bit: int
) -> None:
    backend, payload = three_segments
    path = _stored(tmp_path, backend, "data/00/a")
    original = path.read_bytes()
    damaged = bytearray(original)
    damaged[position] ^= 1 << bit
    path.write_bytes(bytes(damaged))
    fresh = EncryptedBackend(LocalBackend(tmp_path / "t"), KEYS)  # no cached header
    try:
        with pytest.raises(IntegrityError):
            fresh.get("data/00/a")
        segment = (position - enc.HEADER) // (SEG + enc.TAG) if position >= enc.HEADER else None
        for s in range(3):
            lo = s * SEG
            if segment is None or segment == s:
                with pytest.raises(IntegrityError):
                    fresh.get("data/00/a", lo, 10)
            else:
                assert fresh.get("data/00/a", lo, 10) == payload[lo : lo + 10]  # other segments still read
    finally:
        path.write_bytes(original)


def test_truncated_reordered_and_swapped_objects_are_refused(
    tmp_path: Path, three_segments: tuple[EncryptedBackend, bytes]
) -> None:
    backend, payload = three_segments
    path = _stored(tmp_path, backend, "data/00/a")
    sealed = path.read_bytes()
    step = SEG + enc.TAG
    segments = [sealed[enc.HEADER + i * step : enc.HEADER + (i + 1) * step] for i in range(3)]

    def refused(data: bytes, key: str = "data/00/a") -> None:
        path.write_bytes(data)
        fresh = EncryptedBackend(LocalBackend(tmp_path / "t"), KEYS)
        with pytest.raises(IntegrityError):
            fresh.get(key)

    # Truncated at a segment boundary (the new last segment is not marked last), and mid-segment.
    refused(sealed[: enc.HEADER + 2 * step])
    refused(sealed[:-1])
    refused(sealed[: enc.HEADER])
    # Segments reordered, one duplicated, one dropped.
    header = sealed[: enc.HEADER]
    refused(header + segments[1] + segments[0] + segments[2])
    refused(header + segments[0] + segments[0] + segments[2])
    refused(header + segments[0] + segments[2])
    # Another object's ciphertext under this name (the name is bound in).
    backend.put("data/00/b", payload)
    refused(_stored(tmp_path, backend, "data/00/b").read_bytes())
    # The same object sealed under another repository's keys.
    refused(enc.seal(OTHER_KEYS, "data/00/a", payload))
    path.write_bytes(sealed)
    assert EncryptedBackend(LocalBackend(tmp_path / "t"), KEYS).get("data/00/a") == payload


def test_swapping_two_objects_fails_both(tmp_path: Path) -> None:
    backend = EncryptedBackend(LocalBackend(tmp_path / "t"), KEYS)
    backend.put("snapshots/run-1", b'{"root":"1"}')
    backend.put("snapshots/run-2", b'{"root":"2"}')
    one, two = _stored(tmp_path, backend, "snapshots/run-1"), _stored(tmp_path, backend, "snapshots/run-2")
    a, b = one.read_bytes(), two.read_bytes()
    one.write_bytes(b)
    two.write_bytes(a)
    fresh = EncryptedBackend(LocalBackend(tmp_path / "t"), KEYS)
    for key in ("snapshots/run-1", "snapshots/run-2"):
        with pytest.raises(IntegrityError):
            fresh.get(key)


@given(rest=st.text(st.characters(blacklist_characters="\x00/", blacklist_categories=["Cs"]), min_size=1, max_size=200))
def test_names_round_trip_and_differ_between_repositories(rest: str) -> None:
    token = enc.encrypt_name(KEYS, "snapshots", rest)
    assert enc.decrypt_name(KEYS, "snapshots", token) == rest
    assert enc.decrypt_name(KEYS, "data", token) is None  # bound to its area
    assert enc.decrypt_name(OTHER_KEYS, "snapshots", token) is None
    assert enc.encrypt_name(OTHER_KEYS, "snapshots", rest) != token
    assert token == enc.encrypt_name(KEYS, "snapshots", rest)  # deterministic: put-if-absent still claims


def test_stored_names_reveal_neither_ids_nor_lengths_exactly(tmp_path: Path) -> None:
    backend = EncryptedBackend(LocalBackend(tmp_path / "t"), KEYS)
    pack_id = "ab" * 32
    for key in (f"data/ab/{pack_id}", "snapshots/r", "snapshots/run-0042", "snapshots/" + "x" * 200):
        backend.put(key, b"x")
    stored = [str(p.relative_to(tmp_path / "t")) for p in (tmp_path / "t").rglob("*") if p.is_file()]
    assert not any(pack_id[:16] in s or "run-0042" in s or "xxxx" in s for s in stored)
    assert all(len(part) <= 255 for s in stored for part in s.split("/"))
    lengths = {len(backend.stored_key(k)) for k in ("snapshots/r", "snapshots/run-0042")}
    assert len(lengths) == 1  # padded to 32 bytes
    assert sorted(i.key for i in backend.list("snapshots/")) == sorted(
        ["snapshots/r", "snapshots/run-0042", "snapshots/" + "x" * 200])


def test_objects_that_are_not_this_repositorys_are_not_listed(tmp_path: Path) -> None:
    inner = LocalBackend(tmp_path / "t")
    EncryptedBackend(inner, OTHER_KEYS).put("data/00/theirs", b"x")
    inner.put("data/zz/zzzz", b"junk")
    ours = EncryptedBackend(inner, KEYS)
    ours.put("data/00/mine", b"y")
    assert [i.key for i in ours.list("data/")] == ["data/00/mine"]


def test_sizes_of_sealed_objects() -> None:
    for size in (0, 1, SEG - 1, SEG, SEG + 1, 5 * SEG, 5 * SEG + 3):
        assert enc.plain_size(enc.sealed_size(size)) == size
        assert len(enc.seal(KEYS, "k", b"\x00" * size)) == enc.sealed_size(size)
    assert enc.plain_size(0) == 0 and enc.plain_size(enc.HEADER + 3) == 0  # truncated: never negative


def test_an_empty_range_of_an_absent_object_is_not_found(tmp_path: Path) -> None:
    """Found by the dict model: a zero-length read answered without asking the storage."""
    from backends.errors import NotFound

    backend = EncryptedBackend(LocalBackend(tmp_path / "t"), KEYS)
    with pytest.raises(NotFound):
        backend.get("data/00/absent", 5, 0)
    backend.put("data/00/present", b"abc")
    assert backend.get("data/00/present", 5, 0) == b""
