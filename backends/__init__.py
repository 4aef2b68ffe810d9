"""Storage drivers for cas, chosen by URL scheme.

The registry maps a scheme to the module and factory that handle it; the module is imported only
when a URL of that scheme is opened, so a missing SDK costs nothing until it is needed and then
fails with the pip extra to install. This package imports nothing of ``cas`` or ``manifests``.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from backends.base import Backend, Capabilities, ObjectInfo
from backends.errors import ConfigurationError, MissingDependency
from backends.redact import redact_url


@dataclass(frozen=True)
class _Entry:
    module: str
    factory: str
    extra: str | None


_REGISTRY: dict[str, _Entry] = {}


def register(scheme: str, module: str, factory: str, extra: str | None = None) -> None:
    """Declare that ``scheme://`` URLs are opened by ``module.factory(url, **options)``."""
    if scheme in _REGISTRY:
        raise ConfigurationError(f"backend scheme {scheme!r} is registered twice")
    _REGISTRY[scheme] = _Entry(module, factory, extra)


register("file", "backends.local", "from_url")
register("s3", "backends.s3", "from_url", "s3")
register("oss", "backends.oss", "from_url", "oss")
register("hdfs", "backends.hdfs", "from_url", "hdfs")
register("webhdfs", "backends.hdfs", "from_url", "hdfs")


def schemes() -> list[str]:
    return sorted(_REGISTRY)


def open_backend(url: str, **options: object) -> Backend:
    """Open the backend a URL names. A bare path means the local filesystem."""
    if not url:
        raise ConfigurationError("empty repository URL")
    scheme = urlsplit(url).scheme
    if not scheme or (len(scheme) == 1 and os.name == "nt"):
        url = "file://" + os.path.abspath(os.path.expanduser(url))
        scheme = "file"
    entry = _REGISTRY.get(scheme)
    if entry is None:
        raise ConfigurationError(
            f"unknown repository scheme {scheme!r} in {redact_url(url)}; known: {', '.join(schemes())}"
        )
    try:
        module = importlib.import_module(entry.module)
    except ImportError as exc:
        hint = f"pip install 'cas-store[{entry.extra}]'" if entry.extra else "reinstall cas-store"
        raise MissingDependency(
            f"the {scheme}:// backend needs a package that is not installed ({exc.name}): {hint}"
        ) from exc
    factory: Callable[..., Backend] = getattr(module, entry.factory)
    return factory(url, **options)


__all__ = ["Backend", "Capabilities", "ObjectInfo", "open_backend", "redact_url", "register", "schemes"]
