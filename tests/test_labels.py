"""Labels and times that filter (issue 15): ``cas log``/``cas forget`` and ``Store.list`` select
snapshots by labels (all must match), a time window and a limit, on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from cas import Store
from cas.errors import ConfigurationError
from tests.inprocess import cas
from tests.servers.postgres import postgres_admin, postgres_url  # noqa: F401

# Label keys with the characters a JSON path treats specially where the index looks them up.
WORKFLOW = "aiflow.io/workflow"


@pytest.fixture(params=["sqlite", "postgresql"])
def index_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'index.sqlite'}"
    return str(request.getfixturevalue("postgres_url"))


def _at(time_ns: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(time_ns // 1000 / 1e6, dt.timezone.utc).replace(
        microsecond=time_ns // 1000 % 1_000_000)


def _take(store: Store, tmp_path: Path) -> list[int]:
    """Four snapshots, oldest first; returns their times."""
    labels = [
        {WORKFLOW: "train", "team": "a"},
        {WORKFLOW: "eval", "team": "a"},
        {WORKFLOW: "train", "team": "b", "keep": "yes"},
        {WORKFLOW: "train", "team": "b"},
    ]
    times = []
    for i, lab in enumerate(labels):
        src = tmp_path / f"p{i}"
        src.mkdir()
        (src / "f").write_text(f"content {i}\n")
        times.append(store.snapshot(src, f"run-{i}", labels=lab).time_ns)
    assert times == sorted(times) and len(set(times)) == 4
    return times


@pytest.fixture
def store(tmp_path: Path, index_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Store]:
    monkeypatch.setenv("CAS_HOME", str(tmp_path / "home"))
    with Store.open(str(tmp_path / "repo"), index=index_url) as s:
        yield s


def _ids(snaps: list) -> list[str]:  # type: ignore[type-arg]
    return [s.execution_id for s in snaps]


def test_list_filters_by_labels_time_and_limit(store: Store, tmp_path: Path) -> None:
    t = _take(store, tmp_path)
    assert _ids(store.list()) == ["run-3", "run-2", "run-1", "run-0"]
    assert _ids(store.list(labels={WORKFLOW: "train"})) == ["run-3", "run-2", "run-0"]
    assert _ids(store.list(labels={WORKFLOW: "train", "team": "b"})) == ["run-3", "run-2"]
    assert _ids(store.list(labels={WORKFLOW: "train", "team": "c"})) == []
    assert _ids(store.list(labels={"nosuchkey": "train"})) == []
    # since is inclusive, until exclusive: [since, until)
    assert _ids(store.list(since=_at(t[1]))) == ["run-3", "run-2", "run-1"]
    assert _ids(store.list(until=_at(t[1]))) == ["run-0"]
    assert _ids(store.list(since=_at(t[1]), until=_at(t[3]))) == ["run-2", "run-1"]
    naive = _at(t[2]).replace(tzinfo=None)  # a naive datetime is UTC
    assert _ids(store.list(since=naive)) == ["run-3", "run-2"]
    assert _ids(store.list(since=dt.timedelta(hours=1))) == ["run-3", "run-2", "run-1", "run-0"]
    assert _ids(store.list(until=dt.timedelta(hours=1))) == []
    # the limit counts matching snapshots only (the filter runs in the query, before the limit)
    assert _ids(store.list(labels={"team": "a"}, limit=1)) == ["run-1"]
    assert _ids(store.list(labels={WORKFLOW: "train"}, since=_at(t[0]), limit=2)) == ["run-3", "run-2"]
    assert store.list(limit=0) == []
    # far beyond the index's 64-bit nanoseconds: clamped, not an overflow
    far = dt.datetime(9999, 12, 31, tzinfo=dt.timezone.utc)
    assert len(store.list(until=far)) == 4 and store.list(since=far) == []
    assert len(store.list(since=dt.datetime(1, 1, 1))) == 4


@pytest.mark.parametrize(
    "kwargs",
    [{"limit": -1}, {"labels": {"bad key": "x"}}, {"labels": {"k": "\x1b"}}, {"since": "30d"}, {"until": 5}],
)
def test_list_refuses_bad_filters(store: Store, kwargs: dict) -> None:  # type: ignore[type-arg]
    with pytest.raises(ConfigurationError):
        store.list(**kwargs)


def test_cli_log_and_forget_filter(store: Store, tmp_path: Path, index_url: str) -> None:
    t = _take(store, tmp_path)
    store.close()
    where = ("--repo", str(tmp_path / "repo"), "--index", index_url)

    def log(*args: str) -> list[str]:
        return [s["execution_id"] for s in json.loads(cas(tmp_path, *where, "--json", "log", *args).stdout)]

    assert log("--label", f"{WORKFLOW}=train") == ["run-3", "run-2", "run-0"]
    assert log("-l", f"{WORKFLOW}=train", "--label", "team=b") == ["run-3", "run-2"]
    assert log("--label", "team=a", "--limit", "1") == ["run-1"]
    assert log("--since", "1h") == ["run-3", "run-2", "run-1", "run-0"]
    assert log("--until", "2h") == []
    assert log("--since", "2000-01-01", "--until", "9999-12-31") == ["run-3", "run-2", "run-1", "run-0"]
    assert log("--until", "2000-01-01") == []
    # an ISO time with an offset; without one it is UTC
    since = _at(t[1]).astimezone(dt.timezone(dt.timedelta(hours=5, minutes=30))).isoformat()
    assert log("--since", since) == ["run-3", "run-2", "run-1"]
    assert log("--until", _at(t[1]).replace(tzinfo=None).isoformat()) == ["run-0"]
    assert log("--until", _at(t[1]).isoformat().replace("+00:00", "Z")) == ["run-0"]
    assert "run-2" in cas(tmp_path, *where, "log", "--label", "keep=yes").stdout

    # forget: the filters select, --keep-label protects, --keep-last counts among the selected
    dry = json.loads(cas(tmp_path, *where, "--json", "forget", "--label", f"{WORKFLOW}=train",
                         "--keep-label", "keep=yes", "--dry-run").stdout)
    assert dry == {"would_forget": ["run-3", "run-0"]}
    assert log() == ["run-3", "run-2", "run-1", "run-0"]
    out = cas(tmp_path, *where, "forget", "--label", f"{WORKFLOW}=train", "--keep-last", "1",
              "--keep-label", "keep=yes", "--since", _at(t[0]).isoformat()).stdout
    assert out.split("\n")[:1] == ["forgot run-0"]
    assert log() == ["run-3", "run-2", "run-1"]
    # a named ID carrying a kept label is kept too
    out = json.loads(cas(tmp_path, *where, "--json", "forget", "run-2", "run-1", "--keep-label", "keep=yes").stdout)
    assert out == {"forgotten": ["run-1"]}
    assert log() == ["run-3", "run-2"]
    assert json.loads(cas(tmp_path, *where, "--json", "forget", "--until", "2000-01-01").stdout) == {"forgotten": []}
    assert log() == ["run-3", "run-2"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["log", "--label", "novalue"], "--label: label 'novalue' must be KEY=VALUE"),
        (["log", "--label", "bad key=1"], "--label: invalid label name"),
        (["log", "-l", "a=1", "-l", "a=2"], "given twice"),
        (["log", "--since", "yesterday"], "--since: invalid time 'yesterday'"),
        (["log", "--until", "2026-13-01"], "--until: invalid time"),
        (["log", "--since", "30"], "--since: invalid time"),
        (["log", "--since", "99999999999d"], "--since: duration"),
        (["log", "--limit", "-1"], "--limit: invalid limit '-1'"),
        (["log", "--limit", "ten"], "--limit: invalid limit"),
        (["forget", "--label", "x"], "--label: label 'x' must be KEY=VALUE"),
        (["forget", "--keep-label", "x"], "--keep-label: label 'x' must be KEY=VALUE"),
        (["forget", "--since", "soon"], "--since: invalid time"),
        (["forget"], "name execution IDs to forget"),
        (["forget", "--keep-label", "keep=yes"], "select them with --label"),
    ],
)
def test_bad_filters_are_usage_errors(tmp_path: Path, args: list[str], message: str) -> None:
    proc = cas(tmp_path, *args, check=False)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
