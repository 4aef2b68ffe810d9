"""A repository: a backend holding packs and snapshot objects, its config, and the index over them.

Keys on the backend (see docs/FORMAT.md)::

    config                      the repository config (JSON), written once
    data/<2 hex>/<64 hex>       packs, named by the BLAKE3 of their bytes
    snapshots/<execution id>    snapshot records (JSON), written with put-if-absent

Reading a blob always checks it against its BLAKE3 ID: corrupt data raises, it is never returned.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

from backends import open_backend, redact_url
from backends.base import Backend
from backends.retry import RetryingBackend
from cas.errors import AlreadyExists, CasError, IntegrityError, NotFound
from cas.format.compression import decode
from cas.format.config import RepoConfig
from cas.format.hashing import hexdigest
from cas.format.keys import CONFIG_KEY, PACK_PREFIX, pack_id_of, pack_key
from cas.format.packs import FOOTER_SIZE, PackEntry, parse_footer, parse_trailer
from cas.format.trees import Entry, decode_node, join_parts
from cas.home import default_home
from cas.repo import keystore
from cas.repo.background import BackgroundWork
from cas.repo.chunkcache import ChunkCache
from cas.repo.keystore import Passphrase
from cas.types import BlobKind, BlobLocation
from manifests.lazy import open_index
from manifests.rows import BlobRow

if TYPE_CHECKING:
    from manifests.index import Index

_MAX_CONFIG_READ = 64 * 1024


def default_chunk_cache_dir() -> str:
    return os.path.join(default_home(), "cache", "chunks")


def default_repo_url() -> str:
    return os.environ.get("CAS_REPO") or os.path.join(default_home(), "repo")


def default_index_url(repo_id: str, location: str) -> str:
    """A per-host SQLite index for a repository that was opened without ``--index``: one per
    repository *and* location, so a copy of a repository (same ID elsewhere) never shares it."""
    tag = hexdigest(location.encode("utf-8", "surrogateescape"))[:16]
    return "sqlite:///" + os.path.join(default_home(), "index", f"{repo_id}-{tag}.sqlite")


def backend_location(backend: Backend) -> str:
    """Where a backend's data is, as an index records it: its URL without wrappers (``faulty+``),
    endpoint notes or secrets. Two hosts reaching one bucket through different endpoints agree."""
    text = backend.describe().split(" (", 1)[0]
    while "+" in text.split("://", 1)[0]:
        text = text.split("+", 1)[1]
    return text


class Repository:
    def __init__(
        self, backend: Backend, config: RepoConfig, index: Index, chunk_cache: ChunkCache | None = None
    ) -> None:
        self.backend = backend
        self.config = config
        self.index = index
        self.chunk_cache = chunk_cache
        self.index_is_new = False
        """True when this open bound a new index to the repository: it is empty until synced."""
        self._trailers: dict[str, BlobLocation] = {}
        self._trailer_packs: set[str] = set()
        self.unlocked: keystore.Unlocked | None = None
        """The master key of an encrypted repository (``backend`` is then its encrypting wrapper)."""
        self.background = BackgroundWork()
        """Its readers' work ahead of reads, awaited by :meth:`close`."""

    @classmethod
    def open(
        cls,
        repo: str | Backend | None = None,
        *,
        index: str | Index | bool | None = None,
        create: bool = True,
        config_overrides: dict[str, int | str] | None = None,
        chunk_cache: str | bool | None = None,
        rebind_index: bool = False,
        chunk_cache_max: int | None = None,
        password: Passphrase | None = None,
        encrypt: bool = False,
        kdf_cost: int | None = None,
        exclusive: bool = False,
    ) -> Repository:
        """``chunk_cache``: a directory, True for ``$CAS_HOME/cache/chunks``, False for none, or None
        for the default: on for remote backends, off for a local directory (nothing to save).
        ``chunk_cache_max``: its cap in bytes (default ``$CAS_CACHE_MAX``, else see
        :func:`cas.repo.chunkcache.default_max_bytes`).

        ``index``: a URL or an open index; None for ``$CAS_INDEX``, else the per-host default
        (:func:`default_index_url`); False for the per-host default even when ``$CAS_INDEX`` is set
        (a copy's target: ``$CAS_INDEX`` names the source's index).
        The index must describe this repository at this location (:meth:`Index.bind`);
        ``rebind_index`` accepts a different location (for rebuilding the index from this backend).

        ``encrypt``: create the repository encrypted (docs/SECURITY.md), its first key made from
        ``password`` with scrypt at ``kdf_cost`` (``N = 2**kdf_cost``). ``password`` (a string, or a
        function asked only when the repository is encrypted) opens an encrypted repository.
        ``exclusive``: refuse a repository that exists already (``cas init``)."""
        if isinstance(repo, Backend):
            backend = repo  # the caller composed it (retries, faults...) as it wants
        else:
            backend = open_backend(repo or default_repo_url())
            if backend.capabilities.remote:
                # Remote services fail transiently; retry those errors (only those), bounded.
                backend = RetryingBackend(backend, attempts=4)
        config, unlocked = load_or_create_config(
            backend, create=create, overrides=config_overrides or {}, encrypt=encrypt, password=password,
            kdf_cost=kdf_cost, exclusive=exclusive,
        )
        if unlocked is not None:
            backend = keystore.wrap_backend(backend, unlocked)
        location = backend_location(backend)
        if index is None or isinstance(index, (str, bool)):
            url = index or (index is None and os.environ.get("CAS_INDEX"))
            index = open_index(url or default_index_url(config.repo_id, location))
        try:
            new_index = index.bind(config.repo_id, location, rebind=rebind_index)
        except BaseException:
            index.close()
            raise
        if chunk_cache is None:
            chunk_cache = os.environ.get("CAS_CHUNK_CACHE", "") not in ("0", "off", "no") and (
                backend.capabilities.remote
            )
        cache = None
        if chunk_cache:
            root = chunk_cache if isinstance(chunk_cache, str) else default_chunk_cache_dir()
            cache = ChunkCache(root, chunk_cache_max)
        repo = cls(backend, config, index, cache)
        repo.index_is_new = new_index
        repo.unlocked = unlocked
        return repo

    def describe(self) -> str:
        return redact_url(self.backend.describe())

    def close(self) -> None:
        self.background.close()  # it reads through what is closed below
        if self.chunk_cache is not None:
            self.chunk_cache.close()
        self.index.close()
        self.backend.close()

    # -- reading blobs ---------------------------------------------------------------------------

    def location(self) -> str:
        return backend_location(self.backend)

    def list_packs(self) -> dict[str, int]:
        """Every pack on the backend: ID -> size."""
        return {pack_id_of(info.key): info.size for info in self.backend.list(PACK_PREFIX)}

    def pack_stored(self, pack_id: str) -> bool:
        """Whether the pack's object is on the backend now (asked by ``Index.add_pack`` under its fence)."""
        return self.backend.exists(pack_key(pack_id))

    def read_trailer(self, pack_id: str, size: int) -> list[PackEntry]:
        """A pack's entries from two ranged reads (footer, then trailer), without reading its data."""
        if size < FOOTER_SIZE:
            raise IntegrityError("pack is too short to hold a footer")
        trailer_len = parse_footer(self.backend.get(pack_key(pack_id), size - FOOTER_SIZE, FOOTER_SIZE))
        data_size = size - FOOTER_SIZE - trailer_len
        if data_size < 0:
            raise IntegrityError("pack trailer is longer than the pack")
        return parse_trailer(self.backend.get(pack_key(pack_id), data_size, trailer_len), data_size)

    def lookups_on_one_connection(self) -> AbstractContextManager[None]:
        """This thread's :meth:`locate` calls inside the block share one index connection."""
        return self.index.lookups_on_one_connection()

    def locate(self, blob_ids: Iterable[str]) -> dict[str, BlobLocation]:
        """Where blobs are. Blobs the index lacks (packs another host stored and this index has not
        synced, or rows a damaged index lost) are looked up in the packs' trailers; reading never
        writes to the index, and every blob read is verified against its ID anyway."""
        wanted = list(blob_ids)
        found = {blob_id: _location(row) for blob_id, row in self.index.locate(wanted).items()}
        if len(found) < len(set(wanted)):
            found.update(self._from_trailers([b for b in wanted if b not in found]))
        return found

    def find_in_trailers(self, blob_ids: Iterable[str]) -> dict[str, BlobLocation]:
        """Where blobs are according to the trailers of every pack on the backend: the ground truth
        when index rows may have been lost. Only blobs whose bytes are read back and match their ID
        are returned (a trailer may list a corrupt blob)."""
        return {
            blob_id: loc for blob_id, loc in self._from_trailers(list(blob_ids)).items()
            if self.blob_is_intact(blob_id, loc)
        }

    def _from_trailers(self, blob_ids: list[str]) -> dict[str, BlobLocation]:
        """Blobs found in pack trailers. The trailers read are kept for the life of this object; a
        miss lists the backend again and reads only the trailers of packs not seen before."""
        found = {b: self._trailers[b] for b in blob_ids if b in self._trailers}
        if len(found) == len(set(blob_ids)):
            return found
        tombstoned = set(self.index.tombstones())
        for pack_id, size in sorted(self.list_packs().items()):
            if pack_id in self._trailer_packs or pack_id in tombstoned:
                continue
            self._trailer_packs.add(pack_id)
            try:
                entries = self.read_trailer(pack_id, size)
            except CasError:
                continue  # verify reports it; a reader just cannot use it
            for e in entries:
                self._trailers.setdefault(
                    e.id, BlobLocation(e.id, e.kind, pack_id, e.offset, e.length, e.raw_length, e.codec)
                )
        return {b: self._trailers[b] for b in blob_ids if b in self._trailers}

    def blob_is_intact(self, blob_id: str, location: BlobLocation) -> bool:
        try:
            self.read_blob(blob_id, location)
        except (IntegrityError, NotFound):
            return False
        return True

    def _trailer_map(self, wanted: Callable[[str], bool]) -> dict[str, BlobLocation]:
        out: dict[str, BlobLocation] = {}
        for pack_id, size in sorted(self.list_packs().items()):
            if not wanted(pack_id):
                continue
            try:
                entries = self.read_trailer(pack_id, size)
            except CasError:
                continue  # verify reports it; a reader just cannot use it
            for e in entries:
                out.setdefault(e.id, BlobLocation(e.id, e.kind, pack_id, e.offset, e.length, e.raw_length, e.codec))
        return out

    def read_blob(self, blob_id: str, location: BlobLocation | None = None) -> bytes:
        """The verified raw bytes of a blob; :class:`IntegrityError` if they do not hash to its ID."""
        if location is None:
            location = self.locate([blob_id]).get(blob_id)
            if location is None:
                raise NotFound(f"blob {blob_id} is not in the index (run 'cas rebuild-index'?)")
        payload = self.backend.get(pack_key(location.pack_id), location.offset, location.length)
        return verify_blob(blob_id, location, payload)

    def read_tree(self, tree_id: str, location: BlobLocation | None = None) -> list[Entry]:
        """A directory's entries, whether it is stored as one node or as parts."""
        return self.read_directory(tree_id, location)[0]

    def read_directory(
        self, tree_id: str, location: BlobLocation | None = None
    ) -> tuple[list[Entry], tuple[str, ...]]:
        """A directory's entries and the IDs of its part nodes (empty when it is one node)."""
        node = decode_node(self._tree_bytes(tree_id, location))
        if isinstance(node, list):
            return node, ()
        located = self.locate(node)
        parts = []
        for part_id in node:
            part = decode_node(self._tree_bytes(part_id, located.get(part_id)))
            if not isinstance(part, list):
                raise IntegrityError(f"tree part {part_id[:16]} is itself split (parts do not nest)")
            parts.append(part)
        return join_parts(parts), node

    def _tree_bytes(self, tree_id: str, location: BlobLocation | None) -> bytes:
        if location is None:
            location = self.locate([tree_id]).get(tree_id)
        if location is None:
            raise NotFound(f"tree {tree_id} is not in the index (run 'cas rebuild-index'?)")
        if location.kind != BlobKind.TREE:
            raise IntegrityError(f"blob {tree_id} is not a tree node")
        data = self.chunk_cache.get(tree_id) if self.chunk_cache is not None else None
        if data is None:
            data = self.read_blob(tree_id, location)
            if self.chunk_cache is not None:
                self.chunk_cache.put(tree_id, data)
        return data


def _location(row: BlobRow) -> BlobLocation:
    """The engine's location of a blob from an index row (the index has its own row type, a named
    tuple of the same fields in the same order: tests/repo/test_locate.py checks it)."""
    return _make_location(row)


_make_location = BlobLocation._make


def verify_blob(blob_id: str, location: BlobLocation, payload: bytes | memoryview) -> bytes | memoryview:
    """A blob's bytes from its stored payload (``payload`` itself when stored raw), checked
    against its length and ID (IntegrityError otherwise)."""
    if len(payload) != location.length:
        raise IntegrityError(f"blob {blob_id[:16]} is truncated in pack {location.pack_id[:16]}")
    data = decode(location.codec, payload, location.raw_length)
    if hexdigest(data) != blob_id:
        raise IntegrityError(f"blob {blob_id[:16]} in pack {location.pack_id[:16]} does not match its hash")
    return data


def load_or_create_config(
    backend: Backend,
    *,
    create: bool,
    overrides: dict[str, int | str],
    encrypt: bool = False,
    password: Passphrase | None = None,
    kdf_cost: int | None = None,
    exclusive: bool = False,
) -> tuple[RepoConfig, keystore.Unlocked | None]:
    """The repository's config (created if allowed and missing) and, for an encrypted one, its
    master key, opened with ``password``."""
    try:
        config = RepoConfig.from_json(backend.get(CONFIG_KEY, 0, _MAX_CONFIG_READ + 1))
    except FileNotFoundError:
        if not create:
            raise NotFound(f"no cas repository at {redact_url(backend.describe())}") from None
    else:
        if exclusive:
            raise AlreadyExists(f"a cas repository exists already at {redact_url(backend.describe())}")
        if not config.encrypted:
            keystore.check_unencrypted(backend, password)
            return config, None
        return config, keystore.unlock(backend, config, password)
    config = RepoConfig.new(encrypt=encrypt, **overrides)
    unlocked = keystore.create(backend, config, password, kdf_cost) if encrypt else None
    try:
        backend.put(CONFIG_KEY, config.to_json(), overwrite=False)
    except AlreadyExists:
        # Another process created it first; use theirs.
        if unlocked is not None:
            keystore.discard(backend, unlocked)
        if exclusive:
            raise AlreadyExists(f"a cas repository exists already at {redact_url(backend.describe())}") from None
        config = RepoConfig.from_json(backend.get(CONFIG_KEY, 0, _MAX_CONFIG_READ + 1))
        return config, keystore.unlock(backend, config, password) if config.encrypted else None
    except BaseException:
        if unlocked is not None:
            keystore.discard(backend, unlocked)  # no key without the config it was made for
        raise
    return config, unlocked
