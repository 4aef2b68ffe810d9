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


@dataclass(frozen=True)
class CachedFile:
    digest: str
    chunks: tuple[str, ...]


class FilesCache:
    def __init__(self, path: str) -> None:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        self._db = sqlite3.connect(path, timeout=30, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS files (path BLOB PRIMARY KEY, size INTEGER, mtime_ns INTEGER,"
            " ctime_ns INTEGER, inode INTEGER, dev INTEGER, digest TEXT, chunks TEXT)"
        )
        self._pending: list[tuple[object, ...]] = []
        self._cutoff = time.time_ns() - _RACY_NS

    def lookup(self, path: str, st: os.stat_result) -> CachedFile | None:
        row = self._db.execute(
            "SELECT size, mtime_ns, ctime_ns, inode, dev, digest, chunks FROM files WHERE path = ?",
            (os.fsencode(os.path.abspath(path)),),
        ).fetchone()
        if row is None or tuple(row[:5]) != (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev):
            return None
        try:
            chunks = tuple(json.loads(row[6]))
        except ValueError:
            return None
        return CachedFile(row[5], chunks)

    def remember(self, path: str, st: os.stat_result, size: int, digest: str, chunks: tuple[str, ...]) -> None:
        if size != st.st_size or st.st_mtime_ns >= self._cutoff:
            return
        self._pending.append(
            (
                os.fsencode(os.path.abspath(path)),
                st.st_size,
                st.st_mtime_ns,
                st.st_ctime_ns,
                st.st_ino,
                st.st_dev,
                digest,
                json.dumps(list(chunks)),
            )
        )

    def commit(self) -> None:
        """Record what this snapshot read; call only after its chunks are durable."""
        if self._pending:
            with self._db:
                self._db.executemany("INSERT OR REPLACE INTO files VALUES (?,?,?,?,?,?,?,?)", self._pending)
            self._pending = []

    def close(self) -> None:
        self._db.close()
