"""Where objects live on a backend (docs/FORMAT.md, "Keys on the backend"): the one place that
knows the key layout."""

from __future__ import annotations

CONFIG_KEY = "config"
PACK_PREFIX = "data/"
SNAPSHOT_PREFIX = "snapshots/"


def pack_key(pack_id: str) -> str:
    """``data/<first 2 hex>/<pack id>``."""
    return f"{PACK_PREFIX}{pack_id[:2]}/{pack_id}"


def pack_id_of(key: str) -> str:
    """The pack ID in a key under :data:`PACK_PREFIX`."""
    return key.rsplit("/", 1)[-1]
