"""manifests/snapshots.py: the commit's check that every referenced blob is still stored, counted per
pack in the query, against a model of which blobs have rows, on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
from collections import namedtuple
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from manifests.connection import LOOKUP_BATCH
from manifests.index import Index
from manifests.rows import PackState, SnapshotRow
from tests.servers.postgres import postgres_admin, postgres_url  # noqa: F401


def STORED() -> bool:
    """These tests use an index alone: every pack they record is taken as on a backend."""
    return True

Location = namedtuple("Location", "id kind pack_id offset length raw_length codec")
PACKS = 5
BLOBS = 3 * LOOKUP_BATCH + 7  # several lookup batches, the last one short


@pytest.fixture(params=["sqlite", "postgresql"])
def index(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Index]:
    url = f"sqlite:///{tmp_path / 'index.sqlite'}" if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    opened = Index.open(url)
    for p in range(PACKS):  # blob n in pack n % PACKS
        opened.add_pack(f"{p:064x}", 100, [Location(f"{n:064x}", 0, "", n, 1, 1, 0) for n in range(p, BLOBS, PACKS)],
                         stored=STORED)
    yield opened
    opened.close()


def _row(execution_id: str) -> SnapshotRow:
    return SnapshotRow(execution_id, "f" * 64, 1, {}, {}, 0, 0, 0)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(wanted=st.lists(st.integers(0, BLOBS + 300), max_size=BLOBS + 300, unique=True) | st.just(list(range(BLOBS))),
       seq=st.integers(0, 10**9))
def test_the_commit_returns_exactly_the_blobs_without_rows(index: Index, wanted: list[int], seq: int) -> None:
    ids = [f"{n:064x}" for n in wanted]
    expected = {i for n, i in zip(wanted, ids) if n >= BLOBS}
    execution_id = f"run-{seq}-{len(ids)}-{sum(wanted)}"
    assert index.commit_snapshot(_row(execution_id), ids + ids[:3]) == expected  # repeats count once
    assert (index.snapshot(execution_id) is not None) == (not expected)


def test_the_commit_rescues_exactly_the_condemned_packs_it_uses(index: Index) -> None:
    packs = [f"{p:064x}" for p in range(PACKS)]
    decision = index.gc_apply(index.next_epoch(), condemn=packs, rescue=[], delete=[], grace=dt.timedelta(0))
    assert sorted(decision.condemned) == packs
    used = [f"{n:064x}" for n in range(BLOBS) if n % PACKS in (1, 3)]  # packs 1 and 3 only
    assert index.commit_snapshot(_row("run"), used) == set()
    states = {r.id: r.state for r in index.pack_rows()}
    assert {int(p, 16) for p, s in states.items() if s == PackState.LIVE} == {1, 3}


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(wanted=st.lists(st.integers(0, BLOBS + 300), max_size=BLOBS + 300) | st.just(list(range(BLOBS))))
def test_lookups_on_one_connection_find_what_lookups_on_their_own_find(index: Index, wanted: list[int]) -> None:
    """A restore's lookups share one connection (on SQLite through the driver's own cursor): the
    same rows as a lookup on its own, over several batches, with repeats and unknown IDs."""
    ids = [f"{n:064x}" for n in wanted]
    alone = index.locate(ids)
    assert set(alone) == {i for n, i in zip(wanted, ids) if n < BLOBS}
    with index.lookups_on_one_connection():
        assert index.locate(ids) == alone
        assert index.locate(reversed(ids)) == alone
        assert index.known_blobs(ids) == set(alone)
