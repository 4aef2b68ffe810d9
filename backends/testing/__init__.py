"""Test kit for backend drivers, shipped with them (as zarr ships ``StoreTests``).

:class:`BackendContract` is the behaviour every driver must have, checked against the storage
reached *around* the driver; :func:`check_against_model` drives a driver and a dict side by side
with Hypothesis. Importing this package needs pytest and hypothesis (the ``test`` extra); the
drivers themselves never import it.
"""

from __future__ import annotations

from backends.testing.contract import MULTIPART_SIZE, BackendContract, RawAccess
from backends.testing.stateful import BackendMachine, check_against_model

__all__ = ["MULTIPART_SIZE", "BackendContract", "BackendMachine", "RawAccess", "check_against_model"]
