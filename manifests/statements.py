"""The SQL of the reads every command makes, as plain text: the index's parts run it through
SQLAlchemy's connection, :mod:`manifests.lazy` straight through SQLite's driver, so both read the
same rows the same way. Nothing here imports SQLAlchemy."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any

from manifests.rows import PackState, SnapshotRow, TreeEntryRow

SCHEMA_HEAD = "0005"
"""The newest migration this code knows; a database at a revision it does not know is refused."""
SCHEMA_VERSION = "SELECT version_num FROM alembic_version"
"""Alembic's record of the schema's revision (one row)."""

LOOKUP_BATCH = 500
"""IDs per ``IN (...)`` list: below SQLite's and PostgreSQL's limits on bound parameters."""

# Look blobs up by primary key and exclude the (few) condemned packs; a join lets SQLite's planner
# scan all live packs instead.
KNOWN_BLOBS = (
    "SELECT id FROM blobs WHERE pack_id NOT IN (SELECT id FROM packs WHERE state = "
    f"{PackState.CONDEMNED.value}) AND id IN "
)
"""Followed by a parenthesised list of IDs."""
LOCATE_BLOBS = 'SELECT id, kind, pack_id, "offset", length, raw_length, codec FROM blobs WHERE id IN '
"""Followed by a parenthesised list of IDs; the columns of a :class:`~manifests.rows.BlobRow`."""

UNINDEXED_SNAPSHOTS = {
    damaged: "SELECT execution_id, root_tree FROM snapshots WHERE NOT trees_indexed"
    + ("" if damaged else " AND NOT damaged")
    + " ORDER BY time_ns DESC, execution_id"
    for damaged in (False, True)
}
"""By whether snapshots marked damaged are included."""

BINDING = "SELECT repo_id, location FROM repository WHERE id = 1"

SNAPSHOT_COLUMNS = (
    "execution_id", "root_tree", "time_ns", "labels", "stats", "logical_bytes", "new_bytes", "stored_bytes",
    "root_mode", "root_mtime_ns", "damaged", "trees_indexed",
)
"""The columns of ``snapshots`` that make a :class:`~manifests.rows.SnapshotRow`, in the order
:func:`snapshot_row` takes them."""


# The writer's commit as the SQLite driver runs it (manifests.lazy), the statements the full
# index's commit_snapshot makes through SQLAlchemy, with the values SQLAlchemy stores for SQLite.
FENCE = "UPDATE fence SET epoch = epoch WHERE id = 1"
"""Orders a transaction against every other fenced one (docs/GC.md, "The fence")."""
PACKS_HOLDING = "SELECT pack_id, COUNT(*) FROM blobs WHERE id IN "
"""Followed by a parenthesised list of IDs and :data:`PER_PACK`."""
PER_PACK = " GROUP BY pack_id"
RESCUE_PACKS = (
    f"UPDATE packs SET state = {PackState.LIVE.value}, condemned_epoch = NULL, condemned_at = NULL"
    f" WHERE state = {PackState.CONDEMNED.value} AND id IN "
)
"""Followed by a parenthesised list of pack IDs: the condemned ones among them made live again."""
INSERT_SNAPSHOT = (
    "INSERT INTO snapshots (execution_id, root_tree, created_at, time_ns, labels, stats, logical_bytes,"
    " new_bytes, stored_bytes, root_mode, root_mtime_ns, damaged, trees_indexed)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def sqlite_snapshot_values(row: SnapshotRow, created_at: str) -> tuple[Any, ...]:
    """:data:`INSERT_SNAPSHOT`'s parameters for ``row`` (``created_at`` as SQLite holds a UTC time)."""
    return (row.execution_id, row.root_tree, created_at, row.time_ns, json.dumps(row.labels),
            json.dumps(row.stats), row.logical_bytes, row.new_bytes, row.stored_bytes, row.root_mode,
            row.root_mtime_ns, int(row.damaged), int(row.trees_indexed))


_TREE_ENTRY_COLUMNS = "name, type, mode, mtime_ns, size, digest, target, child"
TREE_ENTRIES_OF = f"SELECT tree_id, {_TREE_ENTRY_COLUMNS} FROM tree_entries WHERE tree_id IN "
"""Followed by a parenthesised list of tree IDs: their rows, each with its tree's ID first."""


INDEXED_TREES = "SELECT DISTINCT tree_id FROM tree_entries WHERE tree_id IN "
"""Followed by a parenthesised list of tree IDs: those that have rows."""


def tree_entries(mark: str) -> str:
    """The rows of one tree (in no order), its ID bound with the driver's parameter ``mark``."""
    return f"SELECT {_TREE_ENTRY_COLUMNS} FROM tree_entries WHERE tree_id = {mark}"


def tree_entry_rows(rows: Iterable[Sequence[Any]]) -> list[TreeEntryRow]:
    """Rows of :func:`tree_entries` as the driver gives them (bytes, or memoryviews from some
    drivers), sorted by name bytes as the tree orders them, whatever the database's collation."""
    out = [TreeEntryRow(bytes(r[0]), r[1], r[2], r[3], r[4], r[5], None if r[6] is None else bytes(r[6]), r[7])
           for r in rows]
    out.sort(key=lambda e: e.name)
    return out


def trees_entry_rows(tree_ids: Iterable[str], rows: Iterable[Sequence[Any]]) -> dict[str, list[TreeEntryRow]]:
    """Rows of :data:`TREE_ENTRIES_OF` by tree, each tree's as :func:`tree_entry_rows` gives them;
    every one of ``tree_ids`` is a key (an empty or unknown tree has no rows)."""
    out: dict[str, list[TreeEntryRow]] = {t: [] for t in tree_ids}
    for r in rows:
        if type(r[1]) is bytes and (r[7] is None or type(r[7]) is bytes):  # not a memoryview
            out[r[0]].append(TreeEntryRow._make(r[1:]))
        else:
            out[r[0]].append(TreeEntryRow(bytes(r[1]), r[2], r[3], r[4], r[5], r[6],
                                          None if r[7] is None else bytes(r[7]), r[8]))
    for entries in out.values():
        entries.sort(key=lambda e: e.name)
    return out


def find_statement(mark: str, roots: int, by_digest: bool, by_suffix: bool) -> str:
    """What a find needs of every directory reachable from ``roots`` tree IDs (each directory once:
    ``UNION`` deduplicates, so 200 snapshots of one tree walk it once): every subdirectory edge, and
    the files, with a digest and a name suffix if asked; ``(tree, name, size, digest, child)``.
    Parameters (the driver's ``mark``, in order, see :func:`find_parameters`): the roots, the
    digest, the suffix's length twice and the suffix. Bytes on both databases: SQLite's ``substr``
    and ``length`` count bytes of a BLOB, PostgreSQL's of a ``bytea``."""
    sql = ("WITH RECURSIVE reach(id) AS ("
           f" SELECT DISTINCT tree_id FROM tree_entries WHERE tree_id IN ({', '.join([mark] * roots)})"
           " UNION SELECT e.child FROM tree_entries e JOIN reach r ON e.tree_id = r.id WHERE e.child IS NOT NULL) "
           "SELECT e.tree_id, e.name, e.size, e.digest, e.child FROM tree_entries e JOIN reach r ON e.tree_id = r.id"
           " WHERE e.child IS NOT NULL OR (e.type = 'file'")
    if by_digest:
        sql += f" AND e.digest = {mark}"
    if by_suffix:
        sql += f" AND length(e.name) >= {mark} AND substr(e.name, length(e.name) - {mark} + 1) = {mark}"
    return sql + ")"


def find_parameters(roots: Sequence[str], digest: str | None, suffix: bytes) -> list[Any]:
    """The parameters of :func:`find_statement`, in its order."""
    return [*roots, *([digest] if digest is not None else []), *([len(suffix), len(suffix), suffix] if suffix else [])]


def find_rows(rows: Sequence[Sequence[Any]]) -> list[tuple[str, bytes, int, str | None, str | None]]:
    """Rows of :func:`find_statement` with names as bytes (some drivers hand back memoryviews)."""
    return [(r[0], r[1] if type(r[1]) is bytes else bytes(r[1]), r[2], r[3], r[4]) for r in rows]


def snapshot_by_id(mark: str) -> str:
    """The :data:`SNAPSHOT_COLUMNS` of one execution ID, bound with the driver's parameter ``mark``."""
    return f"SELECT {', '.join(SNAPSHOT_COLUMNS)} FROM snapshots WHERE execution_id = {mark}"


def sqlite_snapshots(
    labels: dict[str, str], since_ns: int | None, until_ns: int | None, limit: int | None,
) -> tuple[str, list[Any]]:
    """SQLite's statement and parameters for :meth:`~manifests.index.Index.snapshots` (newest
    first, every label matched through ``json_extract``, as SQLAlchemy's JSON path lookup compiles
    it for SQLite; the full index on PostgreSQL runs SQLAlchemy's query, with ``->>``)."""
    where: list[str] = []
    params: list[Any] = []
    for key, value in labels.items():
        where.append("json_extract(labels, ?) = ?")
        params += ['$."' + key + '"', value]  # keys are checked names: letters, digits, "._/-"
    if since_ns is not None:
        where.append("time_ns >= ?")
        params.append(since_ns)
    if until_ns is not None:
        where.append("time_ns < ?")
        params.append(until_ns)
    sql = f"SELECT {', '.join(SNAPSHOT_COLUMNS)} FROM snapshots"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY time_ns DESC, execution_id"
    if limit is not None:
        sql += " LIMIT ?"
        params.append(limit)
    return sql, params


def snapshot_row(values: Sequence[Any]) -> SnapshotRow:
    """:data:`SNAPSHOT_COLUMNS` of a row as the driver gives them: JSON columns as text (SQLite) or
    already decoded (PostgreSQL's driver), booleans as integers (SQLite) or booleans."""
    (execution_id, root_tree, time_ns, labels, stats, logical_bytes, new_bytes, stored_bytes, root_mode,
     root_mtime_ns, damaged, trees_indexed) = values
    return SnapshotRow(
        execution_id=execution_id,
        root_tree=root_tree,
        time_ns=time_ns,
        labels=dict(_json(labels) or {}),
        stats=dict(_json(stats) or {}),
        logical_bytes=logical_bytes,
        new_bytes=new_bytes,
        stored_bytes=stored_bytes,
        root_mode=root_mode,
        root_mtime_ns=root_mtime_ns,
        damaged=bool(damaged),
        trees_indexed=bool(trees_indexed),
    )


def sqlite_lookup(conn: sqlite3.Connection, sql: str, ids: Iterable[str]) -> list[tuple[Any, ...]]:
    """Rows of ``sql + (ids...)`` through SQLite's driver on ``conn``, the IDs deduplicated and
    bound in batches of :data:`LOOKUP_BATCH` (one statement each: a plain SELECT outside a
    transaction reads one consistent state of the database per batch). Raises ``sqlite3.Error``.

    The IDs go in key order: neighbouring keys share the primary key's index pages and their rows'
    pages, so each page is read once, not once per ID (a commit's check of 100,000 blobs of a
    snapshot: 0.28 s in key order, 0.89 s in the walk's order)."""
    wanted = sorted(set(ids))
    rows: list[tuple[Any, ...]] = []
    cursor = conn.cursor()
    try:
        for start in range(0, len(wanted), LOOKUP_BATCH):
            batch = wanted[start : start + LOOKUP_BATCH]
            statement = sql + "(" + ",".join("?" * len(batch)) + ")"  # placeholders only
            cursor.execute(statement, batch)
            rows.extend(cursor.fetchall())
    finally:
        cursor.close()
    return rows


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, (str, bytes)) else value
