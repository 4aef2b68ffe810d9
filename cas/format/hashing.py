"""BLAKE3 naming: every chunk, tree node, pack and file is named by the BLAKE3 of its bytes."""

from __future__ import annotations

import blake3

DIGEST_HEX_LEN = 64


def hexdigest(data: bytes | bytearray | memoryview) -> str:
    return blake3.blake3(data).hexdigest()


def new_hasher() -> blake3.blake3:
    return blake3.blake3()


def is_digest(text: object) -> bool:
    return (
        isinstance(text, str)
        and len(text) == DIGEST_HEX_LEN
        and all(c in "0123456789abcdef" for c in text)
    )
