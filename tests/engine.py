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
