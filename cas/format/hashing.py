"""BLAKE3 naming: every chunk, tree node, pack and file is named by the BLAKE3 of its bytes."""

from __future__ import annotations

import blake3

DIGEST_HEX_LEN = 64
_fromhex = bytes.fromhex


def hexdigest(data: bytes | bytearray | memoryview) -> str:
    return blake3.blake3(data).hexdigest()


def new_hasher() -> blake3.blake3:
    return blake3.blake3()


def is_digest(text: object) -> bool:
    """A BLAKE3 hex digest as cas writes it: 64 lowercase hex digits. Tree decoding checks every
    chunk ID with it, so it is two C calls rather than a regex: the hex of what ``bytes.fromhex``
    reads back equals the text only if the text is hex digits alone, in lower case (``fromhex``
    refuses anything else but whitespace, which the round trip drops)."""
    if not isinstance(text, str) or len(text) != DIGEST_HEX_LEN:
        return False
    try:
        return _fromhex(text).hex() == text
    except ValueError:
        return False
