from __future__ import annotations

import os
import sys

# Tests import the top-level packages from the checkout, installed or not.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


_LATE = ("tests.aiflow.test_archive_dedup", "tests.trust.test_minio", "tests.aiflow.test_e2e")
"""Modules that wait for a build ``make test`` started in the background (AIFlow's environments,
MinIO), in the order they run after everything else."""


def pytest_collection_modifyitems(config, items):  # type: ignore[no-untyped-def]
    """Run the tests that need MinIO or AIFlow's environments last: ``make test`` starts building
    them in the background before pytest starts, so the builds overlap the rest of the suite."""
    late = [item for item in items if item.module.__name__ in _LATE]
    late.sort(key=lambda item: _LATE.index(item.module.__name__))
    items[:] = [item for item in items if item not in late] + late
