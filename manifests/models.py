"""SQLAlchemy models of the index: what the backend holds, arranged for fast lookups.

The index is a cache of facts that are also on the backend (pack trailers and snapshot objects),
so it can always be rebuilt from the backend alone. It is never the only copy of anything.

These tables are exactly what the migrations (``manifests/migrations``) build, column for column
(their order, types, server defaults, keys and indexes): a new index is created from them
(:func:`manifests.database.migrate`), an older one is brought to the same schema by the
migrations, and a test checks that both ways give the same database.
"""

from __future__ import annotations

from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    false,
)


class Base:
    """A table declared as a class (SQLAlchemy Core, not its ORM, which every command would pay
    some 50 ms to import): its columns are class attributes (``Pack.id``), and SQL constructs take
    the class wherever they take a table (``select(Pack)``, ``update(Pack)``), through
    ``__clause_element__``. Rows come back as named tuples of the columns."""

    metadata: ClassVar[MetaData] = MetaData()
    __tablename__: ClassVar[str]
    __table__: ClassVar[Table]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        columns = []
        for name, value in list(vars(cls).items()):
            if isinstance(value, Column):
                value.name = value.key = name
                columns.append(value)
        cls.__table__ = Table(cls.__tablename__, Base.metadata, *columns)

    @classmethod
    def __clause_element__(cls) -> Table:
        return cls.__table__


class Pack(Base):
    """One immutable pack object on the backend, named by the BLAKE3 of its bytes."""

    __tablename__ = "packs"

    id = Column(String(64), primary_key=True)
    size = Column(BigInteger, nullable=False)
    blob_count = Column(Integer, nullable=False)
    created_at = Column(DateTime(timezone=True), nullable=False)
    state = Column(SmallInteger, default=0, server_default="0", index=True, nullable=False)
    """A :class:`~manifests.rows.PackState`: 0 live; 1 condemned by garbage collection (not offered for
    deduplication, still readable)."""
    condemned_epoch = Column(Integer, nullable=True)
    condemned_at = Column(DateTime(timezone=True), nullable=True)


class Tombstone(Base):
    """A pack garbage collection has decided to delete; its rows are gone, its object may not be yet."""

    __tablename__ = "tombstones"

    pack_id = Column(String(64), primary_key=True)
    created_at = Column(DateTime(timezone=True), nullable=False)


class RepositoryBinding(Base):
    """One row: the repository this index describes (its ID and where it is). An index is a cache of
    one repository's backend; used with a copy of it elsewhere, it would offer chunks that the copy
    does not hold, so opening it with another repository is refused (see :meth:`Index.bind`)."""

    __tablename__ = "repository"

    id = Column(Integer, primary_key=True)
    repo_id = Column(String(64), nullable=False)
    location = Column(Text, nullable=False)
    bound_at = Column(DateTime(timezone=True), nullable=False)


class Fence(Base):
    """One row. Every transaction that must be ordered against garbage collection updates it first,
    which serialises them (a row lock on PostgreSQL, the write lock on SQLite)."""

    __tablename__ = "fence"

    id = Column(Integer, primary_key=True)
    epoch = Column(Integer, nullable=False)


class Blob(Base):
    """Where a chunk or tree node lives: its pack and byte range, and how it is encoded."""

    __tablename__ = "blobs"

    id = Column(String(64), primary_key=True)
    kind = Column(SmallInteger, nullable=False)
    pack_id = Column(String(64), ForeignKey("packs.id"), index=True, nullable=False)
    offset = Column(BigInteger, nullable=False)
    length = Column(Integer, nullable=False)
    raw_length = Column(Integer, nullable=False)
    codec = Column(SmallInteger, nullable=False)


class Snapshot(Base):
    """An execution's file tree: the root tree node and what it cost to store."""

    __tablename__ = "snapshots"

    execution_id = Column(String(200), primary_key=True)
    root_tree = Column(String(64), nullable=False)
    created_at = Column(DateTime(timezone=True), index=True, nullable=False)
    time_ns = Column(BigInteger, nullable=False)
    labels = Column(JSON, nullable=False)
    stats = Column(JSON, nullable=False)
    logical_bytes = Column(BigInteger, nullable=False)
    new_bytes = Column(BigInteger, nullable=False)
    stored_bytes = Column(BigInteger, nullable=False)
    damaged = Column(Boolean, default=False, server_default=false(), nullable=False)
    root_mode = Column(Integer, default=0o755, server_default="493", nullable=False)
    root_mtime_ns = Column(BigInteger, default=0, server_default="0", nullable=False)
    trees_indexed = Column(Boolean, default=False, server_default=false(), nullable=False)
    """Every tree of the snapshot has its entries in ``tree_entries`` (false until filled)."""


class TreeEntry(Base):
    """One entry of one directory, keyed by the directory's tree ID: the logical entries (a directory
    stored as parts is listed under its own ID, never under its parts'), deduplicated like the trees."""

    __tablename__ = "tree_entries"

    tree_id = Column(String(64), primary_key=True)
    name = Column(LargeBinary, primary_key=True)
    """The name's bytes (``os.fsencode``): exact for any name, and ordered as the tree orders them."""
    type = Column(String(8), nullable=False)
    mode = Column(Integer, nullable=False)
    mtime_ns = Column(BigInteger, nullable=False)
    size = Column(BigInteger, default=0, server_default="0", nullable=False)
    digest = Column(String(64), nullable=True, index=True)
    target = Column(LargeBinary, nullable=True)
    child = Column(String(64), nullable=True)
    """A directory's own tree ID (null for files and symlinks): the edge a walk follows."""
