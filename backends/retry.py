"""Retry wrapper: any backend, retried on temporary errors with capped exponential backoff.

Whether to retry is asked of the error alone (``exc.temporary``, decided per error: a full disk is
:class:`Unavailable` yet not temporary); permanent errors (not found, already exists, permission
denied, bad configuration, integrity) are raised at once. Each call
makes at most ``attempts`` tries, sleeping a "full jitter" delay between them: a uniform random
time in ``[0, min(max_delay, base_delay * 2**n))`` after the n-th failure, so many clients that
failed together do not come back together.

Retrying is safe because backend operations are idempotent, with two places that need care:

* ``put(..., overwrite=False)``: an attempt can succeed on the server while its reply is lost, and
  the retry then meets :class:`AlreadyExists` for the object it wrote itself. After a temporary
  failure, an :class:`AlreadyExists` is checked against the stored object; if it holds exactly the
  bytes being written, the put succeeded. (A concurrent writer of the same bytes is
  indistinguishable and counts as success too, which is what content addressing wants.)
* ``delete``: S3-like stores cannot say whether a retry's :class:`NotFound` means "our earlier
  attempt removed it" or "it was never there". :meth:`RetryingBackend.delete` therefore stats the
  key first (:class:`NotFound` at once if absent) and treats a :class:`NotFound` after a
  temporary failure as success.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from typing import BinaryIO, TypeVar

from backends.base import Backend, Capabilities, ObjectInfo
from backends.errors import AlreadyExists, CasError, ConfigurationError, NotFound

_log = logging.getLogger(__name__)

T = TypeVar("T")

_COMPARE_BLOCK = 8 << 20


class RetryingBackend(Backend):
    """Wrap ``inner`` so temporary failures are retried, at most ``attempts`` tries per call.

    ``sleep`` and ``rng`` are injectable so tests run instantly and deterministically. A file
    object given to ``put`` is rewound to where it was before each retry; a stream that cannot
    seek gets a single attempt (there is nothing honest to resend).
    """

    def __init__(
        self,
        inner: Backend,
        attempts: int = 5,
        base_delay: float = 0.1,
        max_delay: float = 10.0,
        sleep: Callable[[float], object] = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        if attempts < 1:
            raise ConfigurationError(f"retry attempts must be at least 1, got {attempts}")
        if base_delay < 0 or max_delay < 0:
            raise ConfigurationError("retry delays must not be negative")
        self.inner = inner
        self.capabilities: Capabilities = inner.capabilities
        self.attempts = attempts
        self.base_delay = base_delay
        self.max_delay = max_delay
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._rng_lock = threading.Lock()

    def describe(self) -> str:
        return self.inner.describe()

    def close(self) -> None:
        self.inner.close()

    # -- the retry loop ----------------------------------------------------------------------

    def backoff(self, failures: int) -> float:
        """Delay before the next try after ``failures`` consecutive failures (full jitter)."""
        cap = min(self.max_delay, self.base_delay * (2 ** (failures - 1)))
        with self._rng_lock:
            return self._rng.uniform(0, cap)

    def _pause(self, failures: int, what: str, exc: BaseException) -> None:
        delay = self.backoff(failures)
        _log.info(
            "%s on %s failed (%s), try %d of %d, retrying in %.2fs",
            what,
            self.inner.describe(),
            exc,
            failures,
            self.attempts,
            delay,
        )
        self._sleep(delay)

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        failures = 0
        while True:
            try:
                return fn()
            except CasError as exc:
                failures = self._failed(failures, what, exc)

    def _failed(self, failures: int, what: str, exc: CasError) -> int:
        """One more failure of ``what``: re-raise ``exc`` if it is permanent or attempts are used
        up, otherwise wait the backoff. Returns the new failure count."""
        failures += 1
        if not getattr(exc, "temporary", False) or failures >= self.attempts:
            raise exc
        self._pause(failures, what, exc)
        return failures

    # -- Backend -----------------------------------------------------------------------------

    def put(self, key: str, data: bytes | memoryview | BinaryIO, *, overwrite: bool = True) -> None:
        """Store ``data``, retrying temporary failures; see the module docstring for
        ``overwrite=False`` after a lost reply."""
        stream: BinaryIO | None = None
        start = 0
        if not isinstance(data, (bytes, bytearray, memoryview)):
            stream = data
            if not _seekable(stream):
                self.inner.put(key, stream, overwrite=overwrite)
                return
            start = stream.tell()
        failures = 0
        while True:
            if stream is not None:
                stream.seek(start)
            try:
                self.inner.put(key, data, overwrite=overwrite)
                return
            except AlreadyExists:
                if failures and not overwrite and self._holds(key, data, start):
                    _log.info("put of %s arrived before its reply was lost; treating as success", key)
                    return
                raise
            except CasError as exc:
                failures = self._failed(failures, f"put {key}", exc)

    def _holds(self, key: str, data: bytes | memoryview | BinaryIO, start: int) -> bool:
        """Whether ``key`` stores exactly ``data`` (compared block by block, sizes first)."""
        if isinstance(data, (bytes, bytearray, memoryview)):
            view = memoryview(data).cast("B")
            if self.stat(key).size != len(view):
                return False
            return all(
                self.get(key, pos, _COMPARE_BLOCK) == view[pos : pos + _COMPARE_BLOCK]
                for pos in range(0, len(view), _COMPARE_BLOCK)
            )
        stored = self.stat(key).size
        data.seek(start)
        pos = 0
        while True:
            block = data.read(_COMPARE_BLOCK)
            if not block:
                return pos == stored
            if pos + len(block) > stored or self.get(key, pos, len(block)) != block:
                return False
            pos += len(block)

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        return self._call(f"get {key}", lambda: self.inner.get(key, offset, length))

    def stat(self, key: str) -> ObjectInfo:
        return self._call(f"stat {key}", lambda: self.inner.stat(key))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every object under ``prefix`` once, even if the listing restarts after a failure.

        A failure part way restarts the listing from the beginning and skips keys already
        yielded, so memory grows with the number of keys listed. ``attempts`` bounds the
        failures over the whole listing.
        """
        seen: set[str] = set()
        failures = 0
        while True:
            try:
                for info in self.inner.list(prefix):
                    if info.key not in seen:
                        seen.add(info.key)
                        yield info
                return
            except CasError as exc:
                failures = self._failed(failures, f"list {prefix!r}", exc)

    def delete(self, key: str) -> None:
        """Remove ``key``: :class:`NotFound` if it is absent when the call starts.

        A :class:`NotFound` after a temporary failure counts as success: the key existed a moment
        ago and is gone now, most likely removed by the attempt whose reply was lost.
        """
        self.stat(key)
        failures = 0
        while True:
            try:
                self.inner.delete(key)
                return
            except NotFound:
                if failures:
                    return
                raise
            except CasError as exc:
                failures = self._failed(failures, f"delete {key}", exc)


def _seekable(stream: BinaryIO) -> bool:
    try:
        return bool(stream.seekable())
    except (AttributeError, ValueError, OSError):
        return False


__all__ = ["RetryingBackend"]
