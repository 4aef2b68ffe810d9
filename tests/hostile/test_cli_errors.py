"""What a user meets when the input, the index or the environment is bad: one clear line, never a
traceback, an "internal error", a secret, or raw control characters from stored data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.hostile.test_inputs import Cas, cas, project  # noqa: F401 - fixtures

# -- durations ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (("gc", "--grace", "99999999999999999d"), "--grace"),
        (("gc", "--grace=-1h"), "--grace"),
        (("gc", "--grace", "inf"), "--grace"),
        (("gc", "--grace", "nan"), "--grace"),
        (("forget", "--keep-within", "99999999999999d"), "--keep-within"),
        (("forget", "--keep-within", "1e400s"), "--keep-within"),
    ],
)
def test_out_of_range_durations_are_usage_errors(cas: Cas, args: tuple[str, ...], option: str) -> None:
    proc = cas(*args)
    assert proc.returncode == 2, proc.stderr
    line = cas.fails(*args)
    assert option in line and "36500d" in line, line


def test_largest_duration_is_accepted(cas: Cas, project: Path) -> None:
    cas.ok("snapshot", str(project), "-e", "run-1")
    assert json.loads(cas.ok("--json", "gc", "--dry-run", "--grace", "36500d"))["deleted"] == []
    assert json.loads(cas.ok("--json", "forget", "--dry-run", "--keep-within", "36500d")) == {"would_forget": []}
