"""The index: a SQL database (SQLite by default, PostgreSQL for many hosts) over SQLAlchemy 2.

Opening an index applies the Alembic migrations it lacks and refuses a schema newer than this
code knows. Every write is one transaction; inserts of blobs are insert-or-ignore, so two writers
that stored the same chunk in different packs both succeed and the first row wins (the other pack
holds an unreferenced copy that garbage collection reclaims). docs/INDEX.md describes the tables.

:class:`Index` is assembled from one part per role, each in its own module:

====================  ===========================================================================
``connection.py``     opening, schema check, ``quick_check``; read, write and fenced transactions
``blobs.py``          blob and pack rows: ``known_blobs``, ``locate``, ``add_pack``, ...
``snapshots.py``      snapshot rows: the fenced ``commit_snapshot``, reads, ``remove_snapshot``
``trees.py``          tree entries: ``add_trees``, ``tree_entries``, the walks of find, ``prune_trees``
``collection.py``     garbage collection: epochs, ``adopt_orphans``, ``gc_apply``, tombstones, moves
``repair.py``         ``forget_blobs*``, ``mark_damaged``, ``reset``
``stats.py``          ``stats``
``binding.py``        ``bind``: the repository this index describes
====================  ===========================================================================

Below them: ``database.py`` (engines, migrations, error translation), ``rows.py`` (the values
handed out), ``statements.py`` (the SQL of the reads every command makes, as text), ``errors.py`` and
``models.py`` (the tables). This module stays the import point; a command opens the index through
``lazy.py`` (:func:`manifests.lazy.open_index`), which answers a restore's reads without importing
SQLAlchemy and opens an :class:`Index` for anything else.
"""

from __future__ import annotations

from sqlalchemy.exc import SQLAlchemyError

from manifests.binding import BindingIndex
from manifests.blobs import BlobIndex
from manifests.collection import GcIndex
from manifests.database import SCHEMA_HEAD, redact, set_aside
from manifests.errors import IndexDamaged, PackBeingDeleted, SnapshotWithdrawn
from manifests.repair import RepairIndex
from manifests.rows import (
    BlobLocationLike,
    BlobRow,
    GcDecision,
    IndexStats,
    PackRow,
    PackState,
    SnapshotRow,
    TreeEntryRow,
)
from manifests.snapshots import SnapshotIndex
from manifests.stats import StatsIndex


class Index(BlobIndex, SnapshotIndex, GcIndex, RepairIndex, StatsIndex, BindingIndex):
    """Open with :meth:`open`; safe to share between threads (each call uses its own connection)."""


__all__ = [
    "SCHEMA_HEAD",
    "BlobLocationLike",
    "BlobRow",
    "GcDecision",
    "Index",
    "IndexDamaged",
    "IndexStats",
    "PackBeingDeleted",
    "PackRow",
    "PackState",
    "SQLAlchemyError",
    "SnapshotRow",
    "SnapshotWithdrawn",
    "TreeEntryRow",
    "redact",
    "set_aside",
]
