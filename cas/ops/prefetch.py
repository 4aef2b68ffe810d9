"""Prefetch: fill this host's chunk cache with what executions need, before anything restores them.

A fleet warms its workers with ``cas prefetch ID...`` while jobs are still being scheduled; the
restores that follow read every chunk from the cache.

1. Walk each execution's trees (tree nodes are cached as they are read) and collect the data
   chunks of its files; those the cache holds already are left alone.
2. Locate the rest (the index, or pack trailers for blobs it lacks) and group them by pack.
3. Fetch each pack's chunks with one ranged read per stretch of the pack (gaps up to
   :data:`cas.repo.reader.MAX_GAP` read through, at most :data:`cas.repo.reader.MAX_RUN_BYTES` a read), verify every chunk
   against its BLAKE3 and put it into the cache. Packs are fetched by :data:`WORKERS` threads.

**Nothing twice across processes.** Fetching a pack's chunks is done under a claim on that pack:
a host-local lock (:mod:`cas.repo.locks`) on ``<cache>/claims/<pack id>``. A process that finds
a pack claimed goes on with other packs, and comes back to it at the end: it waits for the
claim, then fetches only what the cache still lacks (normally nothing). Claims are ``flock``
locks, released by the kernel when their holder dies, so none is ever stale, and each claim file
is removed by its holder. Tree nodes are small and read without claims. Restores do not take
claims; they read what prefetch cached.

The cache stays bounded: prefetching more than its cap evicts the least recently used chunks,
possibly ones just fetched; the report says how many of the needed chunks the cache holds at the end.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from cas.errors import ConfigurationError, IntegrityError
from cas.format.keys import pack_key
from cas.format.trees import DIR, FILE
from cas.repo.chunkcache import CLAIMS, ChunkCache
from cas.repo.locks import exclusive
from cas.repo.reader import pack_runs, read_trees
from cas.repo.repository import Repository, verify_blob
from cas.types import BlobKind, BlobLocation

"""Bytes between two wanted chunks of a pack that are read through rather than split into two reads."""
WORKERS = 4
"""Packs fetched at once by one process."""


@dataclass
class PrefetchReport:
    executions: int = 0
    chunks: int = 0
    """Distinct data chunks the executions need."""
    bytes: int = 0
    """Their size (uncompressed)."""
    already_cached: int = 0
    fetched_chunks: int = 0
    fetched_bytes: int = 0
    """Bytes read from the backend (stored, compressed; read-through gaps included)."""
    packs: int = 0
    """Packs read from."""
    waited_for: int = 0
    """Packs another process was fetching when this one wanted them."""
    cached: int = 0
    """Needed chunks in the cache at the end (fewer than ``chunks`` when it is too small to hold them all)."""
    failures: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return {
            "executions": self.executions, "chunks": self.chunks, "bytes": self.bytes,
            "already_cached": self.already_cached, "fetched_chunks": self.fetched_chunks,
            "fetched_bytes": self.fetched_bytes, "packs": self.packs, "waited_for": self.waited_for,
            "cached": self.cached, "failures": list(self.failures),
        }


def prefetch(repo: Repository, roots: Iterable[str], *, workers: int = WORKERS) -> PrefetchReport:
    """Fill ``repo``'s chunk cache with the data chunks of the trees ``roots`` (snapshot roots).

    Chunks that cannot be fetched (missing or corrupt in the repository) are listed in the
    report's ``failures`` after everything else was fetched; the caller decides whether to raise.
    """
    cache = repo.chunk_cache
    if cache is None:
        raise ConfigurationError(
            "nothing to prefetch into: this repository is read without a chunk cache "
            "(a local repository, or CAS_CHUNK_CACHE=0)"
        )
    report = PrefetchReport()
    roots = list(dict.fromkeys(roots))
    report.executions = len(roots)
    needed = _data_chunks(repo, roots)
    located = repo.locate(needed)
    report.chunks = len(needed)
    report.bytes = sum(loc.raw_length for loc in located.values())
    by_pack: dict[str, list[BlobLocation]] = {}
    for chunk_id in needed:
        if chunk_id in cache:
            report.already_cached += 1
            continue
        loc = located.get(chunk_id)
        if loc is None or loc.kind != BlobKind.DATA:
            report.failures.append(f"chunk {chunk_id[:16]} is missing from the repository")
            continue
        by_pack.setdefault(loc.pack_id, []).append(loc)
    claims = os.path.join(cache.root, CLAIMS)
    os.makedirs(claims, mode=0o700, exist_ok=True)
    fetcher = _Fetcher(repo, cache, claims, report)
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="cas-prefetch") as pool:
        deferred = [p for p, done in zip(by_pack, pool.map(fetcher.try_pack, by_pack.items())) if not done]
        report.waited_for = len(deferred)
        list(pool.map(fetcher.wait_for_pack, ((p, by_pack[p]) for p in deferred)))
    report.cached = sum(1 for c in needed if c in cache)
    cache.flush()
    return report


def _data_chunks(repo: Repository, roots: list[str]) -> list[str]:
    """Every data chunk of the files in the trees under ``roots``, once, in the order met: level by
    level, each level's trees located with one query and read together (one request per stretch
    of a tree pack, :func:`~cas.repo.reader.read_trees`), not one query and one read per tree."""
    chunks: dict[str, None] = {}
    seen: set[str] = set()
    level = list(dict.fromkeys(roots))
    while level:
        seen.update(level)
        located = repo.locate(level)
        read = read_trees(repo, [(tree, located.get(tree)) for tree in level])
        below: dict[str, None] = {}
        for tree in level:
            entries = read.get(tree)
            if entries is None:
                entries = repo.read_tree(tree, located.get(tree))  # raises what is wrong with it
            for entry in entries:
                if entry.type == DIR:
                    if entry.tree not in seen:
                        below[entry.tree] = None
                elif entry.type == FILE:
                    chunks.update(dict.fromkeys(entry.chunks))
        level = list(below)
    return list(chunks)


class _Fetcher:
    """Fetches packs' chunks into the cache under claims; shared by the pool's threads."""

    def __init__(self, repo: Repository, cache: ChunkCache, claims: str, report: PrefetchReport) -> None:
        self.repo = repo
        self.cache = cache
        self.claims = claims
        self.report = report
        self._lock = threading.Lock()

    def try_pack(self, item: tuple[str, list[BlobLocation]]) -> bool:
        """Fetch a pack's chunks if no other process is; False (nothing done) if one is."""
        pack_id, locations = item
        with exclusive(os.path.join(self.claims, pack_id), wait=False) as held:
            if held:
                self._fetch(pack_id, locations)
            return held

    def wait_for_pack(self, item: tuple[str, list[BlobLocation]]) -> None:
        """Wait for another process's claim, then fetch what the cache still lacks."""
        pack_id, locations = item
        with exclusive(os.path.join(self.claims, pack_id)):
            self._fetch(pack_id, locations)

    def _fetch(self, pack_id: str, locations: list[BlobLocation]) -> None:
        wanted = [loc for loc in locations if loc.id not in self.cache]
        if not wanted:
            return
        fetched = chunks = 0
        failures = []
        for run in pack_runs(wanted):
            begin = run[0].offset
            try:
                data = self.repo.backend.get(pack_key(pack_id), begin, run[-1].offset + run[-1].length - begin)
            except FileNotFoundError:
                failures += [f"chunk {loc.id[:16]}: pack {pack_id[:16]} is missing from the backend" for loc in run]
                continue
            fetched += len(data)
            for loc in run:
                try:
                    raw = verify_blob(loc.id, loc, data[loc.offset - begin : loc.offset - begin + loc.length])
                except IntegrityError as exc:
                    failures.append(str(exc))
                    continue
                self.cache.put(loc.id, raw)
                chunks += 1
        with self._lock:
            self.report.packs += 1
            self.report.fetched_bytes += fetched
            self.report.fetched_chunks += chunks
            self.report.failures += failures
