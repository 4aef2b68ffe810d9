"""The S3 driver's settings: read from ``s3://bucket[/prefix]`` and options, checked, frozen.

Credentials come from the options or from the standard AWS chain (environment, shared config
files, SSO, container/instance metadata); given as options they are kept only here, hidden from
``repr``, until the driver hands them to boto3.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from backends.errors import ConfigurationError
from backends.options import number, positive_seconds, split_bucket_url

MIB = 1024 * 1024
#: S3's own limits on multipart uploads.
MIN_PART_SIZE = 5 * MIB
MAX_PART_SIZE = 5 * 1024 * MIB
MAX_PARTS = 10_000

DEFAULT_MULTIPART_THRESHOLD = 64 * MIB
DEFAULT_PART_SIZE = 16 * MIB
DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_READ_TIMEOUT = 60.0

OPTIONS = frozenset(
    {
        "endpoint_url",
        "region_name",
        "addressing_style",
        "access_key_id",
        "secret_access_key",
        "session_token",
        "profile_name",
        "multipart_threshold",
        "part_size",
        "connect_timeout",
        "read_timeout",
        "sdk_attempts",
        "max_pool_connections",
        "server_side_encryption",
        "sse_kms_key_id",
        "sse_customer_key",
    }
)
#: Options an ``s3://`` URL's query may set: none that is a credential or a secret.
URL_OPTIONS = OPTIONS - {
    "endpoint_url", "access_key_id", "secret_access_key", "session_token", "profile_name", "sse_customer_key",
}
#: Where ``sse_customer_key`` is read from when it is not an option.
SSE_CUSTOMER_KEY_ENV = "CAS_S3_SSE_CUSTOMER_KEY"
#: ``server_side_encryption`` values: S3-managed keys, KMS keys, KMS with two layers.
SSE_MODES = ("AES256", "aws:kms", "aws:kms:dsse")


@dataclass(frozen=True)
class S3Config:
    """Where the repository is and how to reach it.

    ``endpoint_url`` defaults to ``$AWS_ENDPOINT_URL_S3`` then ``$AWS_ENDPOINT_URL``. With a custom
    endpoint the default ``addressing_style`` is ``"path"`` (what S3-compatible servers on an IP or
    ``localhost`` need), otherwise the SDK's ``"auto"``. ``part_size`` lies in S3's 5 MiB..5 GiB.
    The SDK's own retries are off by default (``sdk_attempts=1``): retrying is the job of
    :class:`backends.retry.RetryingBackend`, and two layers of retries multiply each other's delays.
    """

    bucket: str
    prefix: str = ""
    endpoint_url: str | None = None
    region_name: str | None = None
    addressing_style: str = "auto"
    access_key_id: str | None = None
    secret_access_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)
    profile_name: str | None = None
    multipart_threshold: int = DEFAULT_MULTIPART_THRESHOLD
    part_size: int = DEFAULT_PART_SIZE
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    read_timeout: float = DEFAULT_READ_TIMEOUT
    sdk_attempts: int = 1
    max_pool_connections: int = 10
    server_side_encryption: str | None = None
    """Sent with every upload as ``x-amz-server-side-encryption`` (SSE-S3 or SSE-KMS)."""
    sse_kms_key_id: str | None = None
    """With ``aws:kms``: the KMS key (id, ARN or alias); None for the bucket's AWS-managed key."""
    sse_customer_key: bytes | None = field(default=None, repr=False)
    """SSE-C: the 32-byte AES-256 key sent with every upload, download and HEAD."""


def _text(options: Mapping[str, object], name: str) -> str | None:
    value = options.get(name)
    return None if value is None else str(value)


def parse(url: str, options: Mapping[str, object]) -> S3Config:
    """The settings ``s3://bucket[/prefix]`` and ``options`` describe; :class:`ConfigurationError`
    naming what is wrong (never echoing a secret)."""
    bucket, path, options = split_bucket_url(
        url, "s3", options, OPTIONS,
        "use the AWS credential chain or the access_key_id/secret_access_key options",
        URL_OPTIONS,
    )
    if not bucket:
        raise ConfigurationError("S3 URL has no bucket: use s3://bucket/prefix")
    endpoint_url = _text(options, "endpoint_url")
    if endpoint_url is None:
        endpoint_url = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None
    part_size = number(options, "part_size", int, DEFAULT_PART_SIZE, "S3")
    if part_size < MIN_PART_SIZE or part_size > MAX_PART_SIZE:
        raise ConfigurationError(
            f"S3 part_size must be between {MIN_PART_SIZE} and {MAX_PART_SIZE} bytes, got {part_size}"
        )
    threshold = number(options, "multipart_threshold", int, DEFAULT_MULTIPART_THRESHOLD, "S3")
    if threshold < 0:
        raise ConfigurationError(f"S3 multipart_threshold must not be negative, got {threshold}")
    connect_timeout = number(options, "connect_timeout", float, DEFAULT_CONNECT_TIMEOUT, "S3")
    read_timeout = number(options, "read_timeout", float, DEFAULT_READ_TIMEOUT, "S3")
    positive_seconds(connect_timeout, "connect_timeout", "S3")
    positive_seconds(read_timeout, "read_timeout", "S3")
    sdk_attempts = number(options, "sdk_attempts", int, 1, "S3")
    if sdk_attempts < 1:
        raise ConfigurationError(f"S3 sdk_attempts must be at least 1, got {sdk_attempts}")
    addressing_style = _text(options, "addressing_style") or ("path" if endpoint_url else "auto")
    if addressing_style not in ("auto", "path", "virtual"):
        raise ConfigurationError(
            f"S3 addressing_style must be 'auto', 'path' or 'virtual', got {addressing_style!r}"
        )
    access_key_id = _text(options, "access_key_id")
    secret_access_key = _text(options, "secret_access_key")
    if (access_key_id is None) != (secret_access_key is None):
        raise ConfigurationError("S3 access_key_id and secret_access_key must be given together")
    sse, kms_key_id, customer_key = _encryption(options)
    return S3Config(
        bucket=bucket,
        prefix=path.strip("/"),
        endpoint_url=endpoint_url,
        region_name=_text(options, "region_name"),
        addressing_style=addressing_style,
        access_key_id=access_key_id,
        secret_access_key=secret_access_key,
        session_token=_text(options, "session_token"),
        profile_name=_text(options, "profile_name"),
        multipart_threshold=threshold,
        part_size=part_size,
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        sdk_attempts=sdk_attempts,
        max_pool_connections=number(options, "max_pool_connections", int, 10, "S3"),
        server_side_encryption=sse,
        sse_kms_key_id=kms_key_id,
        sse_customer_key=customer_key,
    )


def _encryption(options: Mapping[str, object]) -> tuple[str | None, str | None, bytes | None]:
    """``(server_side_encryption, sse_kms_key_id, sse_customer_key)``. A KMS key id alone means
    ``aws:kms``; a customer key (base64 of 32 bytes, option or ``$CAS_S3_SSE_CUSTOMER_KEY``) is SSE-C
    and excludes the other two. Messages never show the customer key."""
    sse = _text(options, "server_side_encryption") or None
    kms_key_id = _text(options, "sse_kms_key_id") or None
    if kms_key_id and sse is None:
        sse = "aws:kms"
    if sse is not None and sse not in SSE_MODES:
        raise ConfigurationError(f"S3 server_side_encryption must be one of {', '.join(SSE_MODES)}, got {sse!r}")
    if kms_key_id and not sse.startswith("aws:kms"):  # type: ignore[union-attr]
        raise ConfigurationError("S3 sse_kms_key_id needs server_side_encryption aws:kms (or none)")
    text = _text(options, "sse_customer_key") or os.environ.get(SSE_CUSTOMER_KEY_ENV) or None
    if text is None:
        return sse, kms_key_id, None
    if sse is not None:
        raise ConfigurationError(
            "S3 sse_customer_key (SSE-C) cannot be combined with server_side_encryption or sse_kms_key_id"
        )
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != 32:
        raise ConfigurationError(
            f"S3 sse_customer_key (or ${SSE_CUSTOMER_KEY_ENV}) must be the base64 of 32 random bytes "
            "(e.g. from 'openssl rand -base64 32')"
        )
    return None, None, key


__all__ = [
    "MAX_PARTS", "MAX_PART_SIZE", "MIN_PART_SIZE", "OPTIONS", "SSE_CUSTOMER_KEY_ENV", "SSE_MODES", "URL_OPTIONS",
    "S3Config", "parse",
]
