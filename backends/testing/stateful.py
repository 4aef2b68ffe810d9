"""A Hypothesis state machine that drives a backend and a dict side by side (after zarr's
``testing/stateful.py``): every put, get, stat, list and delete must answer as the dict does.

Keys are drawn from a small fixed-depth set (``x/1`` .. ``z/3``), so steps collide often
(overwrites, put-if-absent refusals, deletes of what is there) and no key is ever a prefix
directory of another, which a filesystem could not store. Run it with
:func:`check_against_model`, giving a factory that returns a fresh, empty backend per run.
"""

from __future__ import annotations

import io
from collections.abc import Callable

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, rule, run_state_machine_as_test

from backends.base import Backend
from backends.errors import AlreadyExists, NotFound

KEYS = st.builds(lambda d, n: f"{d}/{n}", st.sampled_from("xyz"), st.sampled_from("123"))
PREFIXES = st.sampled_from(["", "x", "x/", "y/2", "z/", "w/", "x/12"])
PAYLOADS = st.binary(max_size=300)
#: How the payload is handed to ``put``: as bytes, as a memoryview, or as a binary file.
FORMS = st.sampled_from(["bytes", "memoryview", "stream"])


def _expected_range(data: bytes, offset: int, length: int | None) -> bytes:
    """What ``Backend.get`` promises: a negative offset counts from the end, past the end is empty."""
    start = max(0, len(data) + offset) if offset < 0 else offset
    return data[start:] if length is None else data[start : start + length]


class BackendMachine(RuleBasedStateMachine):
    """The backend under test and ``model`` (key -> bytes) must agree after every step."""

    #: Set by :func:`check_against_model` before Hypothesis builds machines.
    new_backend: Callable[[], Backend]
    #: True for a backend behind :class:`backends.retry.RetryingBackend` (see :meth:`put`).
    lost_reply_success: bool = False

    def __init__(self) -> None:
        super().__init__()
        self.backend = type(self).new_backend()
        self.model: dict[str, bytes] = {}

    def teardown(self) -> None:
        self.backend.close()

    @rule(key=KEYS, data=PAYLOADS, form=FORMS, overwrite=st.booleans())
    def put(self, key: str, data: bytes, form: str, overwrite: bool) -> None:
        payload: bytes | memoryview | io.BytesIO = (
            data if form == "bytes" else memoryview(data) if form == "memoryview" else io.BytesIO(data)
        )
        if not overwrite and key in self.model:
            try:
                self.backend.put(key, payload, overwrite=False)
            except AlreadyExists:
                return
            # A retrying backend whose first attempt failed cannot tell "my lost attempt stored it"
            # from "it was there already"; it answers success only when the stored bytes are ours.
            if self.lost_reply_success and self.model[key] == data:
                return
            raise AssertionError(f"put-if-absent of existing {key} did not raise AlreadyExists")
        self.backend.put(key, payload, overwrite=overwrite)
        self.model[key] = data

    @rule(key=KEYS, offset=st.integers(-400, 400), length=st.none() | st.integers(0, 400))
    def get(self, key: str, offset: int, length: int | None) -> None:
        if key not in self.model:
            try:
                self.backend.get(key, offset, length)
            except NotFound:
                return
            raise AssertionError(f"get of absent {key} did not raise NotFound")
        assert self.backend.get(key, offset, length) == _expected_range(self.model[key], offset, length)

    @rule(key=KEYS)
    def stat(self, key: str) -> None:
        if key not in self.model:
            assert not self.backend.exists(key)
            return
        info = self.backend.stat(key)
        assert (info.key, info.size) == (key, len(self.model[key]))

    @rule(key=KEYS)
    def delete(self, key: str) -> None:
        if key not in self.model:
            try:
                self.backend.delete(key)
            except NotFound:
                return
            raise AssertionError(f"delete of absent {key} did not raise NotFound")
        self.backend.delete(key)
        del self.model[key]

    @rule(prefix=PREFIXES)
    def list(self, prefix: str) -> None:
        listed = [(i.key, i.size) for i in self.backend.list(prefix)]
        assert len(listed) == len(set(listed)), f"list({prefix!r}) repeated a key: {listed}"
        expected = {(k, len(v)) for k, v in self.model.items() if k.startswith(prefix)}
        assert set(listed) == expected


def check_against_model(
    new_backend: Callable[[], Backend], *, max_examples: int = 20, steps: int = 25,
    lost_reply_success: bool = False,
) -> None:
    """Run :class:`BackendMachine` on backends from ``new_backend`` (a fresh, empty one per run).

    ``lost_reply_success``: the backend retries, so a put-if-absent of a key that holds the same
    bytes may succeed (:meth:`BackendMachine.put`). No deadline: a remote backend's latency is not
    what is under test.
    """
    machine = type("BackendMachineRun", (BackendMachine,), {
        "new_backend": staticmethod(new_backend), "lost_reply_success": lost_reply_success,
    })
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=max_examples,
            stateful_step_count=steps,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )


__all__ = ["BackendMachine", "check_against_model"]
