"""Reading stored files back: chunk runs fetched with one range read each, every chunk verified.

Adjacent chunks of a file that sit next to each other in one pack (the common case: a file's chunks
are written in order) are fetched with a single ranged GET, bounded by :data:`MAX_RUN_BYTES`.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from functools import partial

from cas.errors import CasError, IntegrityError
from cas.format.hashing import new_hasher
from cas.format.keys import pack_key
from cas.format.trees import FILE, Entry, decode_node
from cas.repo.repository import Repository, verify_blob
from cas.types import BlobKind, BlobLocation

MAX_RUN_BYTES = 32 * 1024 * 1024
MAX_GAP = 256 * 1024


def pack_runs(
    locations: list[BlobLocation], *, max_gap: int = MAX_GAP, max_bytes: int = MAX_RUN_BYTES
) -> Iterator[list[BlobLocation]]:
    """Blobs grouped into stretches of one pack, each read with one ranged request: in (pack,
    offset) order, a stretch ends at another pack, a gap over ``max_gap`` or ``max_bytes`` in all."""
    run: list[BlobLocation] = []
    for loc in sorted(locations, key=lambda loc: (loc.pack_id, loc.offset)):
        if run and (
            loc.pack_id != run[0].pack_id
            or loc.offset - (run[-1].offset + run[-1].length) > max_gap
            or loc.offset + loc.length - run[0].offset > max_bytes
        ):
            yield run
            run = []
        run.append(loc)
    if run:
        yield run


def prefetch(repo: Repository, locations: list[BlobLocation], *, max_gap: int = MAX_GAP) -> dict[str, bytes]:
    """Verified raw chunks for many small files at once: one ranged read per stretch of a pack.

    Chunks that sit near each other in a pack (a directory's small files usually do) are fetched
    together, gaps up to ``max_gap`` included. A chunk that fails verification is left out, so the
    file that needs it is fetched on its own and reports the error under its own path.
    """
    return dict(prefetched_chunks(repo, locations, max_gap=max_gap))


#: Tree nodes closer than this in a pack are read with one request: a snapshot writes the nodes of a
#: directory's subdirectories one after another into tree packs of their own.
TREE_GAP = 64 * 1024


def read_trees(
    repo: Repository, located: list[tuple[str, BlobLocation | None]], *, max_gap: int = TREE_GAP
) -> dict[str, list[Entry]]:
    """Many directories' entries (each as :meth:`Repository.read_tree` gives it), their nodes read
    together: one ranged read per stretch of a pack instead of one read per node. A directory whose
    node is in the chunk cache, not located here, split into parts or not what its ID names is
    read on its own by :meth:`Repository.read_tree`; one that cannot be read is left out, for the
    caller to read again and report."""
    cache = repo.chunk_cache
    out: dict[str, list[Entry]] = {}
    alone: list[tuple[str, BlobLocation | None]] = []
    together: list[BlobLocation] = []
    for tree_id, loc in located:
        if loc is None or loc.kind != BlobKind.TREE or loc.id != tree_id or (cache is not None and tree_id in cache):
            alone.append((tree_id, loc))
        else:
            together.append(loc)
    for run in pack_runs(together, max_gap=max_gap):
        begin = run[0].offset
        try:
            data = repo.backend.get(pack_key(run[0].pack_id), begin, run[-1].offset + run[-1].length - begin)
        except (CasError, OSError):
            alone.extend((loc.id, loc) for loc in run)
            continue
        for loc in run:
            try:
                raw = verify_blob(loc.id, loc, data[loc.offset - begin : loc.offset - begin + loc.length])
                node = decode_node(raw)
            except CasError:
                node = None
            if isinstance(node, list):
                out[loc.id] = node
                if cache is not None:
                    cache.put(loc.id, raw)
            else:
                alone.append((loc.id, loc))
    for tree_id, loc in alone:
        try:
            out[tree_id] = repo.read_tree(tree_id, loc)
        except (CasError, OSError):
            continue
    return out


def prefetched_chunks(
    repo: Repository, locations: list[BlobLocation], *, max_gap: int = MAX_GAP
) -> Iterator[tuple[str, bytes]]:
    """:func:`prefetch`, each chunk given as soon as it is verified, in (pack, offset) order."""
    for loc, payload in fetched_payloads(repo, locations, max_gap=max_gap):
        raw = checked_payload(repo, loc, payload)
        if raw is not None:
            yield loc.id, raw


def fetched_payloads(
    repo: Repository, locations: list[BlobLocation], *, max_gap: int = MAX_GAP
) -> Iterator[tuple[BlobLocation, bytes]]:
    """The stored (encoded, not yet verified) bytes of data chunks, one ranged read per stretch of
    a pack, in (pack, offset) order; chunks of a pack that is gone are left out."""
    wanted = {loc.id: loc for loc in locations if loc.kind == BlobKind.DATA}
    for run in pack_runs(list(wanted.values()), max_gap=max_gap):
        begin = run[0].offset
        try:
            data = repo.backend.get(pack_key(run[0].pack_id), begin, run[-1].offset + run[-1].length - begin)
        except FileNotFoundError:
            continue
        for loc in run:
            yield loc, data[loc.offset - begin : loc.offset - begin + loc.length]


def checked_payload(repo: Repository, loc: BlobLocation, payload: bytes) -> bytes | None:
    """:func:`verified_chunk`, or None if the payload is not the chunk."""
    try:
        return verified_chunk(repo, loc.id, loc, payload)
    except IntegrityError:
        return None


def verified_chunk(repo: Repository, chunk_id: str, loc: BlobLocation, payload: bytes | memoryview) -> bytes | memoryview:
    """A chunk's bytes from its stored payload, verified (IntegrityError if they are not the
    chunk) and added to the chunk cache (a payload stored raw is returned as given)."""
    raw = verify_blob(chunk_id, loc, payload)
    if repo.chunk_cache is not None:
        repo.chunk_cache.put(chunk_id, raw)
    return raw


def file_chunks(
    repo: Repository,
    entry: Entry,
    locations: dict[str, BlobLocation],
    path: str,
    prefetched: dict[str, bytes] | None = None,
) -> Iterator[bytes]:
    """The verified chunks of a file entry, in order. Raises IntegrityError naming ``path``.

    Chunks in ``prefetched`` (verified already) or in the repository's local chunk cache (if it has
    one) are taken from there; the rest are fetched in runs and added to the cache.
    """
    for verified in chunk_sources(repo, entry, locations, path, prefetched):
        yield verified()


def chunk_sources(
    repo: Repository,
    entry: Entry,
    locations: dict[str, BlobLocation],
    path: str,
    prefetched: dict[str, bytes] | None = None,
    *,
    views: bool = False,
) -> Iterator[Callable[[], bytes | memoryview]]:
    """:func:`file_chunks` in two steps: for each chunk, in order, a call that gives its verified
    bytes (or raises IntegrityError naming ``path``). The ranged reads are made as the iterator
    reaches each run; the calls decompress and hash, so a caller may make them on several threads
    (both release the GIL) while one thread reads on.

    ``views``: a chunk stored raw is given as a read-only view of the range that holds it, from the
    backend's ``get_view`` (no copy of its bytes; the view keeps that whole range in memory, or the
    pack mapped, for a local repository), for a caller that keeps a file's chunks only a short
    while, as a file reader does."""
    if prefetched and all(c in prefetched for c in entry.chunks):
        for chunk_id in entry.chunks:
            yield partial(_given, prefetched[chunk_id])
        return
    cache = repo.chunk_cache
    # Segments in file order: a cached chunk ID, or a run of chunks to fetch with one range read.
    segments: list[str | list[tuple[str, BlobLocation]]] = []
    for chunk_id in entry.chunks:
        if (prefetched is not None and chunk_id in prefetched) or (cache is not None and chunk_id in cache):
            segments.append(chunk_id)
            continue
        loc = locations.get(chunk_id)
        if loc is None or loc.kind != BlobKind.DATA:
            raise IntegrityError(f"{path}: chunk {chunk_id[:16]} is missing from the repository")
        run = segments[-1] if segments and isinstance(segments[-1], list) else None
        if (
            run is not None
            and run[-1][1].pack_id == loc.pack_id
            and run[-1][1].offset + run[-1][1].length == loc.offset
            and loc.offset + loc.length - run[0][1].offset <= MAX_RUN_BYTES
        ):
            run.append((chunk_id, loc))
        else:
            segments.append([(chunk_id, loc)])
    for segment in segments:
        if isinstance(segment, str):
            data = prefetched.get(segment) if prefetched is not None else None
            if data is None and cache is not None:
                data = cache.get(segment)
            if data is None:  # evicted or damaged since we looked: fetch it alone
                loc = locations.get(segment) or repo.locate([segment]).get(segment)
                if loc is None:
                    raise IntegrityError(f"{path}: chunk {segment[:16]} is missing from the repository")
                yield from _fetch_run(repo, [(segment, loc)], path, views)
            else:
                yield partial(_given, data)
            continue
        yield from _fetch_run(repo, segment, path, views)


def _given(data: bytes) -> bytes:
    return data


def _fetch_run(
    repo: Repository, run: list[tuple[str, BlobLocation]], path: str, views: bool = False
) -> Iterator[Callable[[], bytes | memoryview]]:
    start = run[0][1].offset
    end = run[-1][1].offset + run[-1][1].length
    key = pack_key(run[0][1].pack_id)
    try:
        data = repo.backend.get_view(key, start, end - start) if views else repo.backend.get(key, start, end - start)
    except FileNotFoundError:
        raise IntegrityError(f"{path}: pack {run[0][1].pack_id[:16]} is missing from the backend") from None
    for chunk_id, loc in run:
        yield partial(_verified, repo, chunk_id, loc, data, loc.offset - start, path)


def _verified(
    repo: Repository, chunk_id: str, loc: BlobLocation, data: bytes | memoryview, at: int, path: str
) -> bytes | memoryview:
    """The chunk at ``at`` in ``data`` (a run read from its pack), verified (and cached); a slice
    of a view of ``data`` is a view too (a chunk stored raw is then not copied)."""
    try:
        return verified_chunk(repo, chunk_id, loc, data[at : at + loc.length])
    except IntegrityError as exc:
        raise IntegrityError(f"{path}: {exc}") from None


def verified_content(
    repo: Repository,
    entry: Entry,
    locations: dict[str, BlobLocation],
    path: str,
    prefetched: dict[str, bytes] | None = None,
) -> Iterator[bytes]:
    """Like :func:`file_chunks`, and at the end also checks the whole file's size and digest.

    A one-chunk file's digest is its chunk ID, which :func:`file_chunks` has verified already.
    """
    single = len(entry.chunks) == 1
    hasher = new_hasher()
    size = 0
    for data in file_chunks(repo, entry, locations, path, prefetched):
        if not single:
            hasher.update(data)
        size += len(data)
        yield data
    if size != entry.size:
        raise IntegrityError(f"{path}: restored {size} bytes, the tree records {entry.size}")
    if (entry.chunks[0] if single else hasher.hexdigest()) != entry.digest:
        raise IntegrityError(f"{path}: content does not match the file's recorded BLAKE3")


class FileStream(io.RawIOBase):
    """A read-only stream of a stored file; raises IntegrityError instead of returning bad bytes."""

    def __init__(self, repo: Repository, entry: Entry, path: str) -> None:
        super().__init__()
        if entry.type != FILE:
            raise IntegrityError(f"{path} is not a regular file")
        self.entry = entry
        self.path = path
        self._chunks = verified_content(repo, entry, repo.locate(entry.chunks), path)
        self._buffer = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        while not self._buffer:
            try:
                self._buffer = memoryview(next(self._chunks))
            except StopIteration:
                return 0
        n = min(len(buffer), len(self._buffer))
        buffer[:n] = self._buffer[:n]
        self._buffer = self._buffer[n:]
        return n
