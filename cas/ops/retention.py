"""Retention: which snapshots a ``forget --keep-last N --keep-within D`` policy drops."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from cas.errors import ConfigurationError


class Dated(Protocol):
    execution_id: str
    time_ns: int


@dataclass(frozen=True)
class KeepPolicy:
    """Keep the newest ``last`` snapshots and every snapshot newer than ``within``; ``None`` for a
    rule that is not set. A snapshot either rule keeps is kept."""

    last: int | None = None
    within: dt.timedelta | None = None

    def __post_init__(self) -> None:
        if self.last is not None and self.last < 0:
            raise ConfigurationError("--keep-last must be 0 or more")

    def to_forget(self, newest_first: Sequence[Dated], now_ns: int | None = None) -> list[str]:
        """Execution IDs the policy drops, newest first."""
        keep: set[str] = set()
        if self.last is not None:
            keep.update(s.execution_id for s in newest_first[: self.last])
        if self.within is not None:
            cutoff = (time.time_ns() if now_ns is None else now_ns) - int(self.within.total_seconds() * 1e9)
            keep.update(s.execution_id for s in newest_first if s.time_ns >= cutoff)
        return [s.execution_id for s in newest_first if s.execution_id not in keep]
