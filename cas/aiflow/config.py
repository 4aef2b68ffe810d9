"""AIFlow's ``blob_manager_config`` keys -> where the cas repository is and what URIs start with.

One adapter per manager class, each ``(config, owner) -> Location``: it checks the class's
required keys first, in a fixed order, then maps the rest. ``owner`` is the manager class name,
which every :class:`ConfigurationError` starts with. Adapters only read the mapping (and, for
OSS, which credentials the environment supplies); nothing is opened or sent anywhere.

Repository, and URI root, per adapter:

* :func:`cas_location`: ``repo`` as given (a URL or a Backend); ``repo`` (a Backend's redacted URL).
* :func:`local_location`: the path ``<root_directory>/cas``; ``root_directory``.
* :func:`oss_location`: ``oss://<bucket>/<root_directory>/cas``; ``oss://<bucket>/<root_directory>``.
* :func:`hdfs_location`: ``hdfs:///<root_directory>/cas``; ``root_directory``.
* :func:`s3_location`: ``s3://<bucket_name>[/<root_directory>]/cas``; the same without ``/cas``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from backends import redact_url
from backends.base import Backend
from backends.oss_config import environment_fallbacks as oss_environment_fallbacks
from cas import passphrase
from cas.errors import ConfigurationError

REPO_DIR = "cas"
"""Where the repository lives under the configured root on the backend."""

OSS_PASSED_THROUGH = (
    "part_size", "multipart_threshold", "connect_timeout", "read_timeout", "server_side_encryption", "sse_kms_key_id",
    "region", "auth_version",
)
"""OSS backend options an ``OssBlobManager`` config may carry, passed on unchanged."""
S3_CREDENTIALS = ("endpoint_url", "region_name", "access_key_id", "secret_access_key", "session_token")
"""AIFlow 0.3's S3 keys that are S3 backend options of the same name (strings)."""
S3_ENCRYPTION = ("server_side_encryption", "sse_kms_key_id", "sse_customer_key")
"""cas's own S3 keys for server-side encryption (docs/backends-s3.md), passed on unchanged."""
S3_BOTOCORE = frozenset({"connect_timeout", "read_timeout", "max_pool_connections", "s3"})
"""The botocore ``Config`` arguments (AIFlow's ``config`` key) the S3 backend can honour."""


@dataclass(frozen=True)
class Location:
    """Where a manager's repository is (a URL or an open backend, with backend options) and the
    root its URIs start with."""

    repo: str | Backend
    options: dict[str, Any]
    uri_root: str


def required(config: Mapping[str, Any], key: str, owner: str) -> None:
    """Refuse a config whose ``key`` is missing, blank, or neither a string nor a Backend."""
    value = config.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise ConfigurationError(f"{owner}: blob_manager_config is missing the required key {key!r}")
    if not isinstance(value, (str, Backend)):
        raise ConfigurationError(f"{owner}: {key} must be a string, got {type(value).__name__}")


def optional_str(config: Mapping[str, Any], key: str, owner: str) -> str | None:
    """``config[key]`` if it is a non-empty string; None if absent or empty; else refused."""
    value = config.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ConfigurationError(f"{owner}: {key} must be a string, got {type(value).__name__}")
    return value


def cas_location(config: Mapping[str, Any], owner: str) -> Location:
    """``CasBlobManager``: ``repo`` (required; a URL or a Backend), ``backend_options`` (a mapping)."""
    required(config, "repo", owner)
    repo = config["repo"]
    options = config.get("backend_options") or {}
    if not isinstance(options, Mapping):
        raise ConfigurationError(f"{owner}: backend_options must be a mapping")
    if isinstance(repo, Backend):
        return Location(repo, {}, redact_url(repo.describe()).rstrip("/"))
    return Location(str(repo), dict(options), str(repo).rstrip("/"))


def local_location(config: Mapping[str, Any], owner: str) -> Location:
    """``LocalBlobManager``: ``root_directory`` (required), a local path."""
    required(config, "root_directory", owner)
    root = str(config["root_directory"])
    path = os.path.join(os.path.abspath(os.path.expanduser(root)), REPO_DIR)
    return Location(path, {}, root.rstrip("/"))


def oss_location(config: Mapping[str, Any], owner: str) -> Location:
    """``OssBlobManager``: ``bucket``, ``root_directory`` (required); the credentials
    ``access_key_id``, ``access_key_secret``, ``endpoint``, each required unless the environment
    variable :func:`backends.oss_config.environment_fallbacks` names for it is set (then the backend reads
    it); and :data:`OSS_PASSED_THROUGH`."""
    required(config, "bucket", owner)
    required(config, "root_directory", owner)
    options: dict[str, Any] = {}
    for key, (env, env_value) in oss_environment_fallbacks().items():
        value = config.get(key)
        if value is None or value == "":
            if not env_value:
                raise ConfigurationError(
                    f"{owner}: blob_manager_config is missing the required key {key!r} (or set ${env})"
                )
            continue  # the backend reads the environment itself
        options[key] = str(value)
    for key in OSS_PASSED_THROUGH:
        if config.get(key) is not None:
            options[key] = config[key]
    bucket = str(config["bucket"])
    prefix = str(config["root_directory"]).strip("/")
    base = f"oss://{bucket}/{prefix}" if prefix else f"oss://{bucket}"
    return Location(f"{base}/{REPO_DIR}", options, base)


def hdfs_location(config: Mapping[str, Any], owner: str) -> Location:
    """``HDFSBlobManager``: ``hdfs_url`` (the WebHDFS address), ``root_directory`` (required);
    ``hdfs_user`` (default: the backend's, the local user name)."""
    required(config, "hdfs_url", owner)
    required(config, "root_directory", owner)
    root = str(config["root_directory"])
    options: dict[str, Any] = {"hdfs_url": str(config["hdfs_url"])}
    user = optional_str(config, "hdfs_user", owner)
    if user:
        options["hdfs_user"] = user
    path = "/" + "/".join(p for p in root.split("/") if p)
    repo = f"hdfs://{path.rstrip('/')}/{REPO_DIR}"
    return Location(repo, options, root.rstrip("/"))


def s3_location(config: Mapping[str, Any], owner: str) -> Location:
    """``S3BlobManager``: ``bucket_name`` (required); :data:`S3_CREDENTIALS`, :data:`S3_ENCRYPTION`; ``config`` (see
    :func:`s3_botocore_options`); ``service_name`` must be ``s3``; ``use_ssl`` and ``verify`` only at
    their defaults (``use_ssl: false`` with an ``http://`` endpoint); ``api_version`` ignored;
    ``root_directory`` (optional) a key prefix inside the bucket."""
    required(config, "bucket_name", owner)
    options: dict[str, Any] = {}
    for key in S3_CREDENTIALS + S3_ENCRYPTION:
        value = optional_str(config, key, owner)
        if value:
            options[key] = value
    service = config.get("service_name")
    if service not in (None, "s3"):
        raise ConfigurationError(f"{owner}: service_name must be 's3', got {service!r}")
    if config.get("use_ssl") is False and not str(options.get("endpoint_url", "")).startswith("http://"):
        raise ConfigurationError(
            f"{owner}: use_ssl: false is not supported; give an http:// endpoint_url instead"
        )
    if config.get("verify") not in (None, True):
        raise ConfigurationError(
            f"{owner}: verify={config.get('verify')!r} is not supported by cas's S3 backend; remove the key"
        )
    options.update(s3_botocore_options(config.get("config"), owner))
    bucket = str(config["bucket_name"])
    prefix = str(config.get("root_directory") or "").strip("/")
    base = f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"
    return Location(f"{base}/{REPO_DIR}", options, base)


def s3_botocore_options(botocore: object, owner: str) -> dict[str, Any]:
    """S3 backend options from AIFlow's ``config`` (botocore ``Config`` arguments): the
    :data:`S3_BOTOCORE` keys, of ``s3`` only ``addressing_style``; anything else is refused."""
    if botocore is None:
        return {}
    if not isinstance(botocore, Mapping):
        raise ConfigurationError(f"{owner}: config must be a mapping of botocore Config arguments")
    unknown = sorted(set(botocore) - S3_BOTOCORE)
    if unknown:
        raise ConfigurationError(
            f"{owner}: config key(s) {', '.join(unknown)} are not supported; "
            f"supported: {', '.join(sorted(S3_BOTOCORE))}"
        )
    options: dict[str, Any] = {
        k: botocore[k] for k in ("connect_timeout", "read_timeout", "max_pool_connections") if k in botocore
    }
    s3 = botocore.get("s3") or {}
    if not isinstance(s3, Mapping) or set(s3) - {"addressing_style"}:
        raise ConfigurationError(f"{owner}: config.s3 supports only addressing_style")
    if "addressing_style" in s3:
        options["addressing_style"] = s3["addressing_style"]
    return options


def passphrase_source(config: Mapping[str, Any], owner: str) -> Callable[[], str]:
    """The ``password`` / ``password_file`` keys (else ``$CAS_PASSWORD``), read only if the
    repository is encrypted. A worker has no terminal: no prompt."""
    given = optional_str(config, "password", owner)
    if given is not None:
        return passphrase.fixed(given)
    path = optional_str(config, "password_file", owner)
    return passphrase.source(os.path.expanduser(path) if path else None, prompt="repository passphrase",
                             terminal=False)
