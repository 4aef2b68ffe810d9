"""Values of command-line options: durations, points in time, labels, limits and sizes.

Each parser raises :class:`ConfigurationError` with a one-line message; the ``*_option`` functions
are argparse ``type=`` adapters that turn it into a usage error (exit 2) naming the option.
"""

from __future__ import annotations

import argparse
import datetime as dt
import re

from cas.errors import ConfigurationError
from cas.format.records import check_labels
from cas.repo.chunkcache import parse_size

#: The longest duration --grace and --keep-within accept: far beyond any sensible value, and small
#: enough that "now minus it" stays a valid date and a nanosecond count.
MAX_DURATION = dt.timedelta(days=36500)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> dt.timedelta:
    """``30d``, ``12h``, ``90m``, ``45s``, ``2w`` or plain seconds; 0 up to :data:`MAX_DURATION`."""
    text = text.strip()
    number, unit = (text[:-1], _UNITS[text[-1]]) if text and text[-1] in _UNITS else (text, 1)
    try:
        seconds = float(number) * unit
    except ValueError:
        raise ConfigurationError(f"invalid duration {text!r}: use a number with s, m, h, d or w, e.g. 30d") from None
    if not 0 <= seconds <= MAX_DURATION.total_seconds():  # also refuses nan and inf
        raise ConfigurationError(
            f"duration {text!r} is out of range: use 0 up to {MAX_DURATION.days}d (100 years)"
        )
    return dt.timedelta(seconds=seconds)


def duration_option(text: str) -> dt.timedelta:
    """argparse ``type`` for durations: a bad one is a usage error naming the option (exit 2)."""
    try:
        return parse_duration(text)
    except ConfigurationError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


class LabelAction(argparse.Action):
    """Repeated ``KEY=VALUE`` options into one dict; a malformed one, or one key given two values,
    is a usage error (exit 2)."""

    def __call__(self, parser, namespace, values, option_string=None):  # type: ignore[no-untyped-def]
        labels = dict(getattr(namespace, self.dest) or {})
        try:
            key, value = parse_label(str(values))
        except ConfigurationError as exc:
            parser.error(f"argument {option_string}: {exc}")
        if labels.get(key, value) != value:
            parser.error(f"argument {option_string}: label {key!r} given twice with different values")
        labels[key] = value
        setattr(namespace, self.dest, labels)


def parse_label(item: str) -> tuple[str, str]:
    """One ``KEY=VALUE``, the name and value checked as a snapshot's labels are."""
    if "=" not in item:
        raise ConfigurationError(f"label {item!r} must be KEY=VALUE")
    key, value = item.split("=", 1)
    check_labels({key: value})
    return key, value


_RELATIVE = re.compile(r"\d+(\.\d*)?[smhdw]")


def parse_when(text: str) -> dt.datetime | dt.timedelta:
    """``--since``/``--until``: an ISO date or date and time (UTC unless it carries an offset or
    ``Z``), or a duration with its unit (``30d``, ``12h``: that long before now, as :func:`parse_duration`)."""
    text = text.strip()
    if _RELATIVE.fullmatch(text):
        return parse_duration(text)
    try:
        when = dt.datetime.fromisoformat(text[:-1] + "+00:00" if text[-1:] in ("z", "Z") else text)
    except ValueError:
        raise ConfigurationError(
            f"invalid time {text!r}: use an ISO date or time such as 2026-11-25 or 2026-11-25T10:00 "
            "(UTC unless an offset is given), or a duration ago such as 30d or 12h"
        ) from None
    return when if when.tzinfo is not None else when.replace(tzinfo=dt.timezone.utc)


def when_option(text: str) -> dt.datetime | dt.timedelta:
    try:
        return parse_when(text)
    except ConfigurationError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def limit_option(text: str) -> int:
    try:
        limit = int(text)
    except ValueError:
        limit = -1
    if limit < 0:
        raise argparse.ArgumentTypeError(f"invalid limit {text!r}: use a whole number, 0 or more")
    return limit


def parse_labels(items: list[str]) -> dict[str, str]:
    """``KEY=VALUE`` items (``snapshot --label``) into a dict; each checked as :func:`parse_label` does."""
    return dict(parse_label(item) for item in items)


def size_option(text: str) -> int:
    """argparse ``type`` for sizes (``10GiB``, ``500MB``, ``2G``, bytes): a bad one is a usage error."""
    try:
        return parse_size(text)
    except ConfigurationError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
