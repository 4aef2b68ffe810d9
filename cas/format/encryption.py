"""Client-side encryption formats, no I/O (docs/FORMAT.md, "Encrypted repositories").

The one module that imports ``cryptography`` (the ``[encrypt]`` extra); it is imported only when
a repository is encrypted, so unencrypted repositories need nothing more than before.

- **Objects** are sealed in segments of :data:`SEGMENT` plaintext bytes, each with AES-256-GCM
  under a key derived for that object from a random salt in its header, a nonce that is the
  segment's number and a flag marking the last one, and the object's (plaintext) name as
  associated data. A range of plaintext maps to the segments covering it, so the engine's ranged
  reads stay ranged; truncation, reordering, swapping segments or whole objects all fail
  authentication.
- **Names** are encrypted deterministically with AES-SIV, so the same plaintext key always maps to
  the same backend key (put-if-absent still claims it) and the backend's names reveal nothing.
- **Keys**: a random master key, wrapped (AES-256-GCM) by keys derived from passphrases with scrypt.
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass

import blake3

from cas.errors import ConfigurationError, IntegrityError, MissingDependency
from cas.format import jsondoc

try:
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM, AESSIV
    from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
except ImportError as _exc:  # pragma: no cover - depends on the installation
    raise MissingDependency(
        "encrypted repositories need the 'cryptography' package: pip install 'cas-store[encrypt]'"
    ) from _exc

CIPHER = "aes-256-gcm-64k"
"""Objects: AES-256-GCM over segments of 64 KiB (the config's ``encryption.cipher``)."""
NAMES = "aes-siv-256"
"""Object names: AES-SIV with a 512-bit key (the config's ``encryption.names``)."""
KDF = "scrypt"

SEGMENT = 64 * 1024
TAG = 16
MAGIC = b"CASENC01"
SALT = 32
HEADER = len(MAGIC) + SALT
"""An object starts with the magic and a random salt; then its segments, each ciphertext + tag."""
_SEALED_SEGMENT = SEGMENT + TAG

MASTER_KEY_BYTES = 32

KDF_COST_DEFAULT = 17
"""scrypt's N = 2**17 with r=8, p=1: 128 MiB and about half a second on this project's machines."""
KDF_COST_MIN = 10
"""The floor: N = 2**10 (1 MiB). Only for tests and throwaway repositories."""
KDF_COST_MAX = 18
"""N = 2**18: 256 MiB, the most a KDF may ask of a worker's memory."""
_SCRYPT_R = 8
_SCRYPT_P = 1


@dataclass(frozen=True)
class RepoKeys:
    """The keys derived from a repository's master key, one per purpose."""

    data: bytes
    names: bytes

    @classmethod
    def from_master(cls, master: bytes) -> RepoKeys:
        if len(master) != MASTER_KEY_BYTES:
            raise IntegrityError("the repository's master key has the wrong length")
        data = blake3.blake3(master, derive_key_context="cas 2026 object segments").digest()
        names = blake3.blake3(master, derive_key_context="cas 2026 object names").digest(64)
        return cls(data, names)

    def __repr__(self) -> str:
        return "RepoKeys(...)"


# -- object contents -----------------------------------------------------------------------------


def _object_key(keys: RepoKeys, salt: bytes) -> AESGCM:
    return AESGCM(blake3.blake3(salt, key=keys.data).digest())


def _nonce(index: int, last: bool) -> bytes:
    return index.to_bytes(11, "little") + (b"\x01" if last else b"\x00")


def _aad(name: str) -> bytes:
    return b"cas object\x00" + name.encode("utf-8", "surrogateescape")


def segment_count(plain_size: int) -> int:
    return max(1, -(-plain_size // SEGMENT))


def sealed_size(plain_size: int) -> int:
    return HEADER + plain_size + TAG * segment_count(plain_size)


def plain_size(size: int) -> int:
    """The plaintext size of a sealed object of ``size`` bytes. A size no sealed object can have
    (a truncated one) gives a smaller answer, never an error: reading it fails authentication."""
    body = size - HEADER
    if body < TAG:
        return 0
    return max(0, body - TAG * -(-body // _SEALED_SEGMENT))


def seal(keys: RepoKeys, name: str, data: bytes | bytearray | memoryview, salt: bytes | None = None) -> memoryview:
    """Encrypt an object's bytes for the backend, bound to its plaintext ``name``. Written into one
    buffer as it goes, so sealing a pack costs one pack's worth of memory more, not two."""
    salt = os.urandom(SALT) if salt is None else salt
    aead = _object_key(keys, salt)
    aad = _aad(name)
    view = memoryview(data)
    count = segment_count(len(view))
    out = bytearray(sealed_size(len(view)))
    out[: len(MAGIC)] = MAGIC
    out[len(MAGIC) : HEADER] = salt
    at = HEADER
    for i in range(count):
        sealed = aead.encrypt(_nonce(i, i == count - 1), view[i * SEGMENT : (i + 1) * SEGMENT], aad)
        out[at : at + len(sealed)] = sealed
        at += len(sealed)
    return memoryview(out)


def parse_header(header: bytes) -> bytes:
    """The salt of a sealed object's header."""
    if len(header) < HEADER or header[: len(MAGIC)] != MAGIC:
        raise IntegrityError("encrypted object has no valid header (not written by this repository?)")
    return bytes(header[len(MAGIC) : HEADER])


@dataclass(frozen=True)
class SealedRange:
    """Which sealed bytes cover a plaintext range: read ``length`` bytes (or all the rest, when
    None) from ``offset``, which starts segment ``first``."""

    first: int
    offset: int
    length: int | None


def covering(offset: int, length: int | None) -> SealedRange:
    """The sealed range holding plaintext ``[offset, offset + length)`` (to the end when None)."""
    first = offset // SEGMENT
    start = HEADER + first * _SEALED_SEGMENT
    if length is None:
        return SealedRange(first, start, None)
    last = (offset + max(length, 1) - 1) // SEGMENT
    return SealedRange(first, start, (last - first + 1) * _SEALED_SEGMENT)


def open_segments(
    keys: RepoKeys, name: str, salt: bytes, first: int, sealed: bytes | memoryview, *, at_end: bool | None,
    skip: int = 0, length: int | None = None,
) -> bytes:
    """Decrypt consecutive sealed segments starting at segment ``first``, and return their
    plaintext from ``skip`` on (``length`` bytes of it, or all).

    ``at_end``: True when ``sealed`` runs to the end of the object (its last segment must be the
    last), False when more of the object follows, None when unknown (a read that returned exactly
    what it asked for: the last segment may or may not be the object's last).
    """
    aead = _object_key(keys, salt)
    aad = _aad(name)
    view = memoryview(sealed)
    out = []
    count = -(-len(view) // _SEALED_SEGMENT)
    if count == 0:
        if at_end and first == 0:
            raise IntegrityError(f"encrypted object {name} is truncated")
        return b""
    for i in range(count):
        if length is not None and i * SEGMENT >= skip + length:
            break  # past the range asked for (a read that may have fetched a little more)
        piece = view[i * _SEALED_SEGMENT : (i + 1) * _SEALED_SEGMENT]
        final_here = i == count - 1
        if len(piece) < TAG:
            raise IntegrityError(f"encrypted object {name} is truncated")
        candidates = [False]
        if final_here and at_end is not False:
            candidates = [True] if at_end else [False, True]
        for last in candidates:
            try:
                out.append(aead.decrypt(_nonce(first + i, last), piece, aad))
                break
            except InvalidTag:
                continue
        else:
            raise IntegrityError(f"encrypted object {name} failed authentication (damaged, or not this object)")
    # Trim the first and last segments before joining: one copy of the range, not of the segments.
    if out and skip:
        out[0] = out[0][skip:] if skip < len(out[0]) else b""
    if length is not None:
        kept = 0
        for i, part in enumerate(out):
            if kept + len(part) >= length:
                out[i] = part[: length - kept]
                del out[i + 1 :]
                break
            kept += len(part)
    return out[0] if len(out) == 1 else b"".join(out)


def open_object(keys: RepoKeys, name: str, sealed: bytes | memoryview) -> bytes:
    """Decrypt a whole sealed object."""
    salt = parse_header(bytes(sealed[:HEADER]))
    return open_segments(keys, name, salt, 0, memoryview(sealed)[HEADER:], at_end=True)


# -- object names --------------------------------------------------------------------------------

_NAME_PAD = 32


def encrypt_name(keys: RepoKeys, area: str, rest: str) -> str:
    """``rest`` of a key (after its first component ``area``), encrypted deterministically and
    spelled in lowercase base32. Padded to a multiple of 32 bytes, so lengths show only roughly."""
    raw = rest.encode("utf-8", "surrogateescape")
    raw += b"\x00" * (-len(raw) % _NAME_PAD)
    token = AESSIV(keys.names).encrypt(raw, [area.encode("utf-8", "surrogateescape")])
    return base64.b32encode(token).decode("ascii").rstrip("=").lower()


def decrypt_name(keys: RepoKeys, area: str, token: str) -> str | None:
    """The ``rest`` an encrypted name stands for, or None when it is not one of this repository's."""
    try:
        data = base64.b32decode(token.upper() + "=" * (-len(token) % 8))
        raw = AESSIV(keys.names).decrypt(data, [area.encode("utf-8", "surrogateescape")])
    except (ValueError, InvalidTag):
        return None
    try:
        return raw.rstrip(b"\x00").decode("utf-8", "surrogateescape")
    except UnicodeDecodeError:  # pragma: no cover - authenticated, so only our own names
        return None


# -- passphrase keys -----------------------------------------------------------------------------


def check_kdf_cost(cost: int) -> int:
    if type(cost) is not int or not (KDF_COST_MIN <= cost <= KDF_COST_MAX):
        raise ConfigurationError(
            f"KDF cost must be an integer from {KDF_COST_MIN} to {KDF_COST_MAX} (scrypt N = 2**cost)"
        )
    return cost


def _kek(passphrase: str, salt: bytes, cost: int) -> bytes:
    return Scrypt(salt=salt, length=32, n=2**cost, r=_SCRYPT_R, p=_SCRYPT_P).derive(
        passphrase.encode("utf-8", "surrogateescape")
    )


def _key_aad(repo_id: str, key_id: str, config: bytes) -> bytes:
    return b"cas key\x00" + repo_id.encode() + b"\x00" + key_id.encode() + b"\x00" + blake3.blake3(config).digest()


def new_master_key() -> bytes:
    return os.urandom(MASTER_KEY_BYTES)


def wrap_key(
    master: bytes, passphrase: str, *, repo_id: str, key_id: str, config: bytes, cost: int, created_ns: int
) -> bytes:
    """A key file: the master key wrapped by a key derived from ``passphrase``, bound to the
    repository's ID, this key's ID and the exact config (so an altered config opens no key)."""
    check_kdf_cost(cost)
    if not passphrase:
        raise ConfigurationError("the passphrase is empty")
    salt = os.urandom(16)
    nonce = os.urandom(12)
    wrapped = AESGCM(_kek(passphrase, salt, cost)).encrypt(nonce, master, _key_aad(repo_id, key_id, config))
    record = {
        "v": 1, "kdf": KDF, "n_log2": cost, "r": _SCRYPT_R, "p": _SCRYPT_P, "created_ns": created_ns,
        "salt": base64.b64encode(salt).decode(), "nonce": base64.b64encode(nonce).decode(),
        "wrapped": base64.b64encode(wrapped).decode(),
    }
    return json.dumps(record, sort_keys=True, separators=(",", ":")).encode()


@dataclass(frozen=True)
class KeyFile:
    key_id: str
    cost: int
    created_ns: int
    salt: bytes
    nonce: bytes
    wrapped: bytes

    @classmethod
    def parse(cls, key_id: str, data: bytes) -> KeyFile:
        try:
            raw = jsondoc.loads(data) if len(data) <= 4096 else None
            if not isinstance(raw, dict) or raw.get("v") != 1 or raw.get("kdf") != KDF:
                raise ValueError
            if raw.get("r") != _SCRYPT_R or raw.get("p") != _SCRYPT_P:
                raise ValueError
            cost = check_kdf_cost(raw["n_log2"])
            created = raw["created_ns"]
            if type(created) is not int:
                raise ValueError
            salt, nonce, wrapped = (base64.b64decode(raw[k], validate=True) for k in ("salt", "nonce", "wrapped"))
        except (ValueError, KeyError, TypeError, ConfigurationError) as exc:
            raise IntegrityError(f"key {key_id} is not a valid key file") from exc
        if len(nonce) != 12 or len(wrapped) != MASTER_KEY_BYTES + TAG:
            raise IntegrityError(f"key {key_id} is not a valid key file")
        return cls(key_id, cost, created, salt, nonce, wrapped)

    def unwrap(self, passphrase: str, *, repo_id: str, config: bytes) -> bytes | None:
        """The master key, or None when ``passphrase`` is not this key's (or the config changed)."""
        kek = _kek(passphrase, self.salt, self.cost)
        try:
            return AESGCM(kek).decrypt(self.nonce, self.wrapped, _key_aad(repo_id, self.key_id, config))
        except InvalidTag:
            return None
