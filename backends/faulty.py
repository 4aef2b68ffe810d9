"""Fault-injecting wrapper, for tests: makes any backend fail the way networks do.

A fraction ``fail_rate`` of calls raise :class:`Unavailable`. Of those, a fraction ``after_rate``
fail *after* the call was forwarded: the operation took effect but the caller sees a failure, as
when a reply is lost. That is the case that makes idempotency and retry logic matter. With
``truncate_rate``, some successful ``get`` calls return a prefix of the data instead of all of
it, as a broken proxy might; the layer above must notice (hash checks), the retry wrapper does
not.

Each call's fate is drawn from the seed, the operation, the key and how many times that operation
was called on that key before: the same calls meet the same faults on every run, in whatever order
a command's threads make them (a sequence drawn in call order made a test of a threaded snapshot
see no failed ``put`` on one run in many). Faults are recorded in :attr:`FaultyBackend.faults`.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import BinaryIO, Literal, TypeVar

from backends.base import Backend, Capabilities, ObjectInfo
from backends.errors import ConfigurationError, Unavailable

T = TypeVar("T")

ALL_OPERATIONS: frozenset[str] = frozenset({"put", "get", "stat", "list", "delete"})


@dataclass(frozen=True)
class Fault:
    """One injected fault: which call, on which key or prefix, and what happened."""

    operation: str
    key: str
    kind: Literal["before", "after", "truncate"]


class FaultyBackend(Backend):
    """Wrap ``inner``, failing a seeded random fraction of calls.

    ``operations`` limits which methods may fail (all five by default). ``list`` failing
    "after" yields part of the listing and then raises, as a connection dropped between pages
    would. ``exists`` goes through ``stat`` and so fails too. Whatever it wraps, it is
    :attr:`Capabilities.remote`: it fails the way a network does.
    """

    def __init__(
        self,
        inner: Backend,
        fail_rate: float = 0.2,
        seed: int | None = 0,
        truncate_rate: float = 0.0,
        after_rate: float = 0.5,
        operations: frozenset[str] | set[str] = ALL_OPERATIONS,
    ) -> None:
        for name, rate in (
            ("fail_rate", fail_rate),
            ("truncate_rate", truncate_rate),
            ("after_rate", after_rate),
        ):
            if not 0.0 <= rate <= 1.0:
                raise ConfigurationError(f"{name} must be between 0 and 1, got {rate}")
        unknown = set(operations) - ALL_OPERATIONS
        if unknown:
            raise ConfigurationError(f"unknown operations {sorted(unknown)}; known: {sorted(ALL_OPERATIONS)}")
        self.inner = inner
        self.capabilities: Capabilities = replace(inner.capabilities, remote=True)
        self.fail_rate = fail_rate
        self.truncate_rate = truncate_rate
        self.after_rate = after_rate
        self.operations = frozenset(operations)
        self.faults: list[Fault] = []
        self.calls = 0
        self._seed = seed if seed is not None else random.getrandbits(64)
        self._made: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()

    def describe(self) -> str:
        return f"faulty+{self.inner.describe()}"

    def close(self) -> None:
        self.inner.close()

    def _draw(self, operation: str, key: str) -> Literal["before", "after"] | None:
        """Decide this call's fault (or none), recording it."""
        with self._lock:
            self.calls += 1
            made = self._made[operation, key] = self._made.get((operation, key), 0) + 1
            rng = random.Random(f"{self._seed}/{operation}/{made}/{key}")
            if operation not in self.operations or rng.random() >= self.fail_rate:
                return None
            kind: Literal["before", "after"] = "after" if rng.random() < self.after_rate else "before"
            self.faults.append(Fault(operation, key, kind))
            return kind

    def _truncates(self, key: str) -> bool:
        """Whether this ``get`` of ``key`` (drawn after its fault) returns a prefix, recording it."""
        with self._lock:
            made = self._made.get(("get", key), 0)
            if random.Random(f"{self._seed}/truncate/{made}/{key}").random() >= self.truncate_rate:
                return False
            self.faults.append(Fault("get", key, "truncate"))
            return True

    def _fail(self, operation: str, key: str, kind: str) -> Unavailable:
        return Unavailable(f"injected fault {kind} {operation} {key!r} on {self.inner.describe()}")

    def _forward(self, operation: str, key: str, fn: Callable[[], T]) -> T:
        kind = self._draw(operation, key)
        if kind == "before":
            raise self._fail(operation, key, kind)
        result = fn()
        if kind == "after":
            raise self._fail(operation, key, kind)
        return result

    def put(self, key: str, data: bytes | memoryview | BinaryIO, *, overwrite: bool = True) -> None:
        self._forward("put", key, lambda: self.inner.put(key, data, overwrite=overwrite))

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        data = self._forward("get", key, lambda: self.inner.get(key, offset, length))
        if self.truncate_rate and data and self._truncates(key):
            return data[: len(data) // 2]
        return data

    def stat(self, key: str) -> ObjectInfo:
        return self._forward("stat", key, lambda: self.inner.stat(key))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        kind = self._draw("list", prefix)
        if kind == "before":
            raise self._fail("list", prefix, kind)
        items = self.inner.list(prefix)
        if kind is None:
            yield from items
            return
        listed = list(items)
        yield from listed[: len(listed) // 2]
        raise self._fail("list", prefix, kind)

    def delete(self, key: str) -> None:
        self._forward("delete", key, lambda: self.inner.delete(key))


__all__ = ["ALL_OPERATIONS", "Fault", "FaultyBackend"]
