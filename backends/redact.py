"""Keeping secrets out of what is printed: URLs, endpoints and error messages.

Every driver and every message about a location goes through here (restic's ``StripPassword``):
a secret handed to a backend reaches its SDK and nowhere else.
"""

from __future__ import annotations

import re
from urllib.parse import unquote, urlsplit, urlunsplit

#: Query parameters whose value is a secret, matched within the lowered name.
_SECRET_NAME_PARTS = ("secret", "password", "token", "key")
#: Hadoop delegation tokens, as requests and HdfsCLI write them into messages with the request URL.
_TOKEN_PARAMS = re.compile(r"((?:delegation|token|doas_token)=)[^&\s'\"]+", re.IGNORECASE)


def redact_url(url: str) -> str:
    """The URL with any password or secret query value replaced, safe to print."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:***@{host}" if ":" in userinfo else f"{user}@{host}"
    query = parts.query
    if query:
        kept = []
        for item in query.split("&"):
            name = item.split("=", 1)[0]
            if any(s in name.lower() for s in _SECRET_NAME_PARTS):
                kept.append(f"{name}=***")
            else:
                kept.append(item)
        query = "&".join(kept)
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def endpoint_secrets(url: str | None) -> tuple[str, ...]:
    """Credentials written into a service endpoint URL (``http://user:secret@host``), to scrub from
    every message: SDKs print the endpoint, userinfo included, when a request fails. The whole
    userinfo counts as secret (a token is sometimes given as the user name), also percent-decoded."""
    if not url:
        return ()
    netloc = urlsplit(url).netloc
    if "@" not in netloc:
        return ()
    userinfo = netloc.rsplit("@", 1)[0]
    password = userinfo.split(":", 1)[1] if ":" in userinfo else ""
    found = {userinfo, unquote(userinfo), password, unquote(password)} - {""}
    return tuple(sorted(found, key=len, reverse=True))  # longest first, so a part never hides the whole


def redact_endpoint(url: str) -> str:
    """A service endpoint URL without any userinfo, safe to print."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[1]).geturl()


def scrub_tokens(text: str) -> str:
    """``text`` with the value of any delegation-token query parameter replaced."""
    return _TOKEN_PARAMS.sub(r"\1***", text)


class Secrets:
    """The secret strings a driver must scrub from its messages; ``repr`` never shows them, so
    keeping them on a backend does not leak them into ``vars()`` or a debugger's dump."""

    __slots__ = ("values",)

    def __init__(self, *values: str | None) -> None:
        # Longest first, so a secret that contains another is replaced whole.
        self.values = tuple(sorted({v for v in values if v}, key=len, reverse=True))

    def scrub(self, text: str) -> str:
        """``text`` with every secret replaced by ``***``."""
        for secret in self.values:
            text = text.replace(secret, "***")
        return text

    def __repr__(self) -> str:
        return f"<{len(self.values)} redacted>"


__all__ = ["Secrets", "endpoint_secrets", "redact_endpoint", "redact_url", "scrub_tokens"]
