"""The repository config object: format version and the parameters fixed at creation.

Stored as JSON under the key ``config``. Chunking parameters must never change for a repository,
or identical content would be cut differently and stop deduplicating.
"""

from __future__ import annotations

import enum
import json
import secrets
from dataclasses import asdict, dataclass

from cas.errors import ConfigurationError, IntegrityError
from cas.format import jsondoc

FORMAT_VERSION = 1
ENCRYPTED_FORMAT_VERSION = 2
"""An encrypted repository's config says version 2, which a cas without encryption refuses."""
ENCRYPTION = {"cipher": "aes-256-gcm-64k", "names": "aes-siv-256", "kdf": "scrypt", "keys": "keys/"}
"""The config's ``encryption`` of an encrypted repository (docs/FORMAT.md, Encrypted repositories)."""
_MAX_CONFIG_BYTES = 64 * 1024

KiB = 1024
MiB = 1024 * KiB


class ChunkerName(str, enum.Enum):
    """How a repository cuts files into chunks (the config's ``chunker``; docs/FORMAT.md, Chunks)."""

    FASTCDC = "fastcdc"
    """Plain FastCDC. A config written before the field existed means this one."""
    ARCHIVES = "fastcdc-archives-1"
    """FastCDC, but zips, uncompressed tars and safetensors files are cut at their members."""



@dataclass(frozen=True)
class RepoConfig:
    version: int = FORMAT_VERSION
    repo_id: str = ""
    chunk_min: int = 256 * KiB
    chunk_avg: int = 1 * MiB
    chunk_max: int = 4 * MiB
    compression_level: int = 3
    pack_size: int = 16 * MiB
    chunker: str = ChunkerName.ARCHIVES.value
    encryption: dict[str, str] | None = None
    """None in an unencrypted repository (version 1; the field is not written), else
    :data:`ENCRYPTION` (version 2)."""

    @property
    def encrypted(self) -> bool:
        return self.encryption is not None

    @classmethod
    def new(cls, *, encrypt: bool = False, **overrides: int | str) -> RepoConfig:
        if encrypt:
            overrides = {**overrides, "version": ENCRYPTED_FORMAT_VERSION, "encryption": dict(ENCRYPTION)}  # type: ignore[dict-item]
        config = cls(repo_id=secrets.token_hex(16), **overrides)  # type: ignore[arg-type]
        config.validate(error=ConfigurationError)
        return config

    def validate(self, error: type[Exception] = IntegrityError) -> None:
        if self.version not in (FORMAT_VERSION, ENCRYPTED_FORMAT_VERSION):
            raise error(
                f"repository format version {self.version} is not supported (this cas reads "
                f"{FORMAT_VERSION} and {ENCRYPTED_FORMAT_VERSION})"
            )
        if (self.version == ENCRYPTED_FORMAT_VERSION) != (self.encryption is not None):
            raise error(f"repository format version {self.version} does not match its encryption field")
        if self.encryption is not None and self.encryption != ENCRYPTION:
            raise error("repository encryption is not one this cas knows; upgrade cas")
        if not (isinstance(self.repo_id, str) and len(self.repo_id) == 32 and _is_hex(self.repo_id)):
            raise error("repository config has an invalid repo_id")
        # pyfastcdc's own limits: min 64 B..1 MiB, avg 256 B..4 MiB, max 1 KiB..16 MiB.
        if not (64 <= self.chunk_min <= MiB):
            raise error(f"chunk_min {self.chunk_min} outside 64 B..1 MiB")
        if not (256 <= self.chunk_avg <= 4 * MiB):
            raise error(f"chunk_avg {self.chunk_avg} outside 256 B..4 MiB")
        if not (KiB <= self.chunk_max <= 16 * MiB):
            raise error(f"chunk_max {self.chunk_max} outside 1 KiB..16 MiB")
        if not (self.chunk_min <= self.chunk_avg <= self.chunk_max):
            raise error("chunk sizes must satisfy min <= avg <= max")
        if not (-7 <= self.compression_level <= 22):
            raise error(f"compression_level {self.compression_level} outside -7..22")
        if not (MiB <= self.pack_size <= 1024 * MiB):
            raise error(f"pack_size {self.pack_size} outside 1 MiB..1 GiB")
        if self.chunker not in {c.value for c in ChunkerName}:
            known = ", ".join(c.value for c in ChunkerName)
            raise error(f"chunker {self.chunker!r} is not one this cas knows ({known}); upgrade cas")

    def to_json(self) -> bytes:
        fields = asdict(self)
        if fields["encryption"] is None:
            del fields["encryption"]  # version 1 configs are exactly as before encryption existed
        return json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes) -> RepoConfig:
        if len(data) > _MAX_CONFIG_BYTES:
            raise IntegrityError("repository config is too large")
        try:
            raw = jsondoc.loads(data)
        except ValueError as exc:
            raise IntegrityError("repository config is not valid JSON") from exc
        if not isinstance(raw, dict):
            raise IntegrityError("repository config is not a JSON object")
        fields = {f: raw.get(f) for f in cls.__dataclass_fields__}
        if fields["chunker"] is None:
            fields["chunker"] = ChunkerName.FASTCDC.value  # written before the field existed
        encryption = fields.pop("encryption")
        if encryption is not None and not (
            isinstance(encryption, dict) and all(type(v) is str for v in encryption.values())
        ):
            raise IntegrityError("repository config field encryption has the wrong type")
        if any(v is None for v in fields.values()):
            missing = sorted(k for k, v in fields.items() if v is None)
            raise IntegrityError(f"repository config lacks {', '.join(missing)}")
        fields["encryption"] = encryption
        for name, value in fields.items():
            if name == "encryption":
                continue
            expected = str if name in ("repo_id", "chunker") else int
            if type(value) is not expected:
                raise IntegrityError(f"repository config field {name} has the wrong type")
        config = cls(**fields)  # type: ignore[arg-type]
        config.validate()
        return config


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdef" for c in text)
