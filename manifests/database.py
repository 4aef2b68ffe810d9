"""The index database under the :class:`~manifests.index.Index`: engine set-up, schema migrations,
and the translation of driver failures into the project's errors.

Nothing here knows the tables' meaning; docs/INDEX.md describes the schema and its migrations.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import (
    Column,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    create_engine,
    event,
    insert,
    inspect,
    update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, OperationalError, SQLAlchemyError

from backends.errors import CasError, ConfigurationError, MissingDependency, PermissionDenied, Unavailable
from manifests.errors import IndexDamaged
from manifests.models import Base, Fence
from manifests.statements import SCHEMA_HEAD, SCHEMA_VERSION

_MIGRATIONS = Path(__file__).with_name("migrations")


# -- engines ------------------------------------------------------------------------------------


def open_engine(url: str) -> Engine:
    """An engine for ``url`` (``postgresql://`` uses psycopg 3; a SQLite file's directory is created
    0700 and every connection gets WAL, a 30 s busy timeout and foreign keys). A bad URL, an
    unknown database or a missing driver is a one-line error, never a traceback."""
    try:
        return _make_engine(url)
    except NoSuchModuleError as exc:
        raise ConfigurationError(f"unknown index database in {redact(url)}: {exc}") from exc
    except (ArgumentError, ValueError) as exc:
        raise ConfigurationError(f"invalid index URL {redact(url)}") from exc
    except ImportError as exc:
        raise MissingDependency(
            f"the index database driver is not installed ({exc.name}): pip install 'cas-store[postgres]'"
        ) from exc


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


def sqlite_file(engine: Engine) -> str | None:
    """The database file of a SQLite engine (None for a server database or an in-memory one)."""
    database = engine.url.database if engine.dialect.name == "sqlite" else None
    return None if not database or database == ":memory:" else database


def redact(url: str) -> str:
    """``url`` with its password hidden, printable whatever it holds."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        # Unparseable (a bad port, an unclosed "["): still hide what looks like a password.
        return escape(re.sub(r"(://[^/@:]*):[^@]*@", r"\1:***@", url))


def escape(text: str) -> str:
    """``text`` with unprintable characters (terminal escapes, bidi controls) as Python escapes."""
    return text if text.isprintable() else "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


# -- migrations ---------------------------------------------------------------------------------


_VERSION_TABLE = Table(
    "alembic_version", MetaData(), Column("version_num", String(32), nullable=False),
    PrimaryKeyConstraint("version_num", name="alembic_version_pkc"),
)
"""Alembic's version table, as ``alembic upgrade`` makes it in a new database."""


def migrate(engine: Engine, url: str) -> None:
    """Bring the schema to :data:`SCHEMA_HEAD`; refuse a database written by newer code.

    A database without any of the index's tables is created from the models and stamped with the
    head, as the migrations would leave it (the tests check it is the same schema), without loading
    Alembic (some 200 ms and 12 MiB: every first snapshot into a new index paid them). An older
    schema is migrated by Alembic.

    Safe to run from many processes at once: they are serialised by an advisory lock (PostgreSQL)
    or a lock file beside the database (SQLite), and all but the first find nothing to do.
    """
    if _schema_is_current(engine):
        return
    try:
        with _migration_lock(engine), engine.begin() as conn:
            if engine.dialect.name == "postgresql":
                # Two processes opening a new database must not both create the tables.
                conn.exec_driver_sql("SELECT pg_advisory_xact_lock(7262730)")
            ours = {*Base.metadata.tables, _VERSION_TABLE.name}
            if not ours & set(inspect(conn).get_table_names()):
                create_schema(conn)
                return
            from alembic import command
            from alembic.config import Config
            from alembic.runtime.migration import MigrationContext

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
        raise translate(engine, url, exc, "cannot open index {index}") from exc


def create_schema(conn) -> None:  # type: ignore[no-untyped-def]
    """The head schema in a database that has none of it (in the caller's transaction): the models'
    tables, the fence's row, and the version table stamped with :data:`SCHEMA_HEAD`."""
    Base.metadata.create_all(conn)
    conn.execute(insert(Fence), [{"id": 1, "epoch": 0}])
    _VERSION_TABLE.create(conn)
    conn.execute(insert(_VERSION_TABLE), [{"version_num": SCHEMA_HEAD}])


@contextlib.contextmanager
def _migration_lock(engine: Engine) -> Iterator[None]:
    """On SQLite, a lock file beside the database serialises migrations between processes."""
    database = sqlite_file(engine)
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


def _schema_is_current(engine: Engine) -> bool:
    """A quick look at Alembic's version table, so opening an up-to-date index imports no Alembic."""
    try:
        with engine.connect() as conn:
            return conn.exec_driver_sql(SCHEMA_VERSION).scalar() == SCHEMA_HEAD
    except SQLAlchemyError:
        return False


# -- transactions and their errors --------------------------------------------------------------


class Guard:
    """Wraps SQLAlchemy's connection or transaction context manager: driver failures on entry, inside
    and on exit become the project's errors (:func:`translate`). A ``fence`` transaction first updates
    the fence row, which orders it against every other fenced transaction (docs/GC.md)."""

    def __init__(self, engine: Engine, url: str, ctx, fence: bool = False) -> None:  # type: ignore[no-untyped-def]
        self.engine = engine
        self.url = url
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
            raise translate(self.engine, self.url, exc, "index {index} unavailable") from exc

    def __exit__(self, exc_type, exc, tb):  # type: ignore[no-untyped-def]
        try:
            result = self.ctx.__exit__(exc_type, exc, tb)
        except DBAPIError as err:
            raise translate(self.engine, self.url, err, "index {index} unavailable") from err
        if isinstance(exc, DBAPIError):
            raise translate(self.engine, self.url, exc, "index {index} failed") from exc
        return result


# SQLite's primary result codes for a damaged file; the extended codes keep them in the low byte.
_SQLITE_CORRUPT = 11
_SQLITE_NOTADB = 26


def translate(engine: Engine, url: str, exc: DBAPIError, what: str) -> CasError:
    """The project's error for a driver failure: damage, unavailability or anything else, in one line
    that never holds the index's password or raw bytes from the database."""
    orig = exc.orig
    detail = _first_line(exc)
    password = engine.url.password
    if password:
        detail = detail.replace(str(password), "***")
    if isinstance(orig, sqlite3.Error):
        code = getattr(orig, "sqlite_errorcode", None)
        if "Could not decode to UTF-8" in str(orig):
            return damaged(engine, url, "a text value is not valid UTF-8")  # and never echo those bytes
        if (code is not None and code & 0xFF in (_SQLITE_CORRUPT, _SQLITE_NOTADB)) or (
            code is None and ("malformed" in detail or "not a database" in detail)
        ):
            return damaged(engine, url, detail)
    if getattr(orig, "sqlstate", None) == _INSUFFICIENT_PRIVILEGE:
        return PermissionDenied(f"index {redact(url)} refused: {detail}: {_missing_privilege(exc, detail)}")
    message = what.format(index=redact(url)) + f": {detail}"
    return Unavailable(message) if isinstance(exc, OperationalError) else CasError(message)


#: PostgreSQL's SQLSTATE for a statement the role has no privilege for.
_INSUFFICIENT_PRIVILEGE = "42501"
_TABLE = re.compile(r"permission denied for (?:table|relation) (\S+)")


def _missing_privilege(exc: DBAPIError, detail: str) -> str:
    """What the role lacks, from the refused statement's verb and the table PostgreSQL names:
    ``this role needs DELETE on table blobs (see docs/ROLES.md)``."""
    verb = (str(exc.statement or "").split() or ["access"])[0].upper()
    table = _TABLE.search(detail)
    where = f" on table {table.group(1)}" if table else ""
    return f"this role needs {verb}{where} (see docs/ROLES.md)"


def damaged(engine: Engine, url: str, detail: str) -> IndexDamaged:
    """The error for a damaged index, saying how to recover from it."""
    path = sqlite_file(engine)
    if path is not None:
        how = "run 'cas rebuild-index' to set it aside and rebuild the index from the repository"
    else:
        how = "repair the database, or run 'cas rebuild-index' with --index naming an empty one"
    return IndexDamaged(f"index {path or redact(url)} is damaged ({detail}); {how}", path=path)


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


def utc(value: dt.datetime | None) -> dt.datetime | None:
    """SQLite hands back naive datetimes; every time in the index is UTC."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=dt.timezone.utc)
    return value


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc)
    return escape(text.strip().splitlines()[0]) if text.strip() else type(exc).__name__
