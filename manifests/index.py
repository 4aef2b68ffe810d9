"""The index: a SQL database (SQLite by default, PostgreSQL for many hosts) over SQLAlchemy 2.

Opening an index applies the Alembic migrations it lacks and refuses a schema newer than this
code knows. Every write is one transaction; inserts of blobs are insert-or-ignore, so two writers
that stored the same chunk in different packs both succeed and the first row wins (the other pack
holds an unreferenced copy that garbage collection reclaims).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import os
import re
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import create_engine, delete, event, func, insert, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, OperationalError, SQLAlchemyError
from sqlalchemy.exc import IntegrityError as SQLIntegrityError

from backends.errors import (
    AlreadyExists, CasError, ConfigurationError, IntegrityError, MissingDependency, NotFound, Unavailable,
)
from manifests.models import Blob, Fence, Pack, RepositoryBinding, Snapshot, Tombstone

LIVE = 0
CONDEMNED = 1


delete_stmt = delete  # gc_apply has a parameter named ``delete``


class SnapshotWithdrawn(NotFound):
    """The snapshot object was removed (forgotten, or withdrawn by its writer) before its row could be
    committed; nothing was inserted."""


class IndexDamaged(IntegrityError):
    """The index database itself is damaged (SQLite: not a database, malformed pages, undecodable text).

    ``path`` is the SQLite file, or None for a server database. The message says how to recover:
    the backend is the ground truth, so the index is rebuilt from it (``cas rebuild-index`` sets a
    damaged SQLite file aside first, see :func:`set_aside`).
    """

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


class PackBeingDeleted(Unavailable):
    """Garbage collection is deleting a pack with this name; upload it again once that finished."""


SCHEMA_HEAD = "0003"
_MIGRATIONS = Path(__file__).with_name("migrations")
_LOOKUP_BATCH = 500


@dataclass(frozen=True)
class BlobLocation:
    id: str
    kind: int
    pack_id: str
    offset: int
    length: int
    raw_length: int
    codec: int


@dataclass(frozen=True)
class SnapshotRow:
    execution_id: str
    root_tree: str
    time_ns: int
    labels: dict[str, str]
    stats: dict[str, int]
    logical_bytes: int
    new_bytes: int
    stored_bytes: int
    damaged: bool = False


@dataclass(frozen=True)
class PackRow:
    id: str
    size: int
    state: int
    condemned_epoch: int | None
    created_at: dt.datetime
    condemned_at: dt.datetime | None


@dataclass(frozen=True)
class GcDecision:
    tombstoned: list[str]
    condemned: list[str]
    rescued: list[str]


@dataclass(frozen=True)
class IndexStats:
    snapshots: int
    packs: int
    pack_bytes: int
    blobs: int
    chunks: int
    trees: int
    chunk_raw_bytes: int
    chunk_stored_bytes: int
    logical_bytes: int


def redact(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        # Unparseable (a bad port, an unclosed "["): still hide what looks like a password.
        return _escape(re.sub(r"(://[^/@:]*):[^@]*@", r"\1:***@", url))


class Index:
    """Open with :meth:`open`; safe to share between threads (each call uses its own connection)."""

    def __init__(self, engine: Engine, url: str) -> None:
        self.engine = engine
        self.url = url

    @classmethod
    def open(cls, url: str) -> Index:
        try:
            engine = _make_engine(url)
        except NoSuchModuleError as exc:
            raise ConfigurationError(f"unknown index database in {redact(url)}: {exc}") from exc
        except (ArgumentError, ValueError) as exc:
            raise ConfigurationError(f"invalid index URL {redact(url)}") from exc
        except ImportError as exc:
            raise MissingDependency(
                f"the index database driver is not installed ({exc.name}): pip install 'cas-store[postgres]'"
            ) from exc
        index = cls(engine, url)
        index.migrate()
        return index

    def describe(self) -> str:
        return redact(self.url)

    @property
    def sqlite_path(self) -> str | None:
        """The database file of a SQLite index (None for a server database or an in-memory one)."""
        database = self.engine.url.database if self.engine.dialect.name == "sqlite" else None
        return None if not database or database == ":memory:" else database

    def check(self) -> list[str]:
        """Problems SQLite's ``quick_check`` finds in the database file (none for a server database).

        Damage that no query has touched yet is found here; reads over it may otherwise return
        wrong rows without any error.
        """
        if self.engine.dialect.name != "sqlite":
            return []
        with self._read() as conn:
            rows = [str(r[0]) for r in conn.exec_driver_sql("PRAGMA quick_check(20)")]
        if rows == ["ok"]:
            return []
        lines = (line.strip() for row in rows for line in row.splitlines())
        return [_escape(line) for line in lines if line and not line.startswith("*** in database")]

    def check_intact(self) -> None:
        """Raise :class:`IndexDamaged` if :meth:`check` finds anything."""
        problems = self.check()
        if problems:
            raise _damaged(self, problems[0])

    def close(self) -> None:
        self.engine.dispose()

    # -- schema -------------------------------------------------------------------------------

    def migrate(self) -> None:
        """Bring the schema to the head revision; refuse a database written by newer code."""
        if self._schema_is_current():
            return
        from alembic import command
        from alembic.config import Config
        from alembic.runtime.migration import MigrationContext

        try:
            with self._migration_lock(), self.engine.begin() as conn:
                if self.engine.dialect.name == "postgresql":
                    # Two processes opening a new database must not both create the tables.
                    conn.exec_driver_sql("SELECT pg_advisory_xact_lock(7262730)")
                current = MigrationContext.configure(conn).get_current_revision()
                if current == SCHEMA_HEAD:
                    return
                known = {p.name.split("_", 1)[0] for p in (_MIGRATIONS / "versions").glob("*_*.py")}
                if current is not None and current not in known:
                    raise ConfigurationError(
                        f"index schema {current} is newer than this cas understands; upgrade cas"
                    )
                config = Config()
                config.set_main_option("script_location", str(_MIGRATIONS))
                config.attributes["connection"] = conn
                command.upgrade(config, "head")
        except DBAPIError as exc:
            raise _translate(self, exc, "cannot open index {index}") from exc

    @contextlib.contextmanager
    def _migration_lock(self) -> Iterator[None]:
        """On SQLite, a lock file beside the database serialises migrations between processes."""
        database = self.sqlite_path
        if database is None:
            yield
            return
        import fcntl

        with open(database + ".migrate-lock", "a+b") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    def _schema_is_current(self) -> bool:
        """A quick look at Alembic's version table, so opening an up-to-date index imports no Alembic."""
        try:
            with self.engine.connect() as conn:
                return conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar() == SCHEMA_HEAD
        except SQLAlchemyError:
            return False

    # -- the repository this index describes -------------------------------------------------------

    def bind(self, repo_id: str, location: str, *, rebind: bool = False) -> bool:
        """Check that this index describes the repository ``repo_id`` at ``location``; record it when
        the index describes none yet. Returns True if it was bound now (a new index).

        A copy of a repository (``cp -a``, a bucket sync) keeps its ID; an index used with the copy
        would offer chunks the copy may not hold, so a different location is refused unless
        ``rebind`` (the repository moved, or the index is being rebuilt from this backend).
        """
        now = dt.datetime.now(dt.timezone.utc)
        with self._write() as conn:
            bound = conn.execute(select(RepositoryBinding).where(RepositoryBinding.id == 1)).first()
            if bound is None:
                inserted = conn.execute(
                    self._insert_ignore(RepositoryBinding, ["id"]),
                    [{"id": 1, "repo_id": repo_id, "location": location, "bound_at": now}],
                ).rowcount
                # Another process may have bound it first (rowcount 0, or -1 where the driver cannot
                # tell): what counts is the row that is there now.
                bound = conn.execute(select(RepositoryBinding).where(RepositoryBinding.id == 1)).one()
                new = inserted != 0
                if bound.repo_id == repo_id and bound.location == location:
                    return new
            if bound.repo_id == repo_id and bound.location == location:
                return False
            if rebind:
                conn.execute(
                    update(RepositoryBinding).where(RepositoryBinding.id == 1)
                    .values(repo_id=repo_id, location=location, bound_at=now)
                )
                return False
        if bound.repo_id != repo_id:
            raise ConfigurationError(
                f"index {self.describe()} describes another repository (ID {bound.repo_id} at {bound.location}), "
                f"not {repo_id} at {location}: use the index of this repository"
            )
        raise ConfigurationError(
            f"index {self.describe()} describes this repository at {bound.location}, not at {location} "
            "(a copy?): give a copy its own --index; if the repository moved, 'cas rebuild-index' rebinds the index"
        )

    # -- blobs and packs ------------------------------------------------------------------------

    def known_blobs(self, ids: Iterable[str]) -> set[str]:
        """The subset of ``ids`` a writer may deduplicate against: stored in a *live* pack.

        Blobs in packs that garbage collection condemned are still readable but not offered, so no
        new reference to them is made after the condemnation (docs/GC.md).
        """
        # Look blobs up by primary key and exclude the (few) condemned packs; a join lets SQLite's
        # planner scan all live packs instead.
        sql = (
            "SELECT id FROM blobs WHERE pack_id NOT IN (SELECT id FROM packs WHERE state = "
            f"{CONDEMNED}) AND id IN "
        )
        return {row[0] for row in self._lookup(sql, ids)}

    def locate(self, ids: Iterable[str]) -> dict[str, BlobLocation]:
        sql = 'SELECT id, kind, pack_id, "offset", length, raw_length, codec FROM blobs WHERE id IN '
        return {row[0]: BlobLocation(*row) for row in self._lookup(sql, ids)}

    def _lookup(self, sql: str, ids: Iterable[str]) -> Iterator[tuple]:  # type: ignore[type-arg]
        """Rows of ``sql + (ids...)`` in batches, as plain driver SQL with bound parameters.

        These are the hot paths of snapshot and restore (one call per directory or per few hundred
        blobs); building them as driver SQL skips SQLAlchemy's per-call compilation.
        """
        with self._read() as conn:
            yield from self._lookup_on(conn, sql, ids)

    def _lookup_on(self, conn, sql: str, ids: Iterable[str]) -> Iterator[tuple]:  # type: ignore[no-untyped-def,type-arg]
        wanted = list(dict.fromkeys(ids))
        mark = "?" if self.engine.dialect.paramstyle == "qmark" else "%s"
        for start in range(0, len(wanted), _LOOKUP_BATCH):
            batch = wanted[start : start + _LOOKUP_BATCH]
            statement = sql + "(" + ",".join([mark] * len(batch)) + ")"
            yield from conn.exec_driver_sql(statement, tuple(batch)).fetchall()

    def add_pack(self, pack_id: str, size: int, blobs: Sequence[BlobLocation]) -> None:
        """Record a pack that is already on the backend, and the blobs it holds, in one transaction."""
        now = dt.datetime.now(dt.timezone.utc)
        with self._fenced() as conn:
            if conn.scalar(select(Tombstone.pack_id).where(Tombstone.pack_id == pack_id)):
                raise PackBeingDeleted(f"pack {pack_id[:16]} is being deleted by garbage collection")
            conn.execute(
                self._insert_ignore(Pack, ["id"]),
                [{"id": pack_id, "size": size, "blob_count": len(blobs), "created_at": now, "state": LIVE}],
            )
            if blobs:
                conn.execute(
                    self._insert_ignore(Blob, ["id"]),
                    [
                        {
                            "id": b.id,
                            "kind": b.kind,
                            "pack_id": pack_id,
                            "offset": b.offset,
                            "length": b.length,
                            "raw_length": b.raw_length,
                            "codec": b.codec,
                        }
                        for b in blobs
                    ],
                )

    def add_blob_rows(self, pack_id: str, blobs: Sequence[BlobLocation]) -> int:
        """Re-index blobs of a pack the index already knows (rows lost from a damaged or restored
        database), from the pack's trailer; rows that exist are kept. Returns how many were added."""
        added = 0
        with self._fenced() as conn:
            if not conn.scalar(select(Pack.id).where(Pack.id == pack_id)):
                return 0
            for start in range(0, len(blobs), _LOOKUP_BATCH):
                result = conn.execute(
                    self._insert_ignore(Blob, ["id"]),
                    [
                        {"id": b.id, "kind": b.kind, "pack_id": pack_id, "offset": b.offset, "length": b.length,
                         "raw_length": b.raw_length, "codec": b.codec}
                        for b in blobs[start : start + _LOOKUP_BATCH]
                    ],
                )
                added += int(result.rowcount or 0)
        return added

    def packs(self) -> dict[str, int]:
        with self._read() as conn:
            return {row.id: row.size for row in conn.execute(select(Pack.id, Pack.size))}

    def blobs_in_pack(self, pack_id: str) -> list[BlobLocation]:
        with self._read() as conn:
            rows = conn.execute(select(Blob).where(Blob.pack_id == pack_id).order_by(Blob.offset))
            return [
                BlobLocation(r.id, r.kind, r.pack_id, r.offset, r.length, r.raw_length, r.codec) for r in rows
            ]

    # -- snapshots ------------------------------------------------------------------------------

    def commit_snapshot(
        self,
        row: SnapshotRow,
        blob_ids: Iterable[str],
        *,
        damaged_if_missing: bool = False,
        still_claimed: Callable[[], bool] | None = None,
    ) -> set[str]:
        """Insert a snapshot row if every blob it references is still stored; return those that are not.

        This is the only way a snapshot row enters the index (a writer's commit, a sync, a rebuild,
        a repair). It runs under the fence, so it is ordered against garbage collection: blobs in
        packs GC has condemned are rescued (their packs made live again, they still exist), blobs whose
        packs GC already tombstoned are returned and nothing is inserted (the caller writes them again)
        -- or, with ``damaged_if_missing``, the row is inserted marked damaged.

        A row that already exists with the same root tree is success: the rescue still commits, and a
        damaged mark is cleared when every blob is now stored. A different root is AlreadyExists.
        ``still_claimed`` is called last, inside the transaction: if it returns False (the snapshot
        object was forgotten meanwhile) nothing is committed and :class:`SnapshotWithdrawn` is raised.
        """
        wanted = list(dict.fromkeys(blob_ids))
        with self._fenced() as conn:
            located: dict[str, str] = dict(
                self._lookup_on(conn, "SELECT id, pack_id FROM blobs WHERE id IN ", wanted)  # type: ignore[arg-type]
            )
            missing = {b for b in wanted if b not in located}
            if missing and not damaged_if_missing:
                return missing
            packs = list(set(located.values()))
            for start in range(0, len(packs), _LOOKUP_BATCH):
                batch = packs[start : start + _LOOKUP_BATCH]
                conn.execute(
                    update(Pack)
                    .where(Pack.id.in_(batch), Pack.state == CONDEMNED)
                    .values(state=LIVE, condemned_epoch=None, condemned_at=None)
                )
            try:
                self._insert_snapshot(conn, row if not missing else _with_damaged(row))
            except AlreadyExists:
                existing = conn.execute(
                    select(Snapshot.root_tree, Snapshot.damaged).where(Snapshot.execution_id == row.execution_id)
                ).first()
                if existing is None or existing.root_tree != row.root_tree:
                    raise
                if existing.damaged and not missing:
                    conn.execute(
                        update(Snapshot).where(Snapshot.execution_id == row.execution_id).values(damaged=False)
                    )
            if still_claimed is not None and not still_claimed():
                raise SnapshotWithdrawn(f"snapshot {row.execution_id} was removed from the backend meanwhile")
        return missing

    def _insert_snapshot(self, conn, row: SnapshotRow) -> None:  # type: ignore[no-untyped-def]
        values = {
            "execution_id": row.execution_id,
            "root_tree": row.root_tree,
            "created_at": dt.datetime.fromtimestamp(row.time_ns / 1e9, dt.timezone.utc),
            "time_ns": row.time_ns,
            "labels": row.labels,
            "stats": row.stats,
            "logical_bytes": row.logical_bytes,
            "new_bytes": row.new_bytes,
            "stored_bytes": row.stored_bytes,
            "damaged": row.damaged,
        }
        # A savepoint, so a duplicate ID fails this insert only and not the caller's transaction.
        try:
            with conn.begin_nested():
                conn.execute(insert(Snapshot), [values])
        except SQLIntegrityError as exc:
            raise AlreadyExists(f"execution ID already exists in the index: {row.execution_id}") from exc

    def snapshot(self, execution_id: str) -> SnapshotRow | None:
        with self._read() as conn:
            row = conn.execute(select(Snapshot).where(Snapshot.execution_id == execution_id)).first()
        return None if row is None else _snapshot_row(row)

    def snapshots(self) -> list[SnapshotRow]:
        """All snapshots, newest first."""
        with self._read() as conn:
            rows = conn.execute(select(Snapshot).order_by(Snapshot.time_ns.desc(), Snapshot.execution_id))
            return [_snapshot_row(r) for r in rows]

    def remove_snapshot(self, execution_id: str) -> bool:
        """Fenced, so a sync's commit of the same ID is ordered before or after it (never inside)."""
        with self._fenced() as conn:
            result = conn.execute(delete(Snapshot).where(Snapshot.execution_id == execution_id))
        return bool(result.rowcount)

    def mark_damaged(self, execution_id: str, damaged: bool = True) -> None:
        with self._write() as conn:
            conn.execute(update(Snapshot).where(Snapshot.execution_id == execution_id).values(damaged=damaged))

    # -- garbage collection (see docs/GC.md) ----------------------------------------------------

    def next_epoch(self) -> int:
        """Start a GC run: a new epoch, committed before the run reads anything."""
        with self._fenced() as conn:
            conn.execute(update(Fence).where(Fence.id == 1).values(epoch=Fence.epoch + 1))
            return int(conn.scalar(select(Fence.epoch).where(Fence.id == 1)))

    def pack_rows(self) -> list[PackRow]:
        with self._read() as conn:
            rows = conn.execute(select(Pack))
            return [
                PackRow(r.id, r.size, r.state, r.condemned_epoch, _utc(r.created_at), _utc(r.condemned_at))
                for r in rows
            ]

    def iter_blob_rows(self) -> Iterator[BlobLocation]:
        """Every blob row, streamed (the table can be larger than memory)."""
        with self._read() as conn:
            result = conn.execution_options(stream_results=True, yield_per=10_000).execute(select(Blob))
            for r in result:
                yield BlobLocation(r.id, r.kind, r.pack_id, r.offset, r.length, r.raw_length, r.codec)

    def adopt_orphans(self, pack_sizes: dict[str, int], epoch: int) -> int:
        """Record packs found on the backend but not in the index as condemned, for a later run."""
        if not pack_sizes:
            return 0
        now = dt.datetime.now(dt.timezone.utc)
        with self._fenced() as conn:
            stamp = int(conn.scalar(select(Fence.epoch).where(Fence.id == 1)))
            # RETURNING, not rowcount: psycopg reports -1 for an executemany.
            inserted = conn.execute(
                self._insert_ignore(Pack, ["id"]).returning(Pack.id),
                [
                    {"id": pid, "size": size, "blob_count": 0, "created_at": now, "state": CONDEMNED,
                     "condemned_epoch": stamp, "condemned_at": now}
                    for pid, size in pack_sizes.items()
                ],
            ).all()
        return len(inserted)

    def gc_apply(
        self,
        epoch: int,
        *,
        condemn: Sequence[str],
        rescue: Sequence[str],
        delete: Sequence[str],
        grace: dt.timedelta,
    ) -> GcDecision:
        """Apply one GC run's verdicts in one fenced transaction, re-checking each against the rows.

        * ``rescue``: condemned packs that hold reachable blobs become live again.
        * ``delete``: packs to tombstone; only those still condemned, stamped with an epoch below
          ``epoch`` (so this run's mark began after the condemnation committed) and condemned
          longer ago than ``grace``. Their blob and pack rows are removed and a tombstone is written.
        * ``condemn``: live packs with nothing reachable, older than ``grace``.
        """
        now = dt.datetime.now(dt.timezone.utc)
        cutoff = now - grace
        tombstoned: list[str] = []
        condemned: list[str] = []
        rescued: list[str] = []
        with self._fenced() as conn:
            for batch in _batches(rescue):
                rows = conn.execute(
                    update(Pack).where(Pack.id.in_(batch), Pack.state == CONDEMNED)
                    .values(state=LIVE, condemned_epoch=None, condemned_at=None).returning(Pack.id)
                )
                rescued.extend(rows.scalars())
            for batch in _batches(delete):
                chosen = list(conn.scalars(select(Pack.id).where(
                    Pack.id.in_(batch), Pack.state == CONDEMNED, Pack.condemned_epoch < epoch,
                    Pack.condemned_at <= cutoff,
                )))
                if not chosen:
                    continue
                conn.execute(self._insert_ignore(Tombstone, ["pack_id"]),
                             [{"pack_id": pid, "created_at": now} for pid in chosen])
                conn.execute(delete_stmt(Blob).where(Blob.pack_id.in_(chosen)))
                conn.execute(delete_stmt(Pack).where(Pack.id.in_(chosen)))
                tombstoned.extend(chosen)
            # Stamp condemnations with the fence's epoch *now*, not this run's: a run that started
            # before this commit has a smaller epoch and so can never tombstone these packs.
            stamp = int(conn.scalar(select(Fence.epoch).where(Fence.id == 1)))
            for batch in _batches(condemn):
                rows = conn.execute(
                    update(Pack).where(Pack.id.in_(batch), Pack.state == LIVE, Pack.created_at <= cutoff)
                    .values(state=CONDEMNED, condemned_epoch=stamp, condemned_at=now).returning(Pack.id)
                )
                condemned.extend(rows.scalars())
        return GcDecision(tombstoned, condemned, rescued)

    def tombstones(self) -> list[str]:
        with self._read() as conn:
            return list(conn.scalars(select(Tombstone.pack_id)))

    def is_tombstoned(self, pack_id: str) -> bool:
        with self._read() as conn:
            return conn.scalar(select(Tombstone.pack_id).where(Tombstone.pack_id == pack_id)) is not None

    def clear_tombstone(self, pack_id: str) -> None:
        """Called once the pack's object is gone from the backend; a writer may then upload it anew."""
        with self._write() as conn:
            conn.execute(delete_stmt(Tombstone).where(Tombstone.pack_id == pack_id))

    def move_blobs(self, moves: Sequence[BlobLocation], from_packs: dict[str, str]) -> int:
        """Point blobs at their repacked copies, where they still point at the pack they were read from."""
        moved = 0
        with self._fenced() as conn:
            for loc in moves:
                result = conn.execute(
                    update(Blob).where(Blob.id == loc.id, Blob.pack_id == from_packs[loc.id]).values(
                        pack_id=loc.pack_id, offset=loc.offset, length=loc.length,
                        raw_length=loc.raw_length, codec=loc.codec,
                    )
                )
                moved += result.rowcount or 0
        return moved

    def forget_blobs_in_packs(self, pack_ids: Sequence[str]) -> int:
        """Repair: drop rows of packs that are gone from the backend, so nothing dedups against them."""
        removed = 0
        with self._fenced() as conn:
            for batch in _batches(pack_ids):
                removed += conn.execute(delete_stmt(Blob).where(Blob.pack_id.in_(batch))).rowcount or 0
                conn.execute(delete_stmt(Pack).where(Pack.id.in_(batch)))
        return removed

    def forget_blobs(self, blob_ids: Sequence[str]) -> int:
        """Repair: drop rows of corrupt blobs, so writers store those chunks again."""
        removed = 0
        with self._fenced() as conn:
            for batch in _batches(blob_ids):
                removed += conn.execute(delete_stmt(Blob).where(Blob.id.in_(batch))).rowcount or 0
        return removed

    def reset(self) -> None:
        """Empty every table (before a rebuild from the backend)."""
        with self._fenced() as conn:
            conn.execute(delete_stmt(Snapshot))
            conn.execute(delete_stmt(RepositoryBinding))
            conn.execute(delete_stmt(Blob))
            conn.execute(delete_stmt(Pack))
            conn.execute(delete_stmt(Tombstone))

    def stats(self) -> IndexStats:
        with self._read() as conn:
            snapshots, logical = conn.execute(
                select(func.count(), func.coalesce(func.sum(Snapshot.logical_bytes), 0)).select_from(Snapshot)
            ).one()
            packs, pack_bytes = conn.execute(
                select(func.count(), func.coalesce(func.sum(Pack.size), 0)).select_from(Pack)
            ).one()
            per_kind = {
                kind: (count, raw, stored)
                for kind, count, raw, stored in conn.execute(
                    select(Blob.kind, func.count(), func.sum(Blob.raw_length), func.sum(Blob.length)).group_by(
                        Blob.kind
                    )
                )
            }
        chunks = per_kind.get(0, (0, 0, 0))
        trees = per_kind.get(1, (0, 0, 0))
        return IndexStats(
            snapshots=int(snapshots),
            packs=int(packs),
            pack_bytes=int(pack_bytes),
            blobs=int(chunks[0] + trees[0]),
            chunks=int(chunks[0]),
            trees=int(trees[0]),
            chunk_raw_bytes=int(chunks[1] or 0),
            chunk_stored_bytes=int(chunks[2] or 0),
            logical_bytes=int(logical),
        )

    # -- plumbing -------------------------------------------------------------------------------

    def _insert_ignore(self, model: type, keys: list[str]):  # type: ignore[no-untyped-def]
        dialect = self.engine.dialect.name
        if dialect == "sqlite":
            from sqlalchemy.dialects.sqlite import insert as dialect_insert
        elif dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as dialect_insert
        else:
            raise ConfigurationError(f"index database {dialect!r} is not supported (use SQLite or PostgreSQL)")
        return dialect_insert(model).on_conflict_do_nothing(index_elements=keys)

    def _fenced(self):  # type: ignore[no-untyped-def]
        return _Guard(self, self.engine.begin(), fence=True)

    def _read(self):  # type: ignore[no-untyped-def]
        return _Guard(self, self.engine.connect())

    def _write(self):  # type: ignore[no-untyped-def]
        return _Guard(self, self.engine.begin())


class _Guard:
    """Turns driver failures into the project's errors while keeping SQLAlchemy's context manager."""

    def __init__(self, index: Index, ctx, fence: bool = False) -> None:  # type: ignore[no-untyped-def]
        self.index = index
        self.ctx = ctx
        self.fence = fence

    def __enter__(self):  # type: ignore[no-untyped-def]
        try:
            conn = self.ctx.__enter__()
            if self.fence:
                # Taking the fence row's lock orders this transaction against every other fenced one.
                conn.execute(update(Fence).where(Fence.id == 1).values(epoch=Fence.epoch))
            return conn
        except DBAPIError as exc:
            self.ctx.__exit__(type(exc), exc, exc.__traceback__)
            raise _translate(self.index, exc, "index {index} unavailable") from exc

    def __exit__(self, exc_type, exc, tb):  # type: ignore[no-untyped-def]
        try:
            result = self.ctx.__exit__(exc_type, exc, tb)
        except DBAPIError as err:
            raise _translate(self.index, err, "index {index} unavailable") from err
        if isinstance(exc, DBAPIError):
            raise _translate(self.index, exc, "index {index} failed") from exc
        return result


# SQLite's primary result codes for a damaged file; the extended codes keep them in the low byte.
_SQLITE_CORRUPT = 11
_SQLITE_NOTADB = 26


def _translate(index: Index, exc: DBAPIError, what: str) -> CasError:
    """The project's error for a driver failure: damage, unavailability or anything else, in one line
    that never holds the index's password or raw bytes from the database."""
    orig = exc.orig
    detail = _first_line(exc)
    password = index.engine.url.password
    if password:
        detail = detail.replace(str(password), "***")
    if isinstance(orig, sqlite3.Error):
        code = getattr(orig, "sqlite_errorcode", None)
        if "Could not decode to UTF-8" in str(orig):
            return _damaged(index, "a text value is not valid UTF-8")  # and never echo those bytes
        if (code is not None and code & 0xFF in (_SQLITE_CORRUPT, _SQLITE_NOTADB)) or (
            code is None and ("malformed" in detail or "not a database" in detail)
        ):
            return _damaged(index, detail)
    message = what.format(index=index.describe()) + f": {detail}"
    return Unavailable(message) if isinstance(exc, OperationalError) else CasError(message)


def _damaged(index: Index, detail: str) -> IndexDamaged:
    path = index.sqlite_path
    if path is not None:
        how = "run 'cas rebuild-index' to set it aside and rebuild the index from the repository"
    else:
        how = "repair the database, or run 'cas rebuild-index' with --index naming an empty one"
    return IndexDamaged(f"index {path or index.describe()} is damaged ({detail}); {how}", path=path)


def set_aside(path: str) -> str:
    """Rename a damaged SQLite index (and its WAL and shared-memory files) to
    ``<path>.damaged-<UTC time>``, out of the way of a new one; return the new name."""
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    aside = f"{path}.damaged-{stamp}"
    suffix = 1
    while os.path.lexists(aside):
        suffix += 1
        aside = f"{path}.damaged-{stamp}-{suffix}"
    for extra in ("-wal", "-shm"):
        if os.path.lexists(path + extra):
            os.rename(path + extra, aside + extra)
    os.rename(path, aside)
    return aside


def _make_engine(url: str) -> Engine:
    if url.startswith("sqlite:///") and not url.startswith("sqlite:///:memory:"):
        path = url[len("sqlite:///") :]
        if path:
            os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", mode=0o700, exist_ok=True)
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    engine = create_engine(url, pool_pre_ping=True)
    if engine.dialect.name == "sqlite":

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # type: ignore[no-untyped-def]
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

    return engine


def _with_damaged(row: SnapshotRow) -> SnapshotRow:
    return dataclasses.replace(row, damaged=True)


def _snapshot_row(row) -> SnapshotRow:  # type: ignore[no-untyped-def]
    return SnapshotRow(
        execution_id=row.execution_id,
        root_tree=row.root_tree,
        time_ns=row.time_ns,
        labels=dict(row.labels or {}),
        stats=dict(row.stats or {}),
        logical_bytes=row.logical_bytes,
        new_bytes=row.new_bytes,
        stored_bytes=row.stored_bytes,
        damaged=bool(row.damaged),
    )


def _batches(items: Sequence[str]) -> Iterator[list[str]]:
    items = list(items)
    for start in range(0, len(items), _LOOKUP_BATCH):
        yield items[start : start + _LOOKUP_BATCH]


def _utc(value: dt.datetime | None) -> dt.datetime | None:
    """SQLite hands back naive datetimes; every time in the index is UTC."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=dt.timezone.utc)
    return value


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc)
    return _escape(text.strip().splitlines()[0]) if text.strip() else type(exc).__name__


def _escape(text: str) -> str:
    """``text`` with unprintable characters (terminal escapes, bidi controls) as Python escapes."""
    return text if text.isprintable() else "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


__all__ = ["BlobLocation", "Index", "IndexDamaged", "IndexStats", "SnapshotRow", "SQLAlchemyError", "redact", "set_aside"]
