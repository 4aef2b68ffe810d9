"""The HDFS driver's settings: read from ``hdfs://host:port/path`` (or ``webhdfs://``) and options,
checked, frozen. The delegation token is a secret: kept here, hidden from ``repr``, until the driver
hands it to HdfsCLI; never printed.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, unquote, urlsplit

from backends.errors import ConfigurationError
from backends.options import truthy

DEFAULT_PORT = 9870
DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_READ_TIMEOUT = 120.0
OPTIONS = ("hdfs_user", "user", "hdfs_url", "timeout", "kerberos", "token", "mutual_auth", "create")


@dataclass(frozen=True)
class HdfsConfig:
    endpoint: str
    """WebHDFS base URL(s), ``;``-separated for HA."""
    root: str
    location: str
    """What :meth:`HdfsBackend.describe` prints: the URL, the user and the means of authentication."""
    user: str | None
    kerberos: bool
    mutual_auth: str
    timeout: float | tuple[float, float]
    token: str | None = field(default=None, repr=False)


def parse(url: str, options: dict[str, object]) -> HdfsConfig:
    """Options (keyword arguments, or the same names in the URL's query string; keywords win):
    ``hdfs_user``/``user`` the user name for simple authentication (default: the local user);
    ``hdfs_url`` the WebHDFS base URL(s) to use instead of the URL's host, e.g.
    ``https://nn1:9871;https://nn2:9871`` for HA; ``timeout`` seconds, or (connect, read);
    ``kerberos`` true for SPNEGO (needs ``requests-kerberos``), with ``mutual_auth``;
    ``token`` a Hadoop delegation token (a secret: it is never printed).
    """
    parts = urlsplit(url)
    if parts.scheme not in ("hdfs", "webhdfs"):
        raise ConfigurationError(f"not an HDFS URL: {parts.scheme}://...")
    merged: dict[str, object] = dict(parse_qsl(parts.query))
    merged.update(options)
    unknown = sorted(set(merged) - set(OPTIONS))
    if unknown:
        raise ConfigurationError(
            f"unknown HDFS option(s) {', '.join(unknown)}; known: {', '.join(OPTIONS[:-1])}"
        )
    if not parts.hostname and not merged.get("hdfs_url"):
        raise ConfigurationError(f"{parts.scheme}:// URL needs a namenode host:port (or the hdfs_url option)")
    root = unquote(parts.path) or "/"
    if any(p in (".", "..") for p in root.split("/")):
        raise ConfigurationError(f"HDFS root path must not contain '.' or '..': {root}")

    try:
        port = parts.port or DEFAULT_PORT
    except ValueError as exc:
        raise ConfigurationError(f"bad port in {parts.scheme}:// URL") from exc
    host = parts.hostname or ""
    host_port = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    endpoint = str(merged.get("hdfs_url") or f"http://{host_port}")
    user_value = merged.get("hdfs_user") or merged.get("user") or parts.username
    user = str(user_value) if user_value else None
    token = merged.get("token")
    kerberos = truthy(merged.get("kerberos", False))
    timeout = _timeout(merged.get("timeout"))
    if token and kerberos:
        raise ConfigurationError("HDFS options token and kerberos exclude each other; give one")
    if user and (token or kerberos):
        raise ConfigurationError(
            "HDFS option hdfs_user/user applies to simple authentication only; with kerberos or token "
            "the identity comes from the ticket or token, so drop the user"
        )

    location = f"{parts.scheme}://{host_port if host else ''}{posixpath.normpath('/' + root.strip('/'))}"
    details = []
    if user:
        details.append(f"user={user}")
    if kerberos:
        details.append("kerberos")
    if token:
        details.append("token=***")
    if merged.get("hdfs_url"):
        details.append("via " + ";".join(_strip_userinfo(u) for u in endpoint.split(";") if u))
    if details:
        location += " (" + ", ".join(details) + ")"
    return HdfsConfig(
        endpoint=endpoint, root=root, location=location, user=user, kerberos=kerberos,
        mutual_auth=str(merged.get("mutual_auth") or "OPTIONAL"), timeout=timeout,
        token=str(token) if token else None,
    )


def _timeout(value: object) -> float | tuple[float, float]:
    if value is None:
        return (DEFAULT_CONNECT_TIMEOUT, DEFAULT_READ_TIMEOUT)
    try:
        if isinstance(value, (tuple, list)):
            connect, read = value
            return (float(connect), float(read))
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(f"HDFS option timeout must be seconds, got {value!r}") from exc


def _strip_userinfo(url: str) -> str:
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    return parts._replace(netloc=netloc, query="", fragment="").geturl()


__all__ = ["DEFAULT_PORT", "OPTIONS", "HdfsConfig", "parse"]
