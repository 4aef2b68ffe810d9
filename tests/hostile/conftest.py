"""Fixtures of the hostile-input tests: :class:`~tests.hostile.test_inputs.Cas` on a fresh
directory, and a small project to snapshot."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.hostile.test_inputs import Cas


@pytest.fixture
def cas(tmp_path: Path) -> Cas:
    return Cas(tmp_path)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    src = tmp_path / "project"
    src.mkdir()
    (src / "a.txt").write_text("a\n")
    return src
