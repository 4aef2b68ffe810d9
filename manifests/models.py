"""SQLAlchemy models of the index: what the backend holds, arranged for fast lookups.

The index is a cache of facts that are also on the backend (pack trailers and snapshot objects),
so it can always be rebuilt from the backend alone. It is never the only copy of anything.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Integer,
    LargeBinary,
    SmallInteger,
    String,
    Text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Pack(Base):
    """One immutable pack object on the backend, named by the BLAKE3 of its bytes."""

    __tablename__ = "packs"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    blob_count: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[object] = mapped_column(DateTime(timezone=True))
    state: Mapped[int] = mapped_column(SmallInteger, default=0)
    """A :class:`~manifests.rows.PackState`: 0 live; 1 condemned by garbage collection (not offered for
    deduplication, still readable)."""
    condemned_epoch: Mapped[int | None] = mapped_column(Integer, nullable=True)
    condemned_at: Mapped[object | None] = mapped_column(DateTime(timezone=True), nullable=True)


class Tombstone(Base):
    """A pack garbage collection has decided to delete; its rows are gone, its object may not be yet."""

    __tablename__ = "tombstones"

    pack_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[object] = mapped_column(DateTime(timezone=True))


class RepositoryBinding(Base):
    """One row: the repository this index describes (its ID and where it is). An index is a cache of
    one repository's backend; used with a copy of it elsewhere, it would offer chunks that the copy
    does not hold, so opening it with another repository is refused (see :meth:`Index.bind`)."""

    __tablename__ = "repository"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    repo_id: Mapped[str] = mapped_column(String(64))
    location: Mapped[str] = mapped_column(Text)
    bound_at: Mapped[object] = mapped_column(DateTime(timezone=True))


class Fence(Base):
    """One row. Every transaction that must be ordered against garbage collection updates it first,
    which serialises them (a row lock on PostgreSQL, the write lock on SQLite)."""

    __tablename__ = "fence"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    epoch: Mapped[int] = mapped_column(Integer)


class Blob(Base):
    """Where a chunk or tree node lives: its pack and byte range, and how it is encoded."""

    __tablename__ = "blobs"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[int] = mapped_column(SmallInteger)
    pack_id: Mapped[str] = mapped_column(String(64), ForeignKey("packs.id"), index=True)
    offset: Mapped[int] = mapped_column(BigInteger)
    length: Mapped[int] = mapped_column(Integer)
    raw_length: Mapped[int] = mapped_column(Integer)
    codec: Mapped[int] = mapped_column(SmallInteger)


class Snapshot(Base):
    """An execution's file tree: the root tree node and what it cost to store."""

    __tablename__ = "snapshots"

    execution_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    root_tree: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[object] = mapped_column(DateTime(timezone=True), index=True)
    time_ns: Mapped[int] = mapped_column(BigInteger)
    labels: Mapped[dict] = mapped_column(JSON)
    stats: Mapped[dict] = mapped_column(JSON)
    logical_bytes: Mapped[int] = mapped_column(BigInteger)
    new_bytes: Mapped[int] = mapped_column(BigInteger)
    stored_bytes: Mapped[int] = mapped_column(BigInteger)
    root_mode: Mapped[int] = mapped_column(Integer, default=0o755)
    root_mtime_ns: Mapped[int] = mapped_column(BigInteger, default=0)
    damaged: Mapped[bool] = mapped_column(Boolean, default=False)
    trees_indexed: Mapped[bool] = mapped_column(Boolean, default=False)
    """Every tree of the snapshot has its entries in ``tree_entries`` (false until filled)."""


class TreeEntry(Base):
    """One entry of one directory, keyed by the directory's tree ID: the logical entries (a directory
    stored as parts is listed under its own ID, never under its parts'), deduplicated like the trees."""

    __tablename__ = "tree_entries"

    tree_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[bytes] = mapped_column(LargeBinary, primary_key=True)
    """The name's bytes (``os.fsencode``): exact for any name, and ordered as the tree orders them."""
    type: Mapped[str] = mapped_column(String(8))
    mode: Mapped[int] = mapped_column(Integer)
    mtime_ns: Mapped[int] = mapped_column(BigInteger)
    size: Mapped[int] = mapped_column(BigInteger, default=0)
    digest: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    target: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    child: Mapped[str | None] = mapped_column(String(64), nullable=True)
    """A directory's own tree ID (null for files and symlinks): the edge a walk follows."""
