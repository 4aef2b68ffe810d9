"""The files cache: skip reading files that have not changed since the last snapshot on this host.

A file is taken as unchanged when its path, size, mtime, ctime, inode and device all match what was
recorded when it was last read, as restic and borg do. Entries for files modified within the last
few seconds are not recorded ("racy" timestamps: a write in the same clock tick would not change
mtime), so the cache can make a snapshot faster but never wrong. Cached chunk lists are used only
if the index still has every chunk.

Stored in SQLite under ``$CAS_HOME/cache/files-<repo id>.sqlite``; losing it costs only time.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from dataclasses import dataclass

_RACY_NS = 2_000_000_000
_PENDING_ROWS = 2000


@dataclass(frozen=True)
class CachedFile:
    digest: str
    chunks: tuple[str, ...]


class FilesCache:
    """Rows keyed by (directory, name), looked up a batch of names at a time.

    What a snapshot reads is kept in a temporary table until :meth:`commit`, not in memory, so
    neither a huge directory nor a huge snapshot makes the cache grow the process.
    """

    def __init__(self, path: str) -> None:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        self._db = sqlite3.connect(path, timeout=30, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA temp_store=FILE")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS files (dir BLOB, name BLOB, size INTEGER, mtime_ns INTEGER,"
            " ctime_ns INTEGER, inode INTEGER, dev INTEGER, digest TEXT, chunks TEXT, PRIMARY KEY (dir, name))"
        )
        self._db.execute(
            "CREATE TEMP TABLE pending (dir BLOB, name BLOB, size INTEGER, mtime_ns INTEGER,"
            " ctime_ns INTEGER, inode INTEGER, dev INTEGER, digest TEXT, chunks TEXT)"
        )
        self._pending: list[tuple[object, ...]] = []
        self._cutoff = time.time_ns() - _RACY_NS

    def lookup(self, directory: bytes, names: list[bytes]) -> dict[bytes, tuple[tuple[int, ...], CachedFile]]:
        """``name -> ((size, mtime, ctime, inode, dev), cached file)`` for ``names`` of ``directory``
        (absolute, as bytes): a run of a few hundred names in byte order, looked up in one query.

        Rows between them for names that no longer exist come too, up to a bound; past it some
        files are merely read again.
        """
        if not names:
            return {}
        rows = self._db.execute(
            "SELECT name, size, mtime_ns, ctime_ns, inode, dev, digest, chunks FROM files"
            " WHERE dir = ? AND name >= ? AND name <= ? ORDER BY name LIMIT ?",
            (directory, names[0], names[-1], 4 * len(names)),
        ).fetchall()
        out = {}
        for name, size, mtime, ctime, inode, dev, digest, chunks in rows:
            try:
                out[bytes(name)] = ((size, mtime, ctime, inode, dev), CachedFile(digest, tuple(json.loads(chunks))))
            except ValueError:
                continue
        return out

    @staticmethod
    def matches(key: tuple[int, ...], st: os.stat_result) -> bool:
        return key == (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)

    def remember(
        self, directory: bytes, name: bytes, st: os.stat_result, size: int, digest: str, chunks: tuple[str, ...]
    ) -> None:
        """Record a file read whole at ``st`` (its fstat before reading), for :meth:`commit`."""
        if size != st.st_size or st.st_mtime_ns >= self._cutoff:
            return
        self._pending.append(
            (directory, name, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev, digest,
             json.dumps(list(chunks)))
        )
        if len(self._pending) >= _PENDING_ROWS:
            self._spill()

    def _spill(self) -> None:
        with self._db:
            self._db.executemany("INSERT INTO temp.pending VALUES (?,?,?,?,?,?,?,?,?)", self._pending)
        self._pending = []

    def commit(self) -> None:
        """Record what this snapshot read; call only after its chunks are durable."""
        self._spill()
        with self._db:
            self._db.execute("INSERT OR REPLACE INTO files SELECT * FROM temp.pending")
            self._db.execute("DELETE FROM temp.pending")

    def close(self) -> None:
        self._db.close()
