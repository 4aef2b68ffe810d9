"""The OSS driver's settings: read from ``oss://bucket[/prefix]``, options and the environment.

Options are named as AIFlow's ``OssBlobManager`` names them. The access key secret is kept only
here, hidden from ``repr``, until the driver hands it to ``oss2``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from backends.errors import ConfigurationError
from backends.options import number, split_bucket_url

#: Defaults: parts of 8 MiB, multipart above 32 MiB. OSS allows 10,000 parts of 100 KiB..5 GiB.
DEFAULT_PART_SIZE = 8 << 20
DEFAULT_MULTIPART_THRESHOLD = 32 << 20
MIN_PART_SIZE = 100 << 10
MAX_PARTS = 10_000
#: Connecting must be quick; reading a large part may take a while.
DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_READ_TIMEOUT = 120.0

_ENV = {
    "access_key_id": "OSS_ACCESS_KEY_ID",
    "access_key_secret": "OSS_ACCESS_KEY_SECRET",
    "endpoint": "OSS_ENDPOINT",
}
OPTIONS = frozenset(
    {
        "access_key_id",
        "access_key_secret",
        "endpoint",
        "bucket",
        "root_directory",
        "part_size",
        "multipart_threshold",
        "connect_timeout",
        "read_timeout",
        "server_side_encryption",
        "sse_kms_key_id",
        "auth_version",
        "region",
    }
)
#: Options an ``oss://`` URL's query may set: none that is a credential or an endpoint.
URL_OPTIONS = OPTIONS - {"access_key_id", "access_key_secret", "endpoint", "bucket", "root_directory"}
#: Where ``region`` is read from when it is not an option (the name Alibaba's own tools use).
REGION_ENV = "OSS_REGION"
#: The region in an Alibaba endpoint: oss-cn-hangzhou.aliyuncs.com, oss-cn-hangzhou-internal...
_ENDPOINT_REGION = re.compile(r"^(?:[a-z]+://)?(?:[^/]*\.)?oss-([a-z0-9-]+?)(?:-internal)?\.aliyuncs\.com(?::\d+)?/?$")
#: ``server_side_encryption`` values OSS knows.
SSE_MODES = ("AES256", "KMS", "SM4")


@dataclass(frozen=True)
class OssConfig:
    """Where the repository is and how to reach it. ``endpoint`` has a scheme (https by default)
    and no trailing slash; ``part_size`` is at least 100 KiB (OSS's minimum) and
    ``multipart_threshold`` at least ``part_size``; timeouts are positive seconds."""

    bucket: str
    prefix: str
    endpoint: str
    access_key_id: str
    access_key_secret: str = field(repr=False)
    part_size: int = DEFAULT_PART_SIZE
    multipart_threshold: int = DEFAULT_MULTIPART_THRESHOLD
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    read_timeout: float = DEFAULT_READ_TIMEOUT
    auth_version: str | None = None
    """``v4`` (OSS4-HMAC-SHA256, scoped to ``region``), ``v1``, or None: V4 when the installed oss2
    signs it and ``region`` is known, else V1."""
    region: str | None = None
    """The bucket's region, e.g. ``cn-hangzhou``: V4 signatures are scoped to it."""
    server_side_encryption: str | None = None
    """Sent with every upload as ``x-oss-server-side-encryption``."""
    sse_kms_key_id: str | None = None
    """With ``KMS``: the key; None for the OSS-managed one."""


def _setting(options: Mapping[str, object], name: str) -> str:
    value = options.get(name)
    if value is None or value == "":
        env = _ENV.get(name)
        value = os.environ.get(env, "") if env else ""
    if not value:
        source = f" (or environment variable {_ENV[name]})" if name in _ENV else ""
        raise ConfigurationError(f"OSS option {name}{source} is not set")
    if not isinstance(value, str):
        raise ConfigurationError(f"OSS option {name} must be a string")
    return value


def parse(url: str, options: Mapping[str, object]) -> OssConfig:
    """The settings ``oss://bucket[/prefix]`` and ``options`` describe.

    ``access_key_id``, ``access_key_secret`` and ``endpoint`` fall back to ``OSS_ACCESS_KEY_ID``,
    ``OSS_ACCESS_KEY_SECRET`` and ``OSS_ENDPOINT``; ``bucket`` is used when the URL has no host and
    ``root_directory`` when it has no path. A missing or wrong setting raises
    :class:`ConfigurationError` naming it.
    """
    url_bucket, path, options = split_bucket_url(
        url, "oss", options, OPTIONS,
        "use the access_key_id/access_key_secret options or OSS_ACCESS_KEY_ID/OSS_ACCESS_KEY_SECRET",
        URL_OPTIONS,
    )
    bucket = url_bucket or options.get("bucket")
    if url_bucket and options.get("bucket") and options["bucket"] != url_bucket:
        raise ConfigurationError(
            f"bucket {url_bucket!r} in the URL disagrees with option bucket {options['bucket']!r}"
        )
    if not bucket or not isinstance(bucket, str):
        raise ConfigurationError(
            "OSS option bucket is not set (give it as oss://bucket/prefix or the bucket option)"
        )
    prefix = path.strip("/") or str(options.get("root_directory") or "").strip("/")
    endpoint = _setting(options, "endpoint")
    config = OssConfig(
        bucket=bucket,
        prefix=prefix,
        endpoint=(endpoint if "://" in endpoint else "https://" + endpoint).rstrip("/"),
        access_key_id=_setting(options, "access_key_id"),
        access_key_secret=_setting(options, "access_key_secret"),
        part_size=number(options, "part_size", int, DEFAULT_PART_SIZE, "OSS"),
        multipart_threshold=number(options, "multipart_threshold", int, DEFAULT_MULTIPART_THRESHOLD, "OSS"),
        connect_timeout=number(options, "connect_timeout", float, DEFAULT_CONNECT_TIMEOUT, "OSS"),
        read_timeout=number(options, "read_timeout", float, DEFAULT_READ_TIMEOUT, "OSS"),
        **_encryption(options),
        **_signing(options, endpoint),
    )
    if config.part_size < MIN_PART_SIZE:
        raise ConfigurationError(
            f"OSS option part_size must be at least {MIN_PART_SIZE} bytes, got {config.part_size}"
        )
    if config.multipart_threshold < config.part_size:
        raise ConfigurationError("OSS option multipart_threshold must be at least part_size")
    if config.connect_timeout <= 0 or config.read_timeout <= 0:
        raise ConfigurationError("OSS options connect_timeout and read_timeout must be positive")
    return config


def _encryption(options: Mapping[str, object]) -> dict[str, str | None]:
    """``server_side_encryption`` and ``sse_kms_key_id``; a key id alone means ``KMS``."""
    sse = str(options.get("server_side_encryption") or "") or None
    key_id = str(options.get("sse_kms_key_id") or "") or None
    if key_id and sse is None:
        sse = "KMS"
    if sse is not None and sse not in SSE_MODES:
        raise ConfigurationError(f"OSS server_side_encryption must be one of {', '.join(SSE_MODES)}, got {sse!r}")
    if key_id and sse != "KMS":
        raise ConfigurationError("OSS sse_kms_key_id needs server_side_encryption KMS (or none)")
    return {"server_side_encryption": sse, "sse_kms_key_id": key_id}


def _signing(options: Mapping[str, object], endpoint: str) -> dict[str, str | None]:
    """``auth_version`` and ``region``. The region is the option, ``$OSS_REGION``, or read from an
    Alibaba endpoint (``oss-<region>.aliyuncs.com``). Without ``auth_version``: V4 when oss2 can
    sign it and the region is known, else V1 (None here: the driver, which knows oss2, decides).
    V4 without a region is refused."""
    region = str(options.get("region") or "") or os.environ.get(REGION_ENV) or None
    if region is None:
        found = _ENDPOINT_REGION.match(endpoint)
        region = found.group(1) if found else None
    version = str(options.get("auth_version") or "").lower() or None
    if version not in (None, "v1", "v4"):
        raise ConfigurationError(f"OSS auth_version must be v1 or v4, got {version!r}")
    if version == "v4" and not region:
        raise ConfigurationError(
            f"OSS V4 signatures need the bucket's region: set the region option or ${REGION_ENV} "
            "(e.g. cn-hangzhou), or auth_version v1"
        )
    return {"auth_version": version, "region": region}


def environment_fallbacks() -> dict[str, tuple[str, str]]:
    """The options :func:`parse` takes from the environment when they are not given: option name ->
    (environment variable, its value now or "" when unset), always in the same order.

    For callers that check a configuration before opening a backend (the AIFlow managers), so they
    and the driver agree on which variables stand in for which options.
    """
    return {name: (env, os.environ.get(env, "")) for name, env in _ENV.items()}


__all__ = [
    "MAX_PARTS", "MIN_PART_SIZE", "OPTIONS", "REGION_ENV", "SSE_MODES", "URL_OPTIONS", "OssConfig",
    "environment_fallbacks", "parse",
]
