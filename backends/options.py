"""Reading a driver's URL and options: what every ``*_config`` module shares.

Options arrive as keyword arguments from code, or as strings from a URL's query, a config file or
the environment, so numbers and flags are accepted in either form. Every refusal is a
:class:`ConfigurationError` naming the driver and the option, and never echoes a credential.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import TypeVar
from urllib.parse import parse_qsl, unquote, urlsplit

from backends.errors import ConfigurationError

_N = TypeVar("_N", int, float)


def number(options: Mapping[str, object], name: str, kind: Callable[[object], _N], default: _N, driver: str) -> _N:
    """Option ``name`` as an ``int`` or ``float`` (``kind``), ``default`` when absent or None."""
    value = options.get(name)
    if value is None:
        return default
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise ConfigurationError(f"{driver} option {name} must be a number, got {value!r}") from None


def positive_seconds(value: float, name: str, driver: str) -> float:
    """``value`` if it is a positive, finite number of seconds."""
    if not (value > 0 and math.isfinite(value)):
        raise ConfigurationError(f"{driver} {name} must be a positive number of seconds, got {value}")
    return value


def truthy(value: object) -> bool:
    """A flag given as a bool or as ``1``/``true``/``yes``/``on`` (any case)."""
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def split_bucket_url(
    url: str,
    scheme: str,
    options: Mapping[str, object],
    known: Iterable[str],
    credentials_hint: str,
    in_url: Iterable[str] = (),
) -> tuple[str, str, dict[str, object]]:
    """``(bucket, path, options)`` of an object-store URL such as ``s3://bucket/prefix?name=value``,
    refusing what does not belong in it (credentials, a fragment) and options the driver does not
    know. The query may set the options named in ``in_url`` (never a secret: a URL is printed,
    logged and seen in process listings); ``options`` are merged in, and must agree with it."""
    parts = urlsplit(url)
    if parts.scheme != scheme:
        raise ConfigurationError(f"not an {scheme}:// URL: {parts.scheme}://...")
    if "@" in parts.netloc:
        raise ConfigurationError(f"credentials do not belong in an {scheme}:// URL; {credentials_hint}")
    if parts.fragment:
        raise ConfigurationError(f"{scheme}:// URLs take no fragment")
    allowed = set(in_url)
    merged: dict[str, object] = {}
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name in set(known) - allowed:
            raise ConfigurationError(
                f"{name} cannot be given in an {scheme}:// URL (URLs are printed and seen in process "
                "listings); pass it as a backend option or in its environment variable"
            )
        if name not in allowed:
            raise ConfigurationError(
                f"unknown {scheme}:// URL option {name!r}; URL options: {', '.join(sorted(allowed)) or 'none'}"
            )
        if name in merged and merged[name] != value:
            raise ConfigurationError(f"{scheme}:// URL gives {name} twice")
        merged[name] = value
    known = set(known)
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigurationError(
            f"unknown {scheme.upper()} option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )
    for name, value in options.items():
        if name in merged and value is not None and str(value) != merged[name]:
            raise ConfigurationError(f"{scheme.upper()} option {name} disagrees with the URL's {name}")
        if value is not None or name not in merged:
            merged[name] = value
    return parts.netloc, unquote(parts.path), merged


__all__ = ["number", "positive_seconds", "split_bucket_url", "truthy"]
