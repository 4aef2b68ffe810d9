"""Shared fixtures for engine tests: a store on a local repository with a private CAS_HOME."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cas import Store

#: Tiny chunks so that small test files cross many chunk boundaries.
SMALL_CHUNKS = {"chunk_min": 64, "chunk_avg": 256, "chunk_max": 1024, "pack_size": 1 << 20}


@pytest.fixture
def cas_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "cas-home"
    monkeypatch.setenv("CAS_HOME", str(home))
    monkeypatch.delenv("CAS_REPO", raising=False)
    monkeypatch.delenv("CAS_INDEX", raising=False)
    return home


@pytest.fixture
def store(tmp_path: Path, cas_home: Path) -> Iterator[Store]:
    s = Store.open(str(tmp_path / "repo"), index=f"sqlite:///{tmp_path / 'index.sqlite'}", **SMALL_CHUNKS)
    yield s
    s.close()


#: An encrypted repository's passphrase in tests, and the cheapest scrypt cost (tests only).
TEST_PASSWORD = "correct horse battery staple"
ENCRYPTED = {"encrypt": True, "password": TEST_PASSWORD, "kdf_cost": 10}
REPO_KINDS = ["plain", "encrypted"]


def repo_options(kind: str) -> dict[str, object]:
    """``Store.open`` options for a repository of ``kind`` (one of :data:`REPO_KINDS`)."""
    return dict(ENCRYPTED) if kind == "encrypted" else {}


@pytest.fixture(params=REPO_KINDS)
def either_store(request: pytest.FixtureRequest, tmp_path: Path, cas_home: Path) -> Iterator[Store]:
    """:func:`store`, once unencrypted and once encrypted (docs/SECURITY.md): modules whose tests
    must hold for both import it as ``store``."""
    s = Store.open(str(tmp_path / "repo"), index=f"sqlite:///{tmp_path / 'index.sqlite'}",
                   **SMALL_CHUNKS, **repo_options(request.param))  # type: ignore[arg-type]
    yield s
    s.close()


def object_file(store: Store, key: str) -> Path:
    """The file holding the object ``key`` of a store on a local directory, encrypted or not."""
    backend = store.repo.backend
    if store.encrypted:
        key = backend.stored_key(key)  # type: ignore[attr-defined]
        backend = backend.inner  # type: ignore[attr-defined]
    return Path(backend.root, *key.split("/"))  # type: ignore[attr-defined]
