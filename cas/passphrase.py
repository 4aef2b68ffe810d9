"""Where a front end finds an encrypted repository's passphrase: a file, an environment
variable, or a prompt on a terminal; never a command-line argument (argv is visible to every user
of the host in ``ps``), never printed or logged (docs/SECURITY.md)."""

from __future__ import annotations

import getpass
import os
import sys
from collections.abc import Callable

from cas.errors import ConfigurationError

ENV = "CAS_PASSWORD"
NEW_ENV = "CAS_NEW_PASSWORD"
_MAX_FILE = 4096


def read_password_file(path: str) -> str:
    """The passphrase in ``path``: its first line, without the line end."""
    try:
        with open(path, "rb") as f:
            data = f.read(_MAX_FILE + 1)
    except OSError as exc:
        raise ConfigurationError(f"cannot read the password file {path!r}: {exc.strerror or exc}") from None
    if len(data) > _MAX_FILE:
        raise ConfigurationError(f"the password file {path!r} is larger than {_MAX_FILE} bytes")
    text = data.decode("utf-8", "surrogateescape").split("\n", 1)[0].rstrip("\r")
    if not text:
        raise ConfigurationError(f"the password file {path!r} holds no passphrase on its first line")
    return text


def source(
    password_file: str | None, *, env: str = ENV, prompt: str = "passphrase", confirm: bool = False,
    terminal: bool = True,
) -> Callable[[], str]:
    """A function that finds the passphrase when first asked (only encrypted repositories ask),
    from ``password_file``, else ``$env``, else a prompt when stdin is a terminal, else nothing
    (the repository then says how to give one). The answer is kept: one prompt per process.
    ``terminal=False``: never prompt (a library inside a worker)."""
    found: list[str] = []

    def get() -> str:
        if not found:
            found.append(_find(password_file, env, prompt if terminal else None, confirm))
        return found[0]

    get.given = lambda: bool(password_file or os.environ.get(env))  # type: ignore[attr-defined]
    return get


def fixed(text: str) -> Callable[[], str]:
    """A passphrase given as a value (AIFlow's ``password`` key)."""

    def get() -> str:
        return text

    get.given = lambda: bool(text)  # type: ignore[attr-defined]
    return get


def _find(password_file: str | None, env: str, prompt: str | None, confirm: bool) -> str:
    if password_file:
        return read_password_file(password_file)
    if os.environ.get(env):
        return os.environ[env]
    if prompt is not None and sys.stdin is not None and sys.stdin.isatty():
        text = getpass.getpass(f"{prompt}: ")
        if confirm and getpass.getpass(f"{prompt} again: ") != text:
            raise ConfigurationError("the passphrases typed do not match")
        return text
    return ""
