"""A state machine that snapshots, forgets, collects garbage, syncs, repairs, rebuilds, verifies and
damages the index at random, against a model of what must survive: every committed snapshot that has
not been forgotten restores byte for byte (the packs are never touched, only the index).
"""

from __future__ import annotations

import datetime as dt
import os
import random
import shutil
import sqlite3
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from cas import Store
from tests.treeutil import describe

NOW = dt.timedelta(0)
_POOL_RNG = random.Random(1234)
CONTENTS = [b"", b"tiny", *(_POOL_RNG.randbytes(n) for n in (900, 5_000, 20_000, 60_000))]
NAMES = ["a.txt", "b.bin", "model.pt", "data.csv"]
DAMAGE = ["blob rows of one pack", "pack row of one pack", "pack and blob rows of one pack",
          "snapshot rows", "every blob row", "the whole index file"]


class NoLossMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.base = Path(tempfile.mkdtemp(prefix="cas-model-"))
        self.index_path = self.base / "index.sqlite"
        self.store = self._open()
        self.model: dict[str, dict[str, tuple[object, ...]]] = {}
        self.count = 0

    def _open(self) -> Store:
        return Store.open(str(self.base / "repo"), index=f"sqlite:///{self.index_path}", chunk_min=1024,
                          chunk_avg=4096, chunk_max=16384, pack_size=1 << 20)

    def teardown(self) -> None:
        try:
            for execution_id in list(self.model):
                self._check_restore(execution_id)
        finally:
            self.store.close()
            shutil.rmtree(self.base, ignore_errors=True)

    # -- operations ----------------------------------------------------------------------------

    @rule(files=st.dictionaries(st.sampled_from(NAMES), st.integers(0, len(CONTENTS) - 1), min_size=1),
          nested=st.booleans())
    def snapshot(self, files: dict[str, int], nested: bool) -> None:
        self.count += 1
        execution_id = f"run-{self.count}"
        src = self.base / "src" / execution_id
        where = src / "sub" if nested else src
        where.mkdir(parents=True)
        for name, content in files.items():
            (where / name).write_bytes(CONTENTS[content])
        self.store.snapshot(src, execution_id, use_files_cache=False)
        self.model[execution_id] = describe(str(src))

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def forget(self, data: st.DataObject) -> None:
        execution_id = data.draw(st.sampled_from(sorted(self.model)))
        self.store.forget([execution_id])
        del self.model[execution_id]

    @rule()
    def gc(self) -> None:
        self.store.gc(grace=NOW)

    @rule()
    def sync(self) -> None:
        self.store.sync()

    @rule()
    def rebuild_index(self) -> None:
        self.store.rebuild_index()

    @rule(read_data=st.booleans())
    def repair(self, read_data: bool) -> None:
        self.store.repair(read_data=read_data)

    @rule(read_data=st.booleans())
    def verify(self, read_data: bool) -> None:
        report = self.store.verify(read_data=read_data)
        # Index damage may be reported; a committed snapshot is never damaged (its packs are intact).
        assert not (report.damaged & set(self.model)), [str(p) for p in report.problems]

    @rule(kind=st.sampled_from(DAMAGE), pick=st.integers(0, 1000))
    def damage_index(self, kind: str, pick: int) -> None:
        if kind == "the whole index file":
            self.store.close()
            for suffix in ("", "-wal", "-shm"):
                Path(str(self.index_path) + suffix).unlink(missing_ok=True)
            self.store = self._open()
            return
        with sqlite3.connect(self.index_path) as db:  # foreign keys off, as a hand edit would be
            packs = [row[0] for row in db.execute("SELECT id FROM packs ORDER BY id")]
            victim = packs[pick % len(packs)] if packs else ""
            if kind == "blob rows of one pack":
                db.execute("DELETE FROM blobs WHERE pack_id = ?", (victim,))
            elif kind == "pack row of one pack":
                db.execute("DELETE FROM packs WHERE id = ?", (victim,))
            elif kind == "pack and blob rows of one pack":
                db.execute("DELETE FROM blobs WHERE pack_id = ?", (victim,))
                db.execute("DELETE FROM packs WHERE id = ?", (victim,))
            elif kind == "snapshot rows":
                db.execute("DELETE FROM snapshots")
            elif kind == "every blob row":
                db.execute("DELETE FROM blobs")

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def restore(self, data: st.DataObject) -> None:
        self._check_restore(data.draw(st.sampled_from(sorted(self.model))))

    # -- what must hold ------------------------------------------------------------------------

    @invariant()
    def every_committed_snapshot_is_known(self) -> None:
        for execution_id in self.model:
            assert self.store.get(execution_id).execution_id == execution_id

    def _check_restore(self, execution_id: str) -> None:
        dest = self.base / "out" / f"{execution_id}-{os.urandom(4).hex()}"
        self.store.restore(execution_id, dest)
        assert describe(str(dest)) == self.model[execution_id], execution_id
        shutil.rmtree(dest)


NoLossMachine.TestCase.settings = settings(
    max_examples=25, stateful_step_count=25, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestNoLoss = NoLossMachine.TestCase
