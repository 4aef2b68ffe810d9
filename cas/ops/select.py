"""Which snapshots a listing or a forget is about: labels that must all match, a time window, a limit.

    Selection(labels={"workflow": "train"}, since=dt.timedelta(days=30), limit=10)

The filters go into the index query (``manifests.snapshots``), labels included: the index keeps them
in a JSON column and looks each key up there, so ``limit`` counts matching snapshots only.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from cas.errors import ConfigurationError
from cas.format.records import check_labels
from manifests.rows import SnapshotRow

if TYPE_CHECKING:
    from manifests.index import Index

When = dt.datetime | dt.timedelta
"""A point in time: an aware datetime, a naive one (taken as UTC), or a timedelta meaning that long ago."""

_NS_MIN, _NS_MAX = -(2**63), 2**63 - 1  # the index's BIGINT; dates beyond it (after 2262) are clamped
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


@dataclass(frozen=True)
class Selection:
    """Snapshots carrying every one of ``labels``, taken at ``since`` or later and before ``until``
    (a half-open window, so ``since=day1, until=day2`` is exactly day 1), newest first, at most
    ``limit`` of them. ``None`` (or no labels) for a filter that is not set."""

    labels: Mapping[str, str] = field(default_factory=dict)
    since: When | None = None
    until: When | None = None
    limit: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "labels", check_labels(dict(self.labels)))
        for name in ("since", "until"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, (dt.datetime, dt.timedelta)):
                raise ConfigurationError(f"{name} must be a datetime or a timedelta (that long ago), not {value!r}")
        if self.limit is not None and (isinstance(self.limit, bool) or not isinstance(self.limit, int)
                                       or self.limit < 0):
            raise ConfigurationError(f"limit must be 0 or more, not {self.limit!r}")

    @property
    def filters(self) -> bool:
        """Whether labels or a time bound narrow the selection (``limit`` aside)."""
        return bool(self.labels) or self.since is not None or self.until is not None

    def rows(self, index: Index, now_ns: int | None = None) -> list[SnapshotRow]:
        now = time.time_ns() if now_ns is None else now_ns
        return index.snapshots(
            labels=self.labels, since_ns=_to_ns(self.since, now), until_ns=_to_ns(self.until, now), limit=self.limit,
        )

    def admits(self, labels: Mapping[str, str], time_ns: int, now_ns: int | None = None) -> bool:
        """Whether a snapshot with these labels, taken at ``time_ns``, passes the filters (``limit``
        aside): for snapshots known from their records, outside the index's query."""
        now = time.time_ns() if now_ns is None else now_ns
        since, until = _to_ns(self.since, now), _to_ns(self.until, now)
        return (all(labels.get(k) == v for k, v in self.labels.items())
                and (since is None or time_ns >= since) and (until is None or time_ns < until))


def _to_ns(when: When | None, now_ns: int) -> int | None:
    if when is None:
        return None
    if isinstance(when, dt.timedelta):
        ns = now_ns - when // dt.timedelta(microseconds=1) * 1000
    else:
        aware = when if when.tzinfo is not None else when.replace(tzinfo=dt.timezone.utc)
        ns = (aware - _EPOCH) // dt.timedelta(microseconds=1) * 1000
    return min(max(ns, _NS_MIN), _NS_MAX)

