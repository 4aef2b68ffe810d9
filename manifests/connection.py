"""What every part of the :class:`~manifests.index.Index` stands on: the open database, its three
kinds of transaction (read, write, fenced), insert-or-ignore, and batched lookups by ID."""

from __future__ import annotations

import json
import operator
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

from sqlalchemy import LargeBinary, delete, false, insert, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.expression import Executable

from backends.errors import ConfigurationError
from manifests import database
from manifests.models import Blob, Pack, Snapshot, Tombstone
from manifests.statements import LOOKUP_BATCH, sqlite_lookup

if TYPE_CHECKING:
    from typing_extensions import Self

_JSON_ROWS = 1000
"""Rows per JSON array handed to SQLite: a pack's 10,000 rows in one array held some 4 MiB more in
each uploading thread of a snapshot (the text, its bytes, SQLite's parse of it) than this."""


class IndexConnection:
    """Open with :meth:`open`; safe to share between threads (each call uses its own connection)."""

    def __init__(self, engine: Engine, url: str) -> None:
        self.engine = engine
        self.url = url
        self._driver_statements: dict[tuple[type, tuple[str, ...], tuple[str, ...]], str] = {}
        self._held = threading.local()

    @classmethod
    def open(cls, url: str) -> Self:
        index = cls(database.open_engine(url), url)
        index.migrate()
        return index

    def describe(self) -> str:
        return database.redact(self.url)

    @property
    def sqlite_path(self) -> str | None:
        """The database file of a SQLite index (None for a server database or an in-memory one)."""
        return database.sqlite_file(self.engine)

    def migrate(self) -> None:
        """Bring the schema to the head revision; refuse a database written by newer code."""
        database.migrate(self.engine, self.url)

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
        return [database.escape(line) for line in lines if line and not line.startswith("*** in database")]

    def check_intact(self) -> None:
        """Raise :class:`~manifests.errors.IndexDamaged` if :meth:`check` finds anything."""
        problems = self.check()
        if problems:
            raise database.damaged(self.engine, self.url, problems[0])

    def require_delete(self) -> None:
        """Refuse a role that may not delete rows (docs/ROLES.md: a writer or a reader), before
        ``gc``, ``repair`` or a full rebuild starts."""
        self._require([delete(m).where(false()) for m in (Blob, Pack, Snapshot, Tombstone)])

    def require_insert(self) -> None:
        """Refuse a role that may not add rows (a reader), before a sync starts."""
        self._require([
            insert(m).from_select([c.name for c in m.__table__.columns], select(m.__table__).where(false()))
            for m in (Pack, Blob, Snapshot)
        ])

    def _require(self, statements: Sequence[Executable]) -> None:
        """Raise :class:`~backends.errors.PermissionDenied` naming the privilege and table of the
        first statement this role may not run, before an operation that needs them changes
        anything. PostgreSQL checks privileges when a statement starts, so statements matching no
        row ask the question and change nothing (and the transaction is rolled back anyway). SQLite
        has no privileges: nothing to ask."""
        if self.engine.dialect.name != "postgresql":
            return
        with self._read() as conn:
            try:
                for statement in statements:
                    conn.execute(statement)
            finally:
                conn.rollback()

    def full(self) -> Self:
        """The index with all its operations at hand: this one (see :class:`manifests.lazy.LazyIndex`)."""
        return self

    def forget_inherited_connections(self) -> None:
        """In a forked child: drop the parent's pooled connections without closing them (they are
        the parent's to close); the child opens its own."""
        self.engine.dispose(close=False)

    def close(self) -> None:
        self.engine.dispose()

    # -- transactions -----------------------------------------------------------------------------

    def _read(self):  # type: ignore[no-untyped-def]
        return database.Guard(self.engine, self.url, self.engine.connect())

    def _write(self):  # type: ignore[no-untyped-def]
        return database.Guard(self.engine, self.url, self.engine.begin())

    def _fenced(self):  # type: ignore[no-untyped-def]
        """A write transaction ordered against every other fenced one (docs/GC.md, "The fence")."""
        return database.Guard(self.engine, self.url, self.engine.begin(), fence=True)

    # -- statements -------------------------------------------------------------------------------

    def _insert_ignore(self, model: type, keys: list[str]):  # type: ignore[no-untyped-def]
        dialect = self.engine.dialect.name
        if dialect == "sqlite":
            from sqlalchemy.dialects.sqlite import insert as dialect_insert
        elif dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as dialect_insert
        else:
            raise ConfigurationError(f"index database {dialect!r} is not supported (use SQLite or PostgreSQL)")
        return dialect_insert(model).on_conflict_do_nothing(index_elements=keys)

    def _driver_insert_ignore(self, model: type, keys: list[str], columns: tuple[str, ...]) -> str:
        """:meth:`_insert_ignore`'s statement compiled once for this dialect, its positional
        parameters in the order of ``columns`` (what the driver's ``executemany`` takes)."""
        cache_key = (model, tuple(keys), columns)
        statement = self._driver_statements.get(cache_key)
        if statement is None:
            compiled = self._insert_ignore(model, keys).compile(dialect=self.engine.dialect, column_keys=list(columns))
            if list(compiled.positiontup or ()) != list(columns):
                raise AssertionError(f"compiled insert takes {compiled.positiontup}, not {columns}")
            statement = self._driver_statements[cache_key] = str(compiled)
        return statement

    def _json_insert_ignore(self, model: type, keys: list[str], columns: tuple[str, ...]) -> str | None:
        """SQLite: :meth:`_insert_ignore` of rows handed over as one JSON array, for tables whose
        ``columns`` hold text and numbers only (None for one with a binary column, which JSON
        cannot carry). The driver's ``executemany`` runs the statement once per row and lets go
        of the GIL around each run: with the snapshot's other threads waiting for it, a row cost
        about four times what it cost alone (13 against 3 µs, measured). One statement inserts
        them all, the GIL let go once."""
        cache_key = (model, tuple(keys), ("json", *columns))
        statement = self._driver_statements.get(cache_key)
        if statement is None:
            table = model.__table__  # type: ignore[attr-defined]
            if any(isinstance(table.c[name].type, LargeBinary) for name in columns):
                self._driver_statements[cache_key] = ""
                return None
            quote = self.engine.dialect.identifier_preparer.quote
            names = ", ".join(quote(name) for name in columns)
            values = ", ".join(f"json_extract(value, '$[{i}]')" for i in range(len(columns)))
            conflict = ", ".join(quote(name) for name in keys)
            # WHERE true: an upsert after SELECT ... FROM needs it to parse (SQLite's documentation).
            statement = self._driver_statements[cache_key] = (
                f"INSERT INTO {quote(table.name)} ({names}) SELECT {values} FROM json_each(?) WHERE true"
                f" ON CONFLICT ({conflict}) DO NOTHING")
        return statement or None

    def _insert_ignore_rows(  # type: ignore[no-untyped-def]
        self, conn, model: type, keys: list[str], columns: Sequence[str], rows: Sequence[tuple]  # type: ignore[type-arg]
    ) -> None:
        """Insert ``rows`` (tuples in the order of ``columns``), keeping rows whose ``keys`` exist.

        The bulk inserts of a snapshot (blob rows, tree entries: one row per file). On SQLite the
        driver's own ``executemany`` of plain SQL, with no per-row dictionaries or type processing
        (several times faster); on PostgreSQL SQLAlchemy's statement, which sends many rows a round trip.
        """
        if not rows:
            return
        if self.engine.dialect.name == "sqlite":
            # In key order: each B-tree page is then dirtied once per batch, not once per row (a
            # third fewer WAL page writes for 100,000 small files' blob rows).
            ordered = sorted(rows, key=operator.itemgetter(*(list(columns).index(k) for k in keys)))
            json_rows = self._json_insert_ignore(model, keys, tuple(columns))
            if json_rows is not None:
                for start in range(0, len(ordered), _JSON_ROWS):
                    conn.exec_driver_sql(json_rows, (json.dumps(ordered[start : start + _JSON_ROWS]),))
            else:
                conn.exec_driver_sql(self._driver_insert_ignore(model, keys, tuple(columns)), ordered)
        else:
            conn.execute(self._insert_ignore(model, keys), [dict(zip(columns, row)) for row in rows])

    @contextmanager
    def lookups_on_one_connection(self) -> Iterator[None]:
        """Inside the block, this thread's lookups by ID (``locate``, ``known_blobs``) share one
        connection instead of taking one from the pool (and pinging it) each: for a walk making one
        lookup per directory, such as a restore's. Each lookup still ends its own transaction."""
        if getattr(self._held, "conn", None) is not None:
            yield
            return
        with self._read() as conn:
            self._held.conn = conn
            try:
                yield
            finally:
                self._held.conn = None

    def _lookup(self, sql: str, ids: Iterable[str]) -> Iterator[tuple]:  # type: ignore[type-arg]
        """Rows of ``sql + (ids...)`` in batches, as plain driver SQL with bound parameters.

        These are the hot paths of snapshot and restore (one call per directory or per few hundred
        blobs); building them as driver SQL skips SQLAlchemy's per-call compilation.
        """
        held = getattr(self._held, "conn", None)
        if held is None:
            with self._read() as conn:
                yield from self._lookup_on(conn, sql, ids)
            return
        ids = list(ids)
        rows = self._lookup_on_driver(held, sql, ids) if self.engine.dialect.name == "sqlite" else None
        if rows is None:
            try:
                rows = list(self._lookup_on(held, sql, ids))
                held.rollback()
            except DBAPIError as exc:
                raise database.translate(self.engine, self.url, exc, "index {index} failed") from exc
        yield from rows

    def _lookup_on_driver(self, held, sql: str, ids: list[str]) -> list[tuple] | None:  # type: ignore[no-untyped-def,type-arg]
        """:meth:`_lookup_on` through the SQLite driver's own cursor on the held connection: a
        restore makes one lookup per directory, where SQLAlchemy's execution machinery cost more
        than the query. A plain SELECT there opens no transaction (nothing to roll back). None on
        any driver error, for the caller to run it the usual way (which reports it as such)."""
        driver = held.connection.driver_connection
        if driver is None or driver.in_transaction:
            return None
        try:
            return sqlite_lookup(driver, sql, ids)
        except sqlite3.Error:
            return None

    @property
    def _mark(self) -> str:
        """The driver's mark of a positional parameter in plain SQL (``exec_driver_sql``)."""
        return "?" if self.engine.dialect.paramstyle == "qmark" else "%s"

    def _lookup_on(self, conn, sql: str, ids: Iterable[str], tail: str = "") -> Iterator[tuple]:  # type: ignore[no-untyped-def,type-arg]
        """:meth:`_lookup` on ``conn``; ``tail`` follows the list of IDs (a ``GROUP BY``). The IDs
        are looked up in key order (see :func:`~manifests.statements.sqlite_lookup`)."""
        wanted = sorted(set(ids))
        mark = self._mark
        for start in range(0, len(wanted), LOOKUP_BATCH):
            batch = wanted[start : start + LOOKUP_BATCH]
            statement = sql + "(" + ",".join([mark] * len(batch)) + ")" + tail
            yield from conn.exec_driver_sql(statement, tuple(batch)).fetchall()


def batches(items: Sequence[str]) -> Iterator[list[str]]:
    """``items`` in lists of at most :data:`LOOKUP_BATCH`."""
    items = list(items)
    for start in range(0, len(items), LOOKUP_BATCH):
        yield items[start : start + LOOKUP_BATCH]
