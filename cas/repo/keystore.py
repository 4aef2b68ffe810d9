"""An encrypted repository's passphrase keys on the backend: ``keys/<id>``, each the master key
wrapped by a key derived from one passphrase (docs/FORMAT.md, "Encrypted repositories").

Opening an encrypted repository tries the passphrase on each key (one scrypt each, about half a
second at the default cost) and wraps the backend in :class:`~cas.repo.encrypted.EncryptedBackend`.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from backends import redact_url
from backends.base import Backend
from cas.errors import CasError, ConfigurationError, IntegrityError, NotFound, PermissionDenied
from cas.format.config import RepoConfig

KEY_PREFIX = "keys/"
_KEY_ID_LEN = 16

Passphrase = str | Callable[[], str]
"""A passphrase, or a function asked for it only when a repository turns out to be encrypted."""


class WrongPassphrase(PermissionDenied):
    """No key of the repository opens with the passphrase given."""


@dataclass(frozen=True)
class KeyInfo:
    key_id: str
    created_ns: int
    kdf_cost: int
    current: bool
    """The key the passphrase of this process opened."""

    def to_dict(self) -> dict[str, object]:
        return {"id": self.key_id, "created_ns": self.created_ns, "kdf": "scrypt", "kdf_cost": self.kdf_cost,
                "current": self.current}


@dataclass
class Unlocked:
    """An encrypted repository opened by a passphrase: its master key and the key that opened it."""

    master: bytes
    key_id: str

    def __repr__(self) -> str:
        return f"Unlocked(key_id={self.key_id!r})"


def _enc():  # type: ignore[no-untyped-def]
    from cas.format import encryption  # the [encrypt] extra, imported only for encrypted repositories

    return encryption


def resolve(passphrase: Passphrase | None, backend: Backend, *, creating: bool = False, adding: bool = False) -> str:
    """The passphrase's text; a missing one is one line saying where to give it (``adding``: the
    passphrase of a key being added, not the one that opens the repository)."""
    text = passphrase() if callable(passphrase) else passphrase
    if not text:
        where = redact_url(backend.describe())
        if adding:
            raise ConfigurationError(
                f"a new key for the repository at {where} needs its passphrase "
                "(CAS_NEW_PASSWORD, --new-password-file FILE, or a prompt on a terminal)"
            )
        what = "would be encrypted" if creating else "is encrypted"
        raise ConfigurationError(
            f"the repository at {where} {what}: give its passphrase "
            "(CAS_PASSWORD, --password-file FILE, or a prompt on a terminal)"
        )
    return text


def is_given(passphrase: Passphrase | None) -> bool:
    """Whether a passphrase was given (a value, a file, an environment variable), without asking
    for one at a prompt. A source that can tell says so by a ``given`` function attribute."""
    if passphrase is None or isinstance(passphrase, str):
        return bool(passphrase)
    given = getattr(passphrase, "given", None)
    return bool(given()) if callable(given) else False


def check_unencrypted(backend: Backend, passphrase: Passphrase | None) -> None:
    """An unencrypted config where a passphrase was given: refuse it if the repository has keys,
    since its encrypted config was then replaced (by someone who could write the bucket), and
    writing on would store snapshots in clear. Costs one listing, only when a passphrase is given."""
    if is_given(passphrase) and key_ids(backend):
        raise IntegrityError(
            f"the repository at {redact_url(backend.describe())} has encryption keys but an unencrypted "
            "config: its config was replaced; refusing to use it"
        )


def key_ids(backend: Backend) -> list[str]:
    return sorted(
        name for name in (info.key[len(KEY_PREFIX):] for info in backend.list(KEY_PREFIX))
        if len(name) == _KEY_ID_LEN and all(c in "0123456789abcdef" for c in name)
    )


def _read_key(backend: Backend, key_id: str):  # type: ignore[no-untyped-def]
    return _enc().KeyFile.parse(key_id, backend.get(KEY_PREFIX + key_id, 0, 8192))


def write_key(
    backend: Backend, config: RepoConfig, master: bytes, passphrase: str, cost: int | None = None
) -> str:
    """Add a key file for ``passphrase``; its ID."""
    enc = _enc()
    key_id = secrets.token_hex(_KEY_ID_LEN // 2)
    data = enc.wrap_key(
        master, passphrase, repo_id=config.repo_id, key_id=key_id, config=config.to_json(),
        cost=enc.KDF_COST_DEFAULT if cost is None else cost, created_ns=time.time_ns(),
    )
    backend.put(KEY_PREFIX + key_id, data, overwrite=False)
    return key_id


def new_master_key() -> bytes:
    return _enc().new_master_key()


def unlock(backend: Backend, config: RepoConfig, passphrase: Passphrase | None) -> Unlocked:
    text = resolve(passphrase, backend)
    ids = key_ids(backend)
    if not ids:
        raise IntegrityError(f"the encrypted repository at {redact_url(backend.describe())} has no keys")
    for key_id in ids:
        try:
            key = _read_key(backend, key_id)
        except (NotFound, IntegrityError):
            continue  # removed meanwhile, or not a key file: the others may open
        master = key.unwrap(text, repo_id=config.repo_id, config=config.to_json())
        if master is not None:
            return Unlocked(master, key_id)
    raise WrongPassphrase(f"wrong passphrase for the repository at {redact_url(backend.describe())}")


def wrap_backend(backend: Backend, unlocked: Unlocked) -> Backend:
    from cas.repo.encrypted import EncryptedBackend

    return EncryptedBackend(backend, _enc().RepoKeys.from_master(unlocked.master))


def list_keys(backend: Backend, unlocked: Unlocked) -> list[KeyInfo]:
    out = []
    for key_id in key_ids(backend):
        try:
            key = _read_key(backend, key_id)
        except NotFound:
            continue
        out.append(KeyInfo(key_id, key.created_ns, key.cost, key_id == unlocked.key_id))
    return out


def remove_key(backend: Backend, unlocked: Unlocked, key_id: str) -> None:
    """Remove a key. The last one, and the one this process opened the repository with, stay
    (so a typo cannot lock everyone out, and removing a key needs another passphrase)."""
    ids = key_ids(backend)
    if key_id not in ids:
        raise NotFound(f"no key {key_id!r} in this repository (see 'cas key list')")
    if len(ids) == 1:
        raise ConfigurationError("refusing to remove the repository's last key: add another first")
    if key_id == unlocked.key_id:
        raise ConfigurationError(
            "refusing to remove the key this passphrase opened: open the repository with another passphrase to remove it"
        )
    backend.delete(KEY_PREFIX + key_id)


def create(backend: Backend, config: RepoConfig, passphrase: Passphrase | None, cost: int | None) -> Unlocked:
    """The first key of a new encrypted repository, written before its config (a config without a
    key would be a repository nobody can open)."""
    text = resolve(passphrase, backend, creating=True)
    if cost is not None:
        _enc().check_kdf_cost(cost)
    master = new_master_key()
    key_id = write_key(backend, config, master, text, cost)
    return Unlocked(master, key_id)


def discard(backend: Backend, unlocked: Unlocked) -> None:
    """Remove the key of a repository whose creation did not happen (another config won the race,
    or writing the config failed). Best effort: the error that stopped the creation matters more."""
    try:
        backend.delete(KEY_PREFIX + unlocked.key_id)
    except CasError:
        pass

