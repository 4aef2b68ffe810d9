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
    """Rows keyed by (directory, name), loaded one directory at a time (one query per directory)."""

    def __init__(self, path: str) -> None:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        self._db = sqlite3.connect(path, timeout=30, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS files (dir BLOB, name BLOB, size INTEGER, mtime_ns INTEGER,"
            " ctime_ns INTEGER, inode INTEGER, dev INTEGER, digest TEXT, chunks TEXT, PRIMARY KEY (dir, name))"
        )
        self._pending: list[tuple[object, ...]] = []
        self._cutoff = time.time_ns() - _RACY_NS

    def load_directory(self, directory: str) -> dict[str, tuple[tuple[int, ...], CachedFile]]:
        """``name -> ((size, mtime, ctime, inode, dev), cached file)`` for one directory."""
        rows = self._db.execute(
            "SELECT name, size, mtime_ns, ctime_ns, inode, dev, digest, chunks FROM files WHERE dir = ?",
            (os.fsencode(os.path.abspath(directory)),),
        ).fetchall()
        out = {}
        for name, size, mtime, ctime, inode, dev, digest, chunks in rows:
            try:
                out[os.fsdecode(name)] = ((size, mtime, ctime, inode, dev), CachedFile(digest, tuple(json.loads(chunks))))
            except ValueError:
                continue
        return out

    @staticmethod
    def matches(key: tuple[int, ...], st: os.stat_result) -> bool:
        return key == (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)

    def remember(self, path: str, st: os.stat_result, size: int, digest: str, chunks: tuple[str, ...]) -> None:
        if size != st.st_size or st.st_mtime_ns >= self._cutoff:
            return
        directory, name = os.path.split(os.path.abspath(path))
        self._pending.append(
            (
                os.fsencode(directory),
                os.fsencode(name),
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
                self._db.executemany("INSERT OR REPLACE INTO files VALUES (?,?,?,?,?,?,?,?,?)", self._pending)
            self._pending = []

    def close(self) -> None:
        self._db.close()
