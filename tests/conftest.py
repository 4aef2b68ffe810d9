from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# Tests import the top-level packages from the checkout, installed or not.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cas import Store
from tests.engine import REPO_KINDS, SMALL_CHUNKS, repo_options

_LATE = ("tests.aiflow.test_archive_dedup", "tests.trust.test_minio", "tests.aiflow.test_e2e")
"""Modules that wait for a build ``make test`` started in the background (AIFlow's environments,
MinIO), in the order they run after everything else."""


_SPREAD = ("tests.aiflow.test_e2e",)
"""Modules whose tests may run on different pytest workers (each test starts what it needs): the
last to run, and a minute long, they would otherwise leave the other workers idle at the end."""


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's, which names each test's group in its ID
def pytest_collection_modifyitems(config, items):  # type: ignore[no-untyped-def]
    """Run the tests that need MinIO or AIFlow's environments last: ``make test`` starts building
    them in the background before pytest starts, so the builds overlap the rest of the suite.
    Under ``--dist loadgroup`` a module's tests run on one worker (they share its servers and
    fixtures), but for the modules of :data:`_SPREAD`."""
    late = [item for item in items if item.module.__name__ in _LATE]
    late.sort(key=lambda item: _LATE.index(item.module.__name__))
    items[:] = [item for item in items if item not in late] + late
    for item in items:
        if item.module.__name__ not in _SPREAD:
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))


# -- the engine tests' fixtures (settings and helpers in tests/engine.py) ------------------------


@pytest.fixture
def cas_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private CAS_HOME, and no repository or index from the environment."""
    home = tmp_path / "cas-home"
    monkeypatch.setenv("CAS_HOME", str(home))
    monkeypatch.delenv("CAS_REPO", raising=False)
    monkeypatch.delenv("CAS_INDEX", raising=False)
    return home


@pytest.fixture
def store(tmp_path: Path, cas_home: Path) -> Iterator[Store]:
    """A store on a local repository with small chunks and an SQLite index."""
    s = Store.open(str(tmp_path / "repo"), index=f"sqlite:///{tmp_path / 'index.sqlite'}", **SMALL_CHUNKS)
    yield s
    s.close()


@pytest.fixture
def plain_store(tmp_path: Path, cas_home: Path) -> Iterator[Store]:
    """A store with the default chunking: a file below 256 KiB is one chunk (read and written whole)."""
    s = Store.open(str(tmp_path / "repo"), index=f"sqlite:///{tmp_path / 'index.sqlite'}")
    yield s
    s.close()


@pytest.fixture(params=REPO_KINDS)
def either_store(request: pytest.FixtureRequest, tmp_path: Path, cas_home: Path) -> Iterator[Store]:
    """:func:`store`, once unencrypted and once encrypted (docs/SECURITY.md): modules whose tests
    must hold for both override ``store`` with it."""
    s = Store.open(str(tmp_path / "repo"), index=f"sqlite:///{tmp_path / 'index.sqlite'}",
                   **SMALL_CHUNKS, **repo_options(request.param))  # type: ignore[arg-type]
    yield s
    s.close()
