"""BLAKE3 naming: every chunk, tree node, pack and file is named by the BLAKE3 of its bytes."""

from __future__ import annotations

import re

import blake3

DIGEST_HEX_LEN = 64
_DIGEST = re.compile(f"[0-9a-f]{{{DIGEST_HEX_LEN}}}")


def hexdigest(data: bytes | bytearray | memoryview) -> str:
    return blake3.blake3(data).hexdigest()


def new_hasher() -> blake3.blake3:
    return blake3.blake3()


def is_digest(text: object) -> bool:
    """A BLAKE3 hex digest as cas writes it: 64 lowercase hex digits (one regex match: tree
    decoding checks every chunk ID with it)."""
    return isinstance(text, str) and _DIGEST.fullmatch(text) is not None
