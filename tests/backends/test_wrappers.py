"""RetryingBackend and FaultyBackend around LocalBackend.

The contract suite runs through ``RetryingBackend(FaultyBackend(LocalBackend))``: with a fifth of
all calls failing, half of those after the operation took effect, every contract rule must still
hold. The remaining tests pin down the retry policy itself.
"""

from __future__ import annotations

import errno
import io
import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import pytest

from backends.base import Backend, Capabilities, ObjectInfo
from backends.errors import (
    AlreadyExists,
    ConfigurationError,
    IntegrityError,
    NotFound,
    PermissionDenied,
    Unavailable,
)
from backends.faulty import Fault, FaultyBackend
from backends.local import LocalBackend
from backends.local import _translate as local_translate
from backends.retry import RetryingBackend
from backends.testing import BackendContract, check_against_model
from tests.backends.test_engine import EngineThroughBackend
from tests.backends.test_local import _FilesystemAccess


def _no_sleep(delay: float) -> None:
    pass


class TestRetryingFaultyLocal(BackendContract, EngineThroughBackend):
    @pytest.fixture(params=[1, 2, 3])
    def backend(self, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
        faulty = FaultyBackend(LocalBackend(tmp_path / "repo"), fail_rate=0.2, seed=request.param)
        yield RetryingBackend(faulty, attempts=8, sleep=_no_sleep, rng=random.Random(0))

    @pytest.fixture
    def raw(self, tmp_path: Path) -> _FilesystemAccess:
        return _FilesystemAccess(tmp_path / "repo")


def test_retrying_faulty_local_matches_a_dict_model(tmp_path: Path) -> None:
    """A fifth of all calls fail, half of them after taking effect: retries must hide every one."""
    runs = iter(range(1_000_000))

    def new_backend() -> Backend:
        run = next(runs)
        faulty = FaultyBackend(LocalBackend(tmp_path / f"run-{run}"), fail_rate=0.2, seed=run)
        return RetryingBackend(faulty, attempts=8, sleep=_no_sleep, rng=random.Random(run))

    check_against_model(new_backend, lost_reply_success=True)


def test_contract_run_really_injected_faults(tmp_path: Path) -> None:
    faulty = FaultyBackend(LocalBackend(tmp_path / "r"), fail_rate=0.3, seed=7)
    be = RetryingBackend(faulty, attempts=10, sleep=_no_sleep)
    for i in range(50):
        be.put(f"k/{i}", str(i).encode(), overwrite=False)
    assert {i.key for i in be.list("k/")} == {f"k/{i}" for i in range(50)}
    kinds = {f.kind for f in faulty.faults}
    assert kinds == {"before", "after"}
    assert any(f.operation == "put" and f.kind == "after" for f in faulty.faults)


class _Scripted(Backend):
    """A backend whose calls raise the scripted errors in order, then succeed."""

    def __init__(self, errors: list[Exception]) -> None:
        self.errors = errors
        self.calls = 0
        self.stored: dict[str, bytes] = {}

    def _step(self) -> None:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)

    def put(self, key: str, data: bytes | memoryview | BinaryIO, *, overwrite: bool = True) -> None:
        self._step()
        self.stored[key] = bytes(data) if isinstance(data, (bytes, memoryview)) else data.read()

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        self._step()
        data = self.stored[key][offset:]
        return data if length is None else data[:length]

    def stat(self, key: str) -> ObjectInfo:
        return ObjectInfo(key, len(self.stored[key]))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        self._step()
        yield from (ObjectInfo(k, len(v)) for k, v in self.stored.items() if k.startswith(prefix))

    def delete(self, key: str) -> None:
        self._step()
        del self.stored[key]


@pytest.mark.parametrize(
    "error",
    [NotFound("x"), AlreadyExists("x"), PermissionDenied("x"), ConfigurationError("x"), IntegrityError("x")],
)
def test_permanent_errors_are_not_retried(error: Exception) -> None:
    inner = _Scripted([error])
    sleeps: list[float] = []
    with pytest.raises(type(error)):
        RetryingBackend(inner, sleep=sleeps.append).get("k")
    assert inner.calls == 1
    assert sleeps == []


def test_non_cas_errors_are_not_retried() -> None:
    inner = _Scripted([RuntimeError("bug")])
    with pytest.raises(RuntimeError):
        RetryingBackend(inner, sleep=_no_sleep).get("k")
    assert inner.calls == 1


def test_temporary_errors_retried_until_success() -> None:
    inner = _Scripted([Unavailable("a"), Unavailable("b")])
    inner.stored["k"] = b"v"
    assert RetryingBackend(inner, sleep=_no_sleep).get("k") == b"v"
    assert inner.calls == 3


def test_attempts_are_bounded() -> None:
    inner = _Scripted([Unavailable(str(i)) for i in range(10)])
    sleeps: list[float] = []
    with pytest.raises(Unavailable, match="^2$"):
        RetryingBackend(inner, attempts=3, sleep=sleeps.append).get("k")
    assert inner.calls == 3
    assert len(sleeps) == 2


def test_backoff_is_full_jitter_capped_exponential() -> None:
    be = RetryingBackend(_Scripted([]), base_delay=1.0, max_delay=5.0, rng=random.Random(3))
    for failures, cap in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 5.0), (10, 5.0)]:
        delays = [be.backoff(failures) for _ in range(200)]
        assert all(0.0 <= d <= cap for d in delays)
        assert max(delays) > cap * 0.8  # spread over the whole window, not clustered at the cap
        assert min(delays) < cap * 0.2


def test_attempts_must_be_positive() -> None:
    with pytest.raises(ConfigurationError):
        RetryingBackend(_Scripted([]), attempts=0)


def test_put_if_absent_whose_reply_was_lost_succeeds(tmp_path: Path) -> None:
    faulty = FaultyBackend(LocalBackend(tmp_path / "r"), fail_rate=1.0, after_rate=1.0, operations={"put"})
    be = RetryingBackend(faulty, sleep=_no_sleep)
    be.put("k", b"payload", overwrite=False)  # stored by the first try; the retry sees AlreadyExists
    assert be.get("k") == b"payload"
    assert [f.kind for f in faulty.faults] == ["after", "after"]


@pytest.mark.parametrize(
    "mine", [b"mine, longer than theirs", b"someone else'S"], ids=["other size", "same size, other bytes"]
)
def test_put_if_absent_after_lost_reply_still_refuses_other_content(tmp_path: Path, mine: bytes) -> None:
    """After a temporary failure, AlreadyExists is success only if the stored object holds exactly
    our bytes: a different size is refused on the size, the same size is compared byte by byte."""
    local = LocalBackend(tmp_path / "r")
    local.put("k", b"someone else's")
    inner = _FailFirst(local)  # the first put fails (temporary), the retry meets AlreadyExists
    be = RetryingBackend(inner, sleep=_no_sleep)
    with pytest.raises(AlreadyExists):
        be.put("k", mine, overwrite=False)
    assert inner.calls == 2
    if len(mine) == len(b"someone else's"):
        assert inner.gets, "same size: the stored bytes must have been read and compared"
    assert local.get("k") == b"someone else's"


def test_put_if_absent_first_try_already_exists_is_not_compared(tmp_path: Path) -> None:
    local = LocalBackend(tmp_path / "r")
    local.put("k", b"same")
    with pytest.raises(AlreadyExists):
        RetryingBackend(local, sleep=_no_sleep).put("k", b"same", overwrite=False)


def test_put_stream_after_lost_reply_is_rewound_and_compared(tmp_path: Path) -> None:
    faulty = FaultyBackend(LocalBackend(tmp_path / "r"), fail_rate=1.0, after_rate=1.0, operations={"put"})
    be = RetryingBackend(faulty, sleep=_no_sleep)
    payload = os.urandom(100_000)
    stream = io.BytesIO(b"header" + payload)
    stream.seek(6)
    be.put("k", stream, overwrite=False)
    assert faulty.inner.get("k") == payload


def test_put_stream_is_rewound_before_retry(tmp_path: Path) -> None:
    inner = _FailFirst(LocalBackend(tmp_path / "r"), consume=True)
    payload = os.urandom(50_000)
    RetryingBackend(inner, sleep=_no_sleep).put("k", io.BytesIO(payload))
    assert inner.inner.get("k") == payload
    assert inner.calls == 2


class _Unseekable(io.RawIOBase):
    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        return self._data.readinto(buffer)


def test_unseekable_stream_gets_one_attempt(tmp_path: Path) -> None:
    inner = _FailFirst(LocalBackend(tmp_path / "r"), consume=True)
    with pytest.raises(Unavailable):
        RetryingBackend(inner, sleep=_no_sleep).put("k", _Unseekable(b"abc"))  # type: ignore[arg-type]
    assert inner.calls == 1


class _FailFirst(Backend):
    """Fails the first put (optionally after reading its stream), forwards everything else."""

    def __init__(self, inner: Backend, consume: bool = False) -> None:
        self.inner = inner
        self.consume = consume
        self.calls = 0
        self.gets = 0

    def put(self, key: str, data: bytes | memoryview | BinaryIO, *, overwrite: bool = True) -> None:
        self.calls += 1
        if self.calls == 1:
            if self.consume and not isinstance(data, (bytes, memoryview)):
                data.read(1000)
            raise Unavailable("first put fails")
        self.inner.put(key, data, overwrite=overwrite)

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        self.gets += 1
        return self.inner.get(key, offset, length)

    def stat(self, key: str) -> ObjectInfo:
        return self.inner.stat(key)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        return self.inner.list(prefix)

    def delete(self, key: str) -> None:
        self.inner.delete(key)


def test_delete_whose_reply_was_lost_succeeds(tmp_path: Path) -> None:
    faulty = FaultyBackend(LocalBackend(tmp_path / "r"), fail_rate=1.0, after_rate=1.0, operations={"delete"})
    faulty.inner.put("k", b"v")
    RetryingBackend(faulty, sleep=_no_sleep).delete("k")
    assert not faulty.inner.exists("k")


def test_delete_of_absent_key_is_not_found_even_with_faults(tmp_path: Path) -> None:
    faulty = FaultyBackend(LocalBackend(tmp_path / "r"), fail_rate=0.9, seed=1)
    with pytest.raises(NotFound):
        RetryingBackend(faulty, attempts=50, sleep=_no_sleep).delete("absent")


def test_list_restart_yields_each_key_once(tmp_path: Path) -> None:
    local = LocalBackend(tmp_path / "r")
    for i in range(40):
        local.put(f"p/{i:02d}", b"x")
    faulty = FaultyBackend(local, fail_rate=1.0, after_rate=1.0, operations={"list"})
    be = RetryingBackend(faulty, attempts=4, sleep=_no_sleep)
    with pytest.raises(Unavailable):
        list(be.list("p/"))  # every listing fails part way: bounded, then raised
    assert len(faulty.faults) == 4

    flaky = FaultyBackend(local, fail_rate=0.5, after_rate=1.0, seed=1, operations={"list"})
    keys = [i.key for i in RetryingBackend(flaky, attempts=20, sleep=_no_sleep).list("p/")]
    assert sorted(keys) == [f"p/{i:02d}" for i in range(40)]
    assert len(keys) == len(set(keys))
    assert flaky.faults, "the seed should inject at least one fault"


def test_faulty_is_deterministic_with_a_seed(tmp_path: Path) -> None:
    def run(seed: int) -> list[Fault]:
        faulty = FaultyBackend(
            LocalBackend(tmp_path / f"r{seed}-{random.random()}"), fail_rate=0.5, seed=seed
        )
        for i in range(30):
            try:
                faulty.put(f"k{i}", b"x")
            except Unavailable:
                pass
        return faulty.faults

    assert run(11) == run(11)
    assert run(11) != run(12)


def test_faulty_after_means_the_operation_happened(tmp_path: Path) -> None:
    faulty = FaultyBackend(LocalBackend(tmp_path / "r"), fail_rate=1.0, after_rate=1.0)
    with pytest.raises(Unavailable):
        faulty.put("k", b"v")
    assert faulty.inner.get("k") == b"v"
    before = FaultyBackend(LocalBackend(tmp_path / "s"), fail_rate=1.0, after_rate=0.0)
    with pytest.raises(Unavailable):
        before.put("k", b"v")
    assert not before.inner.exists("k")


def test_faulty_truncates_gets(tmp_path: Path) -> None:
    faulty = FaultyBackend(LocalBackend(tmp_path / "r"), fail_rate=0.0, truncate_rate=1.0)
    faulty.inner.put("k", b"0123456789")
    assert faulty.get("k") == b"01234"
    assert faulty.faults == [Fault("get", "k", "truncate")]


def test_faulty_rejects_bad_rates(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError):
        FaultyBackend(LocalBackend(tmp_path / "r"), fail_rate=1.5)
    with pytest.raises(ConfigurationError):
        FaultyBackend(LocalBackend(tmp_path / "r"), operations={"rename"})


def test_wrappers_describe_and_capabilities(tmp_path: Path) -> None:
    local = LocalBackend(tmp_path / "r")
    assert not local.capabilities.remote
    faulty = FaultyBackend(local)
    assert faulty.capabilities == Capabilities(remote=True, put_if_absent=local.capabilities.put_if_absent)
    be = RetryingBackend(faulty)
    assert be.describe() == f"faulty+{local.describe()}"
    assert be.capabilities == faulty.capabilities
    assert RetryingBackend(local).capabilities == local.capabilities


@pytest.mark.parametrize(
    ("number", "temporary"),
    [(errno.ENOSPC, False), (errno.EDQUOT, False), (errno.ENOTDIR, False), (errno.EIO, True)],
)
def test_local_errors_say_whether_a_retry_can_help(number: int, temporary: bool) -> None:
    """One class, Unavailable, and a per-error answer: a full disk stays full."""
    error = local_translate(OSError(number, os.strerror(number)), "k")
    assert isinstance(error, Unavailable) and error.temporary is temporary
    inner = _Scripted([error])
    inner.stored["k"] = b"v"
    be = RetryingBackend(inner, attempts=3, sleep=_no_sleep)
    if temporary:
        assert be.get("k") == b"v"
    else:
        with pytest.raises(Unavailable):
            be.get("k")
    assert inner.calls == (2 if temporary else 1)


def test_temporary_is_decided_per_error_without_changing_the_class() -> None:
    assert Unavailable("x").temporary and not Unavailable("x", temporary=False).temporary
    assert NotFound("x", temporary=True).temporary and not NotFound("x").temporary
    assert Unavailable.temporary
