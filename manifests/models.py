"""SQLAlchemy models of the index: what the backend holds, arranged for fast lookups.

The index is a cache of facts that are also on the backend (pack trailers and snapshot objects),
so it can always be rebuilt from the backend alone. It is never the only copy of anything.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, DateTime, ForeignKey, Integer, JSON, SmallInteger, String
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
