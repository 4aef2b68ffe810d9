"""Retention: which snapshots a ``forget --keep-last N --keep-within D --keep-label K=V`` policy drops."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from cas.errors import ConfigurationError
from cas.format.records import check_labels


class Dated(Protocol):
    execution_id: str
    time_ns: int
    labels: Mapping[str, str]


@dataclass(frozen=True)
class KeepPolicy:
    """Keep the newest ``last`` snapshots, every snapshot newer than ``within``, and every snapshot
    carrying any one of ``labels`` (each a key and its value); ``None`` (or no labels) for a rule
    that is not set. A snapshot any rule keeps is kept. The rules judge the snapshots they are given
    (``forget --label ...`` gives the matching ones), so ``last`` counts among those."""

    last: int | None = None
    within: dt.timedelta | None = None
    labels: Sequence[tuple[str, str]] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.last is not None and self.last < 0:
            raise ConfigurationError("--keep-last must be 0 or more")
        object.__setattr__(self, "labels", tuple((k, v) for k, v in self.labels))
        for key, value in self.labels:
            check_labels({key: value})

    def protects(self, snapshot: Dated) -> bool:
        """Whether a snapshot carries a label this policy keeps, whatever else selects it."""
        return any(snapshot.labels.get(k) == v for k, v in self.labels)

    def to_forget(self, newest_first: Sequence[Dated], now_ns: int | None = None) -> list[str]:
        """Execution IDs the policy drops, newest first."""
        keep: set[str] = set()
        if self.last is not None:
            keep.update(s.execution_id for s in newest_first[: self.last])
        if self.within is not None:
            cutoff = (time.time_ns() if now_ns is None else now_ns) - int(self.within.total_seconds() * 1e9)
            keep.update(s.execution_id for s in newest_first if s.time_ns >= cutoff)
        keep.update(s.execution_id for s in newest_first if self.protects(s))
        return [s.execution_id for s in newest_first if s.execution_id not in keep]
