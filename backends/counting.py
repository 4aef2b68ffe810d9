"""Counting wrapper: what a layer above asked of a backend, for tests and benchmarks.

``CountingBackend(inner)`` forwards every call and records each ``get`` as ``(key, offset,
length)`` in :attr:`gets` (the length it returned), and counts every operation in :attr:`calls`.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from typing import BinaryIO

from backends.base import Backend, ObjectInfo


class CountingBackend(Backend):
    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.capabilities = inner.capabilities
        self.calls: Counter[str] = Counter()
        self.gets: list[tuple[str, int, int]] = []
        self._lock = threading.Lock()

    def reset(self) -> None:
        with self._lock:
            self.calls.clear()
            self.gets.clear()

    def _count(self, operation: str) -> None:
        with self._lock:
            self.calls[operation] += 1

    def put(self, key: str, data: bytes | memoryview | BinaryIO, *, overwrite: bool = True) -> None:
        self._count("put")
        self.inner.put(key, data, overwrite=overwrite)

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        self._count("get")
        data = self.inner.get(key, offset, length)
        with self._lock:
            self.gets.append((key, offset, len(data)))
        return data

    def stat(self, key: str) -> ObjectInfo:
        self._count("stat")
        return self.inner.stat(key)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        self._count("list")
        return self.inner.list(prefix)

    def delete(self, key: str) -> None:
        self._count("delete")
        self.inner.delete(key)

    def exists(self, key: str) -> bool:
        self._count("stat")
        return self.inner.exists(key)

    def close(self) -> None:
        self.inner.close()

    def describe(self) -> str:
        return self.inner.describe()
