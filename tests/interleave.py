"""Pausing real Stores at exact points, to run interleavings deterministically.

Nothing here replaces code under test: :class:`GatedBackend` forwards every call to a real
backend and :class:`GatedIndex` is the real :class:`manifests.index.Index` with gates around a few
of its methods and statements. A :class:`Gate` stops the first thread that reaches it until the
test opens it; timeouts are deadlock guards only (a test that hits one has failed).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

from sqlalchemy import event

from backends.base import Backend, ObjectInfo
from manifests.index import Index

DEADLOCK_GUARD = 60.0


class Gate:
    """A one-shot stop: the first thread to :meth:`reach` it waits until :meth:`open`."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.arrived = threading.Event()
        self._open = threading.Event()
        self._taken = False
        self._lock = threading.Lock()

    def reach(self) -> None:
        with self._lock:
            if self._taken:
                return
            self._taken = True
        self.arrived.set()
        if not self._open.wait(DEADLOCK_GUARD):
            raise TimeoutError(f"gate {self.name} was never opened")

    def wait_arrival(self) -> None:
        if not self.arrived.wait(DEADLOCK_GUARD):
            raise TimeoutError(f"nothing reached gate {self.name}")

    def open(self) -> None:
        self._open.set()


class Worker(threading.Thread):
    """Runs ``fn`` in a thread, keeping its result or exception for :meth:`outcome`."""

    def __init__(self, name: str, fn: Callable[[], Any]) -> None:
        super().__init__(name=name, daemon=True)
        self.fn = fn
        self.result: Any = None
        self.error: BaseException | None = None
        self.done = threading.Event()
        self.start()

    def run(self) -> None:
        try:
            self.result = self.fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            self.error = exc
        finally:
            self.done.set()

    def outcome(self) -> Any:
        self.join(DEADLOCK_GUARD)
        if self.is_alive():
            raise TimeoutError(f"{self.name} did not finish")
        if self.error is not None:
            raise self.error
        return self.result


def wait_until(condition: Callable[[], bool], what: str) -> None:
    """Poll ``condition`` until it holds (the guard only turns a hang into a failure)."""
    done = threading.Event()
    for _ in range(int(DEADLOCK_GUARD / 0.01)):
        if condition():
            return
        done.wait(0.01)
    raise TimeoutError(f"never happened: {what}")


class GatedBackend(Backend):
    """Forwards to ``inner``; :meth:`gate` stops the first put of a key with a given prefix."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.capabilities = inner.capabilities
        self._gates: dict[tuple[str, str], Gate] = {}
        self.on_put: Callable[[str, str], None] | None = None
        """Called with ``("before"|"after", key)`` around every put (e.g. to fail or die there)."""

    def gate(self, prefix: str, when: str = "before") -> Gate:
        gate = self._gates[(prefix, when)] = Gate(f"{when} put {prefix}")
        return gate

    def _at(self, key: str, when: str) -> None:
        if self.on_put is not None:
            self.on_put(when, key)
        for (prefix, at), gate in list(self._gates.items()):
            if at == when and key.startswith(prefix):
                gate.reach()

    def describe(self) -> str:
        return self.inner.describe()

    def close(self) -> None:
        self.inner.close()

    def put(self, key: str, data: bytes | memoryview | BinaryIO, *, overwrite: bool = True) -> None:
        self._at(key, "before")
        self.inner.put(key, data, overwrite=overwrite)
        self._at(key, "after")

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        return self.inner.get(key, offset, length)

    def stat(self, key: str) -> ObjectInfo:
        return self.inner.stat(key)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        return self.inner.list(prefix)

    def delete(self, key: str) -> None:
        self.inner.delete(key)


class GatedIndex(Index):
    """The real index, with optional gates:

    * ``"gc_apply"``: before a GC run's verdict transaction begins;
    * ``"commit:after_lookup"``: inside a snapshot commit's fenced transaction, after its blob rows
      were read and before its next statement (the rescue, then the snapshot insert).

    It also notes when a ``gc_apply`` sends its fence update (:attr:`gc_fence_sent`) and when
    ``gc_apply`` returns and ``commit_snapshot``'s transaction commits (:attr:`events`, in order,
    shared if passed in).
    """

    def __init__(self, engine: Any, url: str) -> None:
        super().__init__(engine, url)
        self.gates: dict[str, Gate] = {}
        self.events: list[str] = []
        self.gc_fence_sent = threading.Event()
        self._in_commit: int | None = None
        self._in_gc_apply: int | None = None
        self._looked_up = False
        event.listen(engine, "before_cursor_execute", self._before_statement)
        event.listen(engine, "after_cursor_execute", self._after_statement)
        event.listen(engine, "commit", self._committing)
        self._committing_id: str | None = None

    def gate(self, name: str) -> Gate:
        gate = self.gates[name] = Gate(name)
        return gate

    def _reach(self, name: str) -> None:
        gate = self.gates.get(name)
        if gate is not None:
            gate.reach()

    def _before_statement(self, conn, cursor, statement: str, params, context, many) -> None:  # type: ignore[no-untyped-def]
        me = threading.get_ident()
        text = " ".join(statement.split()).lower()
        if self._in_gc_apply == me and text.startswith("update fence"):
            self.gc_fence_sent.set()
        if self._in_commit == me and self._looked_up and " from blobs " not in f" {text} ":
            self._looked_up = False
            self._reach("commit:after_lookup")

    def _after_statement(self, conn, cursor, statement: str, params, context, many) -> None:  # type: ignore[no-untyped-def]
        if self._in_commit == threading.get_ident() and " from blobs " in " " + " ".join(statement.split()).lower() + " ":
            self._looked_up = True

    def _committing(self, conn) -> None:  # type: ignore[no-untyped-def]
        """The commit's event, noted as its transaction commits (still holding the fence): after
        the call returned, a GC whose verdicts waited for it could be noted first."""
        if self._in_commit == threading.get_ident() and self._committing_id is not None:
            self.events.append(f"commit {self._committing_id}")
            self._committing_id = None

    def commit_snapshot(self, row, blob_ids, **kw):  # type: ignore[no-untyped-def,override]
        self._in_commit = threading.get_ident()
        self._looked_up = False
        self._committing_id = row.execution_id
        try:
            return super().commit_snapshot(row, blob_ids, **kw)
        finally:
            self._in_commit = None
            self._committing_id = None

    def gc_apply(self, epoch, **verdicts):  # type: ignore[no-untyped-def,override]
        self._reach("gc_apply")
        self._in_gc_apply = threading.get_ident()
        try:
            decision = super().gc_apply(epoch, **verdicts)
        finally:
            self._in_gc_apply = None
        self.events.append(f"gc_apply epoch {epoch}")
        return decision
