"""A local cache of verified chunks, bounded in size, shared by every process on a host.

Restoring many executions that share dependencies from a remote backend then downloads each chunk
once. The cache is never the only copy of anything: losing any part of it costs only time.

Entries are raw chunk bytes under ``<root>/<id[:2]>/<id>``, written to a temporary name beside
the entry and renamed, so a reader never sees a partial entry; every read is re-hashed, and an
entry that does not match its name is deleted and treated as a miss.

**The bound.** A ledger (``<root>/ledger.sqlite``, SQLite in WAL mode) holds one row per entry
(its size on disk, rounded up to 4 KiB blocks, and when it was last used) and the running total.
A writer reserves an entry's size in the ledger *before* writing its bytes; if that takes the
total over the cap, the same short transaction evicts the least recently used entries (deleting
their files, a metadata operation) until it fits, or gives up caching this chunk. The bytes are
written and renamed outside any lock; a second transaction marks the entry complete. So the files
under the root never hold more than the cap (the ledger and its directories aside), and no lock
is held while data moves. Two processes caching one chunk: the second finds the row and skips it.

An entry whose writer died keeps its reservation until it is older than :data:`STALE_WRITE_NS`;
then it is evicted like any other (with its temporary). A writer that was that slow finds its row
gone when it marks it complete, and deletes its own file.

**Use** is recorded cheaply: hits (and fetches, the misses) are counted in memory and written to
the ledger with the entries' new use times in one transaction per :data:`FLUSH_EVERY` events or
:data:`FLUSH_SECONDS`, and at :meth:`ChunkCache.close`. Eviction order is least recently used up
to that delay. The counters persist, so ``cas cache`` shows a hit rate over every process.

**The cap**: ``max_bytes`` if given, else ``$CAS_CACHE_MAX`` (e.g. ``10GiB``), else
:func:`default_max_bytes`: 10 GiB or a tenth of what the cache's file system has free (plus what
the cache already holds), whichever is smaller, so the cache can never fill a disk.

A cache created by an older cas (entries and no ledger) is adopted: its entries are entered into a
new ledger, by file access time, on first open.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

from cas.errors import CasError, ConfigurationError
from cas.format.hashing import hexdigest, is_digest

KiB, MiB, GiB, TiB = 1 << 10, 1 << 20, 1 << 30, 1 << 40
DEFAULT_MAX_BYTES = 10 * GiB
"""The most the cache holds by default, whatever the disk's size."""
DEFAULT_FREE_SHARE = 0.10
"""By default the cache takes at most this share of its file system's free space (plus its own)."""
BLOCK = 4096
"""Entries are accounted in blocks of this size, as a file system allocates them."""
STALE_WRITE_NS = 120 * 1_000_000_000
"""A reservation whose writer has not completed it in this long is evicted like an entry."""
FLUSH_EVERY = 256
FLUSH_SECONDS = 2.0
LEDGER = "ledger.sqlite"
CLAIMS = "claims"
"""Subdirectory of the root holding prefetch claims (see :mod:`cas.ops.prefetch`)."""
ENV_MAX = "CAS_CACHE_MAX"
_TEMP = ".tmp-"

_SIZE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([kmgt]?)(i?)(b?)", re.IGNORECASE)
_UNIT = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4}


def parse_size(text: str) -> int:
    """Bytes from ``10GiB``, ``512MiB``, ``2G`` (binary, as du and restic read it), ``500MB``
    (decimal) or a plain number of bytes."""
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise ConfigurationError(f"invalid size {text!r}: use a number with a unit, e.g. 10GiB, 500MiB, 2G")
    number, unit, binary, byte = match.groups()
    power = _UNIT[unit.lower()]
    base = 1000 if (power and byte and not binary) else 1024
    if binary and not power:
        raise ConfigurationError(f"invalid size {text!r}: use a number with a unit, e.g. 10GiB, 500MiB, 2G")
    value = float(number) * base**power
    if value > 1 << 62:
        raise ConfigurationError(f"size {text!r} is too large")
    return int(value)


def allocated(n: int) -> int:
    """The bytes an entry of ``n`` bytes is accounted as: whole blocks, at least one."""
    return max(1, -(-n // BLOCK)) * BLOCK


def default_max_bytes(root: str, held: int = 0) -> int:
    """10 GiB, or a tenth of the free space of ``root``'s file system plus ``held`` (what the
    cache holds already, so a filling cache does not shrink its own cap), whichever is smaller."""
    try:
        st = os.statvfs(root)
    except OSError:
        return DEFAULT_MAX_BYTES
    return min(DEFAULT_MAX_BYTES, int(DEFAULT_FREE_SHARE * (st.f_bavail * st.f_frsize + held)))


@dataclass(frozen=True)
class CacheStats:
    root: str
    bytes: int
    """What the entries take, as accounted (whole blocks), reservations included."""
    entries: int
    max_bytes: int
    hits: int
    misses: int
    """Chunks fetched from a backend and put into the cache (by restores, reads and prefetch)."""

    @property
    def hit_rate(self) -> float | None:
        total = self.hits + self.misses
        return self.hits / total if total else None

    def to_dict(self) -> dict[str, object]:
        return {
            "root": self.root, "bytes": self.bytes, "entries": self.entries, "max_bytes": self.max_bytes,
            "hits": self.hits, "misses": self.misses, "hit_rate": self.hit_rate,
        }


class ChunkCache:
    def __init__(self, root: str, max_bytes: int | None = None) -> None:
        self.root = os.path.abspath(root)
        os.makedirs(self.root, mode=0o700, exist_ok=True)
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._pid = 0
        self._used: dict[str, int] = {}
        self._hits = 0
        self._misses = 0
        self._flushed_at = time.monotonic()
        if max_bytes is None and os.environ.get(ENV_MAX):
            max_bytes = parse_size(os.environ[ENV_MAX])
        if max_bytes is None:
            try:
                held = self._total()
            except sqlite3.Error:
                held = 0
            max_bytes = default_max_bytes(self.root, held)
        if max_bytes < 0:
            raise ConfigurationError("the cache size must not be negative")
        self.max_bytes = max_bytes

    # -- the ledger -----------------------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        """This process's ledger connection (opened again in a forked child). Call under _lock."""
        if self._db is None or self._pid != os.getpid():
            try:
                db = self._open_ledger()
            except sqlite3.OperationalError:
                raise  # busy beyond the timeout, or the directory is not writable: not damage
            except sqlite3.DatabaseError:
                # Not a database (any more): the ledger is only accounting, rebuilt from the files.
                for suffix in ("", "-wal", "-shm"):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(os.path.join(self.root, LEDGER + suffix))
                db = self._open_ledger()
            self._db, self._pid = db, os.getpid()
        return self._db

    def _open_ledger(self) -> sqlite3.Connection:
        db = sqlite3.connect(
            os.path.join(self.root, LEDGER), timeout=60, isolation_level=None, check_same_thread=False
        )
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")  # losing the last commits on power loss costs only time
            db.execute("PRAGMA wal_autocheckpoint=256")  # keep the write-ahead log near 1 MiB
            db.execute("PRAGMA journal_size_limit=1048576")  # 1 MiB
            with self._transaction(db):
                if db.execute("PRAGMA user_version").fetchone()[0] == 0:
                    self._create(db)
            db.execute("SELECT value FROM totals WHERE name = 'bytes'").fetchone()
        except BaseException:
            db.close()
            raise
        return db

    @staticmethod
    @contextlib.contextmanager
    def _transaction(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
        """A write transaction: ``BEGIN IMMEDIATE`` takes the ledger's write lock at once."""
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def _create(self, db: sqlite3.Connection) -> None:
        db.execute(
            "CREATE TABLE IF NOT EXISTS entries (id TEXT PRIMARY KEY, size INTEGER NOT NULL,"
            " used_ns INTEGER NOT NULL, writer TEXT)"
        )
        db.execute("CREATE INDEX IF NOT EXISTS entries_by_use ON entries (used_ns)")
        db.execute("CREATE TABLE IF NOT EXISTS totals (name TEXT PRIMARY KEY, value INTEGER NOT NULL)")
        db.executemany("INSERT OR IGNORE INTO totals VALUES (?, 0)", [("bytes",), ("hits",), ("misses",)])
        # Adopt entries an older cas left (no ledger then), or that survived a deleted ledger.
        rows = [(chunk_id, allocated(size), used_ns) for chunk_id, size, used_ns in self._scan()]
        db.executemany("INSERT OR IGNORE INTO entries VALUES (?, ?, ?, NULL)", rows)
        db.execute("UPDATE totals SET value = (SELECT COALESCE(SUM(size), 0) FROM entries) WHERE name = 'bytes'")
        db.execute("PRAGMA user_version = 1")

    def _scan(self) -> Iterator[tuple[str, int, int]]:
        """(id, size, access time) of every complete entry file under the root."""
        for sub in _subdirectories(self.root):
            for entry in _entries(sub.path):
                if is_digest(entry.name) and entry.name[:2] == sub.name:
                    with contextlib.suppress(OSError):
                        st = entry.stat(follow_symlinks=False)
                        yield entry.name, st.st_size, st.st_atime_ns

    def _total(self) -> int:
        with self._lock:
            return int(self._conn().execute("SELECT value FROM totals WHERE name = 'bytes'").fetchone()[0])

    def _make_room(self, db: sqlite3.Connection, need: int) -> bool:
        """Within a write transaction: evict least recently used entries until ``need`` more
        bytes fit under the cap. False if they cannot (everything left is being written)."""
        total = int(db.execute("SELECT value FROM totals WHERE name = 'bytes'").fetchone()[0])
        excess = total + need - self.max_bytes
        if excess <= 0:
            return True
        stale = time.time_ns() - STALE_WRITE_NS
        freed = 0
        victims = []
        for chunk_id, size, writer in db.execute(
            "SELECT id, size, writer FROM entries WHERE writer IS NULL OR used_ns < ? ORDER BY used_ns", (stale,)
        ):
            victims.append((chunk_id, writer))
            freed += size
            if freed >= excess:
                break
        if freed < excess:
            return False
        for chunk_id, writer in victims:
            self._remove_files(chunk_id, temporaries=writer is not None)
        db.executemany("DELETE FROM entries WHERE id = ?", [(v,) for v, _ in victims])
        db.execute("UPDATE totals SET value = value - ? WHERE name = 'bytes'", (freed,))
        return True

    def _remove_files(self, chunk_id: str, *, temporaries: bool) -> None:
        path = self._path(chunk_id)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        if temporaries:
            for entry in _entries(os.path.dirname(path)):
                if entry.name.startswith(chunk_id + _TEMP):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.path)

    def _note(self, chunk_id: str | None, *, hit: bool) -> None:
        with self._lock:
            if hit:
                self._hits += 1
                if chunk_id is not None:
                    self._used[chunk_id] = time.time_ns()
            else:
                self._misses += 1
            due = (self._hits + self._misses >= FLUSH_EVERY
                   or time.monotonic() - self._flushed_at >= FLUSH_SECONDS)
        if due:
            self.flush()

    def flush(self) -> None:
        """Write the use times and counters noted since the last flush to the ledger."""
        with self._lock:
            used, hits, misses = self._used, self._hits, self._misses
            self._used, self._hits, self._misses = {}, 0, 0
            self._flushed_at = time.monotonic()
            if not (used or hits or misses):
                return
            try:
                with self._transaction(self._conn()) as db:
                    db.executemany("UPDATE entries SET used_ns = ? WHERE id = ?", [(t, c) for c, t in used.items()])
                    db.executemany("UPDATE totals SET value = value + ? WHERE name = ?",
                                   [(hits, "hits"), (misses, "misses")])
            except sqlite3.Error:
                pass  # use times and counters are advisory

    def close(self) -> None:
        self.flush()
        with self._lock:
            if self._db is not None and self._pid == os.getpid():
                self._db.close()
            self._db = None

    # -- entries --------------------------------------------------------------------------------

    def _path(self, chunk_id: str) -> str:
        if not is_digest(chunk_id):
            raise ValueError(f"not a chunk id: {chunk_id!r}")
        return os.path.join(self.root, chunk_id[:2], chunk_id)

    def __contains__(self, chunk_id: str) -> bool:
        return os.path.exists(self._path(chunk_id))

    def get(self, chunk_id: str) -> bytes | None:
        """The chunk's verified bytes, or None (a miss, or an entry that failed verification and
        was removed)."""
        path = self._path(chunk_id)
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError:
            return None
        if hexdigest(data) != chunk_id:
            self._drop(chunk_id)
            return None
        self._note(chunk_id, hit=True)
        return data

    def _drop(self, chunk_id: str) -> None:
        with self._lock:
            try:
                with self._transaction(self._conn()) as db:
                    row = db.execute("SELECT size FROM entries WHERE id = ?", (chunk_id,)).fetchone()
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(self._path(chunk_id))
                    if row is not None:
                        db.execute("DELETE FROM entries WHERE id = ?", (chunk_id,))
                        db.execute("UPDATE totals SET value = value - ? WHERE name = 'bytes'", (row[0],))
            except sqlite3.Error:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self._path(chunk_id))

    def put(self, chunk_id: str, data: bytes) -> None:
        """Cache a chunk just fetched from a backend (counted as a miss). Best effort: a full
        disk, a chunk larger than the cap or a race with another process is not an error."""
        path = self._path(chunk_id)
        self._note(None, hit=False)
        if os.path.exists(path):
            return
        size = allocated(len(data))
        if size > self.max_bytes:
            return
        token = secrets.token_hex(8)
        with self._lock:
            try:
                with self._transaction(self._conn()) as db:
                    try:
                        db.execute("INSERT INTO entries VALUES (?, ?, ?, ?)", (chunk_id, size, time.time_ns(), token))
                    except sqlite3.IntegrityError:
                        return  # cached, or being cached, by someone else
                    if not self._make_room(db, size):
                        raise _NoRoom
                    db.execute("UPDATE totals SET value = value + ? WHERE name = 'bytes'", (size,))
            except (_NoRoom, sqlite3.Error):
                return
        tmp = f"{path}{_TEMP}{token}"
        written = False
        try:
            os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
            written = True
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        self._complete(chunk_id, token, written)

    def _complete(self, chunk_id: str, token: str, written: bool) -> None:
        """Mark a reservation complete, or give it back when the write failed. A reservation that
        was evicted as stale meanwhile no longer accounts for the file: remove it."""
        with self._lock:
            try:
                with self._transaction(self._conn()) as db:
                    if written:
                        done = db.execute(
                            "UPDATE entries SET writer = NULL WHERE id = ? AND writer = ?", (chunk_id, token)
                        ).rowcount
                    else:
                        done = 0
                        row = db.execute("SELECT size FROM entries WHERE id = ? AND writer = ?",
                                         (chunk_id, token)).fetchone()
                        if row is not None:
                            db.execute("DELETE FROM entries WHERE id = ?", (chunk_id,))
                            db.execute("UPDATE totals SET value = value - ? WHERE name = 'bytes'", (row[0],))
                    if written and not done:
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(self._path(chunk_id))
            except sqlite3.Error:
                pass  # the reservation stays until it is stale, then it is evicted with the file

    # -- maintenance ----------------------------------------------------------------------------

    def stats(self) -> CacheStats:
        self.flush()
        with self._ledger_errors(), self._lock:
            db = self._conn()
            totals = dict(db.execute("SELECT name, value FROM totals").fetchall())
            entries = int(db.execute("SELECT COUNT(*) FROM entries").fetchone()[0])
        return CacheStats(self.root, int(totals.get("bytes", 0)), entries, self.max_bytes,
                          int(totals.get("hits", 0)), int(totals.get("misses", 0)))

    def prune(self, max_bytes: int | None = None) -> int:
        """Bring the ledger in line with the files (entries it lacks are added, rows whose file is
        gone dropped, temporaries and claims no process holds removed), then evict least recently
        used entries down to ``max_bytes`` (default: the cap). Returns the entries evicted."""
        self.flush()
        target = self.max_bytes if max_bytes is None else max_bytes
        files = {chunk_id: (allocated(size), used) for chunk_id, size, used in self._scan()}
        stale = time.time_ns() - STALE_WRITE_NS
        with self._ledger_errors(), self._lock, self._transaction(self._conn()) as db:
            rows = {c: w for c, w in db.execute("SELECT id, writer FROM entries")}
            db.executemany("INSERT OR IGNORE INTO entries VALUES (?, ?, ?, NULL)",
                           [(c, s, u) for c, (s, u) in files.items() if c not in rows])
            gone = [c for c, w in rows.items() if w is None and c not in files and c not in self]
            db.executemany("DELETE FROM entries WHERE id = ?", [(c,) for c in gone])
            db.execute("UPDATE totals SET value = (SELECT COALESCE(SUM(size), 0) FROM entries) WHERE name = 'bytes'")
            self._remove_orphan_temporaries(db, stale)
            before = int(db.execute("SELECT COUNT(*) FROM entries").fetchone()[0])
            saved, self.max_bytes = self.max_bytes, target
            try:
                self._make_room(db, 0)
            finally:
                self.max_bytes = saved
            evicted = before - int(db.execute("SELECT COUNT(*) FROM entries").fetchone()[0])
        self._remove_free_claims()
        return evicted

    def _remove_orphan_temporaries(self, db: sqlite3.Connection, stale: int) -> None:
        """Temporaries whose reservation is gone, or stale: their writers died."""
        for sub in _subdirectories(self.root):
            for entry in _entries(sub.path):
                if _TEMP not in entry.name:
                    continue
                chunk_id, _, token = entry.name.partition(_TEMP)
                row = db.execute("SELECT writer, used_ns FROM entries WHERE id = ?", (chunk_id,)).fetchone()
                if row is None or row[0] != token or row[1] < stale:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.path)

    def _remove_free_claims(self) -> None:
        from cas.repo.locks import exclusive

        for entry in _entries(os.path.join(self.root, CLAIMS)):
            with exclusive(entry.path, wait=False):
                pass  # held: removed on release; free: taken and removed now

    def clear(self) -> int:
        """Remove every entry (and every temporary). Returns the entries removed. Processes
        writing entries meanwhile find their reservation gone and remove what they wrote."""
        self.flush()
        with self._ledger_errors(), self._lock, self._transaction(self._conn()) as db:
            count = int(db.execute("SELECT COUNT(*) FROM entries").fetchone()[0])
            for sub in _subdirectories(self.root):
                for entry in _entries(sub.path):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.path)
            db.execute("DELETE FROM entries")
            db.execute("UPDATE totals SET value = 0 WHERE name = 'bytes'")
        self._remove_free_claims()
        return count

    @contextlib.contextmanager
    def _ledger_errors(self) -> Iterator[None]:
        """For the maintenance calls, which a user runs and must see fail in one line."""
        try:
            yield
        except sqlite3.Error as exc:
            raise CasError(f"chunk cache ledger {os.path.join(self.root, LEDGER)}: {exc}") from None

    def size_on_disk(self) -> int:
        """Bytes the entries and temporaries under the root take (allocated blocks)."""
        total = 0
        for sub in _subdirectories(self.root):
            for entry in _entries(sub.path):
                with contextlib.suppress(OSError):
                    total += entry.stat(follow_symlinks=False).st_blocks * 512
        return total


class _NoRoom(Exception):
    pass


def _entries(directory: str) -> list[os.DirEntry[str]]:
    """The entries of a directory; none when it does not exist."""
    try:
        with os.scandir(directory) as it:
            return list(it)
    except (FileNotFoundError, NotADirectoryError):
        return []


def _subdirectories(root: str) -> list[os.DirEntry[str]]:
    """The root's two-hex-digit subdirectories, which hold the entries."""
    return [e for e in _entries(root) if len(e.name) == 2 and e.name.isalnum() and e.is_dir(follow_symlinks=False)]
