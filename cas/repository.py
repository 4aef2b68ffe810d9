"""A repository: a backend holding packs and snapshot objects, its config, and the index over them.

Keys on the backend (see docs/FORMAT.md)::

    config                      the repository config (JSON), written once
    data/<2 hex>/<64 hex>       packs, named by the BLAKE3 of their bytes
    snapshots/<execution id>    snapshot records (JSON), written with put-if-absent

Reading a blob always checks it against its BLAKE3 ID: corrupt data raises, it is never returned.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from backends import open_backend, redact_url
from backends.base import Backend
from backends.retry import RetryingBackend
from cas.chunkcache import ChunkCache
from cas.compression import decode
from cas.config import CONFIG_KEY, RepoConfig
from cas.errors import AlreadyExists, IntegrityError, NotFound
from cas.hashing import hexdigest
from cas.packs import KIND_TREE, pack_key
from cas.trees import Entry, decode_node, join_parts
from manifests.index import BlobLocation, Index

_MAX_CONFIG_READ = 64 * 1024


def default_home() -> str:
    return os.path.abspath(os.path.expanduser(os.environ.get("CAS_HOME") or "~/.cas"))


def default_repo_url() -> str:
    return os.environ.get("CAS_REPO") or os.path.join(default_home(), "repo")


def default_index_url(repo_id: str) -> str:
    """A per-host SQLite index for a repository that was opened without ``--index``."""
    return "sqlite:///" + os.path.join(default_home(), "index", f"{repo_id}.sqlite")


class Repository:
    def __init__(
        self, backend: Backend, config: RepoConfig, index: Index, chunk_cache: ChunkCache | None = None
    ) -> None:
        self.backend = backend
        self.config = config
        self.index = index
        self.chunk_cache = chunk_cache

    @classmethod
    def open(
        cls,
        repo: str | Backend | None = None,
        *,
        index: str | Index | None = None,
        create: bool = True,
        config_overrides: dict[str, int] | None = None,
        chunk_cache: str | bool | None = None,
    ) -> Repository:
        """``chunk_cache``: a directory, True for ``$CAS_HOME/cache/chunks``, False for none, or None
        for the default: on for remote backends, off for a local directory (nothing to save)."""
        if isinstance(repo, Backend):
            backend = repo  # the caller composed it (retries, faults...) as it wants
        else:
            backend = open_backend(repo or default_repo_url())
            if not backend.describe().startswith("file://"):
                # Remote services fail transiently; retry those errors (only those), bounded.
                backend = RetryingBackend(backend, attempts=4)
        config = load_or_create_config(backend, create=create, overrides=config_overrides or {})
        if not isinstance(index, Index):
            index = Index.open(index or os.environ.get("CAS_INDEX") or default_index_url(config.repo_id))
        if chunk_cache is None:
            chunk_cache = os.environ.get("CAS_CHUNK_CACHE", "") not in ("0", "off", "no") and not (
                backend.describe().startswith("file://")
            )
        cache = None
        if chunk_cache:
            root = chunk_cache if isinstance(chunk_cache, str) else os.path.join(default_home(), "cache", "chunks")
            cache = ChunkCache(root)
        return cls(backend, config, index, cache)

    def describe(self) -> str:
        return redact_url(self.backend.describe())

    def close(self) -> None:
        self.index.close()
        self.backend.close()

    # -- reading blobs ---------------------------------------------------------------------------

    def locate(self, blob_ids: Iterable[str]) -> dict[str, BlobLocation]:
        return self.index.locate(blob_ids)

    def read_blob(self, blob_id: str, location: BlobLocation | None = None) -> bytes:
        """The verified raw bytes of a blob; :class:`IntegrityError` if they do not hash to its ID."""
        if location is None:
            location = self.index.locate([blob_id]).get(blob_id)
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
        located = self.index.locate(node)
        parts = []
        for part_id in node:
            part = decode_node(self._tree_bytes(part_id, located.get(part_id)))
            if not isinstance(part, list):
                raise IntegrityError(f"tree part {part_id[:16]} is itself split (parts do not nest)")
            parts.append(part)
        return join_parts(parts), node

    def _tree_bytes(self, tree_id: str, location: BlobLocation | None) -> bytes:
        if location is None:
            location = self.index.locate([tree_id]).get(tree_id)
        if location is None:
            raise NotFound(f"tree {tree_id} is not in the index (run 'cas rebuild-index'?)")
        if location.kind != KIND_TREE:
            raise IntegrityError(f"blob {tree_id} is not a tree node")
        data = self.chunk_cache.get(tree_id) if self.chunk_cache is not None else None
        if data is None:
            data = self.read_blob(tree_id, location)
            if self.chunk_cache is not None:
                self.chunk_cache.put(tree_id, data)
        return data


def verify_blob(blob_id: str, location: BlobLocation, payload: bytes) -> bytes:
    if len(payload) != location.length:
        raise IntegrityError(f"blob {blob_id[:16]} is truncated in pack {location.pack_id[:16]}")
    data = decode(location.codec, payload, location.raw_length)
    if hexdigest(data) != blob_id:
        raise IntegrityError(f"blob {blob_id[:16]} in pack {location.pack_id[:16]} does not match its hash")
    return data


def load_or_create_config(backend: Backend, *, create: bool, overrides: dict[str, int]) -> RepoConfig:
    try:
        return RepoConfig.from_json(backend.get(CONFIG_KEY, 0, _MAX_CONFIG_READ + 1))
    except FileNotFoundError:
        if not create:
            raise NotFound(f"no cas repository at {redact_url(backend.describe())}") from None
    config = RepoConfig.new(**overrides)
    try:
        backend.put(CONFIG_KEY, config.to_json(), overwrite=False)
    except AlreadyExists:
        # Another process created it first; use theirs.
        return RepoConfig.from_json(backend.get(CONFIG_KEY, 0, _MAX_CONFIG_READ + 1))
    return config
