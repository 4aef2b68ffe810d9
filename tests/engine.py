"""Shared settings and helpers for engine tests; their fixtures (``cas_home``, ``store``,
``either_store``) are in tests/conftest.py."""

from __future__ import annotations

from pathlib import Path

from cas import Store

#: Tiny chunks so that small test files cross many chunk boundaries.
SMALL_CHUNKS = {"chunk_min": 64, "chunk_avg": 256, "chunk_max": 1024, "pack_size": 1 << 20}

#: An encrypted repository's passphrase in tests, and the cheapest scrypt cost (tests only).
TEST_PASSWORD = "correct horse battery staple"
ENCRYPTED = {"encrypt": True, "password": TEST_PASSWORD, "kdf_cost": 10}
REPO_KINDS = ["plain", "encrypted"]


def repo_options(kind: str) -> dict[str, object]:
    """``Store.open`` options for a repository of ``kind`` (one of :data:`REPO_KINDS`)."""
    return dict(ENCRYPTED) if kind == "encrypted" else {}


def object_file(store: Store, key: str) -> Path:
    """The file holding the object ``key`` of a store on a local directory, encrypted or not."""
    backend = store.repo.backend
    if store.encrypted:
        key = backend.stored_key(key)  # type: ignore[attr-defined]
        backend = backend.inner  # type: ignore[attr-defined]
    return Path(backend.root, *key.split("/"))  # type: ignore[attr-defined]
