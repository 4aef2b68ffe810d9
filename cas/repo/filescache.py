"""The files cache: skip reading files that have not changed since the last snapshot on this host.

A file is taken as unchanged when its path, size, mtime, ctime, inode and device all match what was
recorded when it was last read, as restic and borg do. Entries for files modified within the last
few seconds are not recorded ("racy" timestamps: a write in the same clock tick would not change
mtime), so the cache can make a snapshot faster but never wrong. Cached chunk lists are used only
if the index still has every chunk.

A restore records there the large files it creates (:class:`FilesRecorder`), so that a snapshot
of the restored tree reads only what changed since, and a later restore over it
(``overwrite``) takes those still unchanged as matching without reading them
(:meth:`FilesRecorder.known`), as it does those a snapshot of the tree recorded.

Stored in SQLite under ``$CAS_HOME/cache/files-v2-<repo id>.sqlite``; losing it costs only time.

Entries expire: each records when a snapshot last saw its path (read it, or found it unchanged),
and a snapshot's commit forgets entries not seen for ``max_age`` (default :data:`DEFAULT_MAX_AGE`,
30 days), so paths that are gone, or no longer snapshotted from this host, do not stay forever.
"""

from __future__ import annotations

import datetime as dt
import glob
import json
import logging
import os
import sqlite3
import struct
import sys
import threading
import time
from array import array
from typing import NamedTuple

import blake3

from cas.home import default_home

log = logging.getLogger(__name__)

_RACY_NS = 2_000_000_000
_PENDING_ROWS = 2000
_SEEN_BATCH = 500
DEFAULT_MAX_AGE = dt.timedelta(days=30)
"""Entries for paths no snapshot has seen for this long are forgotten."""
FILE_PATTERN = "files-*.sqlite"
"""The names of files caches under ``$CAS_HOME/cache`` (one per repository)."""


def _chunk_list(text: str) -> tuple[str, ...]:
    """The chunk IDs of a row (``json.dumps`` of a list of hex IDs), without the JSON parser for the
    usual shape; anything else is parsed as JSON (ValueError if it is not)."""
    if text.startswith('["') and text.endswith('"]') and "\\" not in text:
        return tuple(text[2:-2].split('", "'))
    return tuple(json.loads(text))


def _chunk_text(chunks: tuple[str, ...]) -> str:
    """``json.dumps(list(chunks))`` for hex IDs (which need no escaping), written out directly."""
    return '["' + '", "'.join(chunks) + '"]' if chunks else "[]"


class CachedFile(NamedTuple):
    """What the files cache knows of a file: its digest and chunks (a named tuple: one is made per
    file a snapshot looks up, and a tuple is made faster than a frozen dataclass)."""

    digest: str
    chunks: tuple[str, ...]


class DirRecord(NamedTuple):
    """What a restore recorded of a directory it finished (see :mod:`cas.ops.restore.records`):
    the directory (device, inode, and its ctime once finished), its tree ID, the
    :func:`listing_digest` of its files and, when it has one, the :func:`subtree_digest` of
    everything below it (empty if not)."""

    dev: int
    inode: int
    ctime_ns: int
    tree: str
    listing: bytes
    subtree: bytes = b""


_FS_ENCODING = sys.getfilesystemencoding()
_U64 = (1 << 64) - 1


def listing_digest(names: list[str], identities: list[int]) -> bytes:
    """The BLAKE3 of a directory's files' ``names`` and identities (``identities``: five integers
    for each name, as :func:`cas.ops.restore.records.identity` gives them), in the order given (the
    tree's). Names hold no NUL: joined by NULs, they are told apart. Each integer is digested as
    its 64 bits, little-endian (an inode number is unsigned, a time may be negative)."""
    try:
        packed = struct.pack(f"<{len(identities)}q", *identities)
    except struct.error:  # an inode number past 2**63: the same bits, unsigned
        unsigned = array("Q", [value & _U64 for value in identities])
        if sys.byteorder == "big":
            unsigned.byteswap()
        packed = unsigned.tobytes()
    return blake3.blake3("\0".join(names).encode(_FS_ENCODING, "surrogateescape") + b"\0" + packed).digest()


_SUBTREE_TAG = b"subtree-v1\0"
_SUBTREE_IDENTITY = struct.Struct("<QqqQI")


def subtree_digest(
    policy: int, files: list[tuple[bytes, tuple[int, int, int, int, int]]],
    dirs: list[tuple[bytes, tuple[int, int, int, int, int], bytes]],
) -> bytes:
    """The digest of a directory's subtree from what a restore knows of it: its regular ``files``
    (name, identity: inode, ctime, mtime, size, permission bits) and its subdirectories (name,
    identity with size 0, the subdirectory's own subtree digest), under ``policy`` (a byte: what
    else the restore that made it decided, see :mod:`cas.ops.restore.records`). The same bytes as
    the compiled helper's ``subtree_digest`` walk of the directory as it is (its module says how
    they are laid out): equal digests mean every entry below is the one known."""
    parts = [(name, b"f" + name + b"\0" + _SUBTREE_IDENTITY.pack(ino & _U64, ctime, mtime, size, mode & 0o7777))
             for name, (ino, ctime, mtime, size, mode) in files]
    parts += [(name, b"d" + name + b"\0" + _SUBTREE_IDENTITY.pack(ino & _U64, ctime, mtime, 0, mode & 0o7777) + digest)
              for name, (ino, ctime, mtime, _size, mode), digest in dirs]
    parts.sort()
    return blake3.blake3(_SUBTREE_TAG + bytes((policy,)) + b"".join(part for _, part in parts)).digest()


def _connect(path: str) -> sqlite3.Connection:
    """The files cache at ``path``, created (or brought up to date) if need be."""
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    db = sqlite3.connect(path, timeout=30, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    # A cache: a power loss may lose the last commits (never corrupt the file); no fsync per commit.
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute(
        "CREATE TABLE IF NOT EXISTS files (dir BLOB, name BLOB, size INTEGER, mtime_ns INTEGER,"
        " ctime_ns INTEGER, inode INTEGER, dev INTEGER, digest TEXT, chunks TEXT, seen_ns INTEGER,"
        " PRIMARY KEY (dir, name))"
    )
    db.execute(
        "CREATE TABLE IF NOT EXISTS dirs (path BLOB PRIMARY KEY, dev INTEGER, inode INTEGER, ctime_ns INTEGER,"
        " tree TEXT, listing BLOB, seen_ns INTEGER, subtree BLOB)"
    )
    if "subtree" not in [row[1] for row in db.execute("PRAGMA table_info(dirs)")]:  # a cache from before subtrees
        with db:
            db.execute("ALTER TABLE dirs ADD COLUMN subtree BLOB")
    columns = [row[1] for row in db.execute("PRAGMA table_info(files)")]
    if "seen_ns" not in columns:  # a cache written before entries expired: seen now
        with db:
            db.execute("ALTER TABLE files ADD COLUMN seen_ns INTEGER")
            db.execute("UPDATE files SET seen_ns = ?", (time.time_ns(),))
    return db


class FilesCache:
    """Rows keyed by (directory, name), looked up a batch of names at a time.

    What a snapshot reads is kept in a temporary table until :meth:`commit`, not in memory, so
    neither a huge directory nor a huge snapshot makes the cache grow the process; the entries it
    finds are remembered by row ID (8 bytes each) and marked seen at the commit.
    """

    def __init__(self, path: str, max_age: dt.timedelta | None = None) -> None:
        self._db = _connect(path)
        self._db.execute("PRAGMA temp_store=FILE")
        self._db.execute(
            "CREATE TEMP TABLE pending (dir BLOB, name BLOB, size INTEGER, mtime_ns INTEGER,"
            " ctime_ns INTEGER, inode INTEGER, dev INTEGER, digest TEXT, chunks TEXT, seen_ns INTEGER)"
        )
        self._pending: list[tuple[object, ...]] = []
        self._seen = array("q")
        """Row IDs of the entries looked up and found (their paths exist: seen by this snapshot)."""
        self._started = time.time_ns()
        self._cutoff = self._started - _RACY_NS
        self.max_age = DEFAULT_MAX_AGE if max_age is None else max_age

    def lookup(self, directory: bytes, names: list[bytes]) -> dict[bytes, tuple[tuple[int, ...], CachedFile]]:
        """``name -> ((size, mtime, ctime, inode, dev), cached file)`` for ``names`` of ``directory``
        (absolute, as bytes): a run of a few hundred names in byte order, looked up in one query.

        Rows between them for names that no longer exist come too, up to a bound; past it some
        files are merely read again.
        """
        if not names:
            return {}
        rows = self._db.execute(
            "SELECT name, size, mtime_ns, ctime_ns, inode, dev, digest, chunks, rowid FROM files"
            " WHERE dir = ? AND name >= ? AND name <= ? ORDER BY name LIMIT ?",
            (directory, names[0], names[-1], 4 * len(names)),
        ).fetchall()
        out = {}
        rowids = {}
        for name, size, mtime, ctime, inode, dev, digest, chunks, rowid in rows:
            try:
                key = bytes(name)
                out[key] = ((size, mtime, ctime, inode, dev), CachedFile(digest, _chunk_list(chunks)))
                rowids[key] = rowid
            except ValueError:
                continue
        # The names asked about exist now: their entries were seen (kept from expiring at commit).
        self._seen.extend(rowids[name] for name in names if name in rowids)
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
             _chunk_text(chunks), self._started)
        )
        if len(self._pending) >= _PENDING_ROWS:
            self._spill()

    def _spill(self) -> None:
        with self._db:
            self._db.executemany("INSERT INTO temp.pending VALUES (?,?,?,?,?,?,?,?,?,?)", self._pending)
        self._pending = []

    def commit(self, *, expire: bool = True) -> None:
        """Record what this snapshot read and saw, and (with ``expire``) forget entries not seen for
        ``max_age``; call only after its chunks are durable. A parallel snapshot's workers commit
        their rows without expiring: the main process expires once, after them."""
        self._spill()
        with self._db:
            # The rows looked up and found were seen: by row ID (8 bytes each in memory until now).
            # A row another snapshot sharing the cache replaced meanwhile is merely missed.
            seen, self._seen = self._seen, array("q")
            for start in range(0, len(seen), _SEEN_BATCH):
                batch = seen[start : start + _SEEN_BATCH]
                self._db.execute(
                    "UPDATE files SET seen_ns = ? WHERE seen_ns < ? AND rowid IN (SELECT value FROM json_each(?))",
                    (self._started, self._started, "[" + ",".join(map(str, batch)) + "]"),
                )
            self._db.execute(
                "INSERT OR REPLACE INTO files (dir, name, size, mtime_ns, ctime_ns, inode, dev, digest, chunks,"
                " seen_ns) SELECT * FROM temp.pending"
            )
            self._db.execute("DELETE FROM temp.pending")
        if expire:
            self.expire()

    def expire(self) -> int:
        """Forget entries whose paths no snapshot has seen for ``max_age``; returns how many."""
        cutoff = time.time_ns() - int(self.max_age.total_seconds() * 1e9)
        with self._db:
            self._db.execute("DELETE FROM dirs WHERE seen_ns < ?", (cutoff,))
            return int(self._db.execute("DELETE FROM files WHERE seen_ns < ?", (cutoff,)).rowcount)

    def compact(self) -> None:
        """Give the space of forgotten entries back to the file system, unless a snapshot is
        using the cache (then later entries reuse it anyway)."""
        try:
            self._db.execute("VACUUM")
        except sqlite3.OperationalError:
            pass

    def entries(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM files").fetchone()[0])

    def close(self) -> None:
        self._db.close()


class FilesRecorder:
    """Files a restore created, recorded in the files cache: while a file keeps the identity it had
    once named (size, mtime, ctime, inode, device), a snapshot takes its content as the entry's,
    unread (see :meth:`FilesCache.matches`).

    A file this restore created can be held by no mapping from before, through which a write would
    not change its times (see :mod:`cas.ops.restore.settled`), and any later write gives it a
    current mtime, never the stored one it was given; a stored mtime within the racy window of
    now is not recorded, as a snapshot would not record it. A row is true as soon as its file is
    named: rows go in every :data:`_PENDING_ROWS` and at :meth:`close`, the cache opened at the
    first (a restore with nothing to record never opens it). :meth:`add` is safe from any thread.
    """

    def __init__(self, path: str) -> None:
        self._path = path
        self._db: sqlite3.Connection | None = None
        self._started = time.time_ns()
        self._cutoff = self._started - _RACY_NS
        self._rows: list[tuple[object, ...]] = []
        self._dir_rows: list[tuple[object, ...]] = []
        self._lock = threading.Lock()
        self._failed: sqlite3.Error | OSError | None = None

    racy_ns = _RACY_NS
    """A stored mtime within this of the recorder's start is not trusted to be left by a write."""

    def add(self, directory: bytes, name: bytes, key: tuple[int, int, int, int, int], digest: str,
            chunks: tuple[str, ...]) -> None:
        """The file ``name`` of ``directory`` holds ``digest`` (cut into ``chunks``) while it is
        ``key`` (size, mtime, ctime, inode, device)."""
        if key[1] >= self._cutoff:
            return
        row = (directory, name, *key, digest, _chunk_text(chunks), self._started)
        with self._lock:
            self._rows.append(row)
            if len(self._rows) >= _PENDING_ROWS:
                self._write()

    def known(self, directory: bytes, names: list[bytes]) -> dict[bytes, tuple[tuple[int, ...], str]]:
        """``name -> ((size, mtime, ctime, inode, dev), digest)`` of the files of ``directory``
        (absolute, as bytes) among ``names`` (a few: a directory's large files, one query each)
        that the files cache holds, recorded by a restore or a snapshot: the file held content of
        ``digest`` while it had that identity (compare with :meth:`FilesCache.matches`). Empty
        when there is no cache or it cannot be read: it only spares reading."""
        if not names:
            return {}
        with self._lock:
            try:
                db = self._opened()
                if db is None:
                    return {}
                rows = [row for name in names for row in db.execute(
                    "SELECT name, size, mtime_ns, ctime_ns, inode, dev, digest FROM files WHERE dir = ? AND name = ?",
                    (directory, name))]
            except (sqlite3.Error, OSError):
                return {}
        return {bytes(name): ((size, mtime, ctime, inode, dev), digest)
                for name, size, mtime, ctime, inode, dev, digest in rows}

    def directories(self, root: bytes) -> dict[bytes, DirRecord]:
        """The directory records of ``root`` (absolute, as bytes) and of every directory below it
        (see :mod:`cas.ops.restore.records`), by path: one query. Empty when there is no cache or
        it cannot be read."""
        with self._lock:
            try:
                db = self._opened()
                if db is None:
                    return {}
                rows = db.execute(
                    "SELECT path, dev, inode, ctime_ns, tree, listing, subtree FROM dirs"
                    " WHERE path = ? OR (path > ? AND path < ?)",
                    (root, root.rstrip(b"/") + b"/", root.rstrip(b"/") + b"0")).fetchall()
            except (sqlite3.Error, OSError):
                return {}
        return {bytes(path): DirRecord(dev, inode, ctime, tree, bytes(listing), bytes(subtree or b""))
                for path, dev, inode, ctime, tree, listing, subtree in rows}

    def _opened(self) -> sqlite3.Connection | None:
        """The cache, opened now if it exists and was not (under :attr:`_lock`); None if it does
        not exist (a read never creates it)."""
        if self._db is None:
            if not os.path.exists(self._path):
                return None
            self._db = _connect(self._path)
        return self._db

    def add_directory(self, path: bytes, record: DirRecord) -> None:
        """Record what a restore knows of the directory ``path`` (absolute, as bytes) it finished."""
        with self._lock:
            self._dir_rows.append((path, *record[:5], self._started, record.subtree or None))
            if len(self._dir_rows) >= _PENDING_ROWS:
                self._write()

    def _write(self) -> None:
        rows, self._rows = self._rows, []
        dir_rows, self._dir_rows = self._dir_rows, []
        if not (rows or dir_rows) or self._failed is not None:
            return
        try:
            if self._db is None:
                self._db = _connect(self._path)
            with self._db:
                self._db.executemany("INSERT OR REPLACE INTO files VALUES (?,?,?,?,?,?,?,?,?,?)", rows)
                self._db.executemany(
                    "INSERT OR REPLACE INTO dirs (path, dev, inode, ctime_ns, tree, listing, seen_ns, subtree)"
                    " VALUES (?,?,?,?,?,?,?,?)", dir_rows)
        except (sqlite3.Error, OSError) as exc:  # what it would have spared costs time later, nothing more
            self._failed = exc

    def close(self) -> None:
        """Write what is left and close; logs a warning if the cache refused rows."""
        with self._lock:
            self._write()
            if self._db is not None:
                self._db.close()
                self._db = None
        if self._failed is not None:
            log.warning("the files cache did not take what this restore wrote (%s)", self._failed)


def files_cache_path(cache_dir: str, repo_id: str) -> str:
    """The files cache of the repository ``repo_id`` under ``cache_dir`` (``$CAS_HOME/cache``)."""
    return os.path.join(cache_dir, f"files-v2-{repo_id}.sqlite")


def open_recorder(repo_id: str) -> FilesRecorder:
    """A recorder into this host's files cache of the repository ``repo_id`` (under
    ``$CAS_HOME/cache``)."""
    return FilesRecorder(files_cache_path(os.path.join(default_home(), "cache"), repo_id))


def destination_recorded(path: bytes, st: os.stat_result) -> bool:
    """Whether some files cache of this host (``$CAS_HOME/cache``) records the directory ``path``
    (absolute, as bytes) as a restore left it, untouched since (``st``, its stat now, shows the
    device, inode and ctime recorded: see :mod:`cas.ops.restore.records`). Never raises: a cache
    that cannot be read records nothing."""
    for cache in files_cache_paths(os.path.join(default_home(), "cache")):
        try:
            db = sqlite3.connect(f"file:{cache}?mode=ro", uri=True, timeout=1)
            try:
                row = db.execute("SELECT 1 FROM dirs WHERE path = ? AND dev = ? AND inode = ? AND ctime_ns = ?",
                                 (path, st.st_dev, st.st_ino, st.st_ctime_ns)).fetchone()
            finally:
                db.close()
        except sqlite3.Error:
            continue
        if row is not None:
            return True
    return False


def files_cache_paths(cache_dir: str) -> list[str]:
    """The files caches (one per repository) under ``cache_dir`` (``$CAS_HOME/cache``)."""
    return sorted(glob.glob(os.path.join(glob.escape(cache_dir), FILE_PATTERN)))


def files_cache_bytes(cache_dir: str) -> int:
    """Bytes the files caches under ``cache_dir`` take, their SQLite journals included."""
    total = 0
    for path in files_cache_paths(cache_dir):
        for part in (path, path + "-wal", path + "-shm"):
            try:
                total += os.stat(part).st_size
            except OSError:
                pass
    return total


def expire_files_caches(cache_dir: str, max_age: dt.timedelta | None = None) -> int:
    """Forget, in every files cache under ``cache_dir``, entries not seen for ``max_age`` (default
    :data:`DEFAULT_MAX_AGE`), and give the space back to the file system; returns how many."""
    forgotten = 0
    for path in files_cache_paths(cache_dir):
        try:
            cache = FilesCache(path, max_age)
        except sqlite3.Error:
            continue  # not a database any more: it is only a cache, the next snapshot replaces it
        try:
            forgotten += cache.expire()
            cache.compact()
        finally:
            cache.close()
    return forgotten


def remove_files_caches(cache_dir: str) -> int:
    """Delete every files cache under ``cache_dir``; returns how many. A snapshot running meanwhile
    keeps writing to the copy it has open, which is then lost: it costs the next snapshot time only."""
    removed = 0
    for path in files_cache_paths(cache_dir):
        for part in (path, path + "-wal", path + "-shm"):
            try:
                os.unlink(part)
            except FileNotFoundError:
                continue
            removed += part == path
    return removed
