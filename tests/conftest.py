from __future__ import annotations

import os
import sys

# Tests import the top-level packages from the checkout, installed or not.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def pytest_collection_modifyitems(config, items):  # type: ignore[no-untyped-def]
    """Run the MinIO and AIFlow end-to-end tests last: ``make test`` starts building MinIO and the
    Python 3.7/3.8 environments in the background before pytest starts, so the builds overlap the
    rest of the suite."""
    late = [item for item in items if item.module.__name__ in ("tests.trust.test_minio", "tests.aiflow.test_e2e")]
    items[:] = [item for item in items if item not in late] + late
