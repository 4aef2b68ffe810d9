"""JSON documents read from a repository (tree nodes, snapshot records, the config, key files,
an archive's header), parsed with a fixed bound on their nesting.

``json.loads`` recurses once for each level of nesting, so a hostile document nested deeply
enough raises ``RecursionError`` at a depth that depends on how deep the caller's own stack is:
the same bytes would be refused as "not valid JSON" from one caller and parsed (then refused for
their shape, with another message) from another. No document of the format nests past a few
levels; :func:`loads` refuses any nested past :data:`MAX_DEPTH` before parsing it, so that the
outcome depends on the bytes alone.
"""

from __future__ import annotations

import json
import re
from itertools import accumulate

#: The deepest nesting of arrays and objects accepted (a tree node nests three levels).
MAX_DEPTH = 64

# A JSON string, escapes included (a bracket inside one does not nest); one left open runs to the
# end of the data, so that the scan is one pass whatever the data (tried again from every later
# quote, a string never closed made it quadratic: minutes for a megabyte of escaped quotes).
_STRING = re.compile(rb'"[^"\\]*(?:\\(?:.|\Z)[^"\\]*)*(?:"|\Z)', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_STEP = [1 if b in b"[{" else -1 for b in range(256)]  # by byte, for the brackets left


def nesting(data: bytes) -> int:
    """The deepest nesting of arrays and objects in ``data``, counted outside its strings (a
    string left open hides what follows it: such a document is not JSON anyway)."""
    brackets = _STRING.sub(b"", data).translate(None, _NOT_BRACKETS)
    return max(accumulate(map(_STEP.__getitem__, brackets)), default=0)


def loads(data: bytes) -> object:
    """``json.loads(data)``, or ``ValueError`` (which ``UnicodeDecodeError`` is too) for bytes that
    are not JSON or nest past :data:`MAX_DEPTH`, whatever the depth of the caller's stack."""
    if data.count(b"[") + data.count(b"{") > MAX_DEPTH and nesting(data) > MAX_DEPTH:
        raise ValueError(f"nested more than {MAX_DEPTH} levels deep")
    try:
        return json.loads(data)
    except RecursionError as exc:  # only with a caller's stack already near Python's limit
        raise ValueError("nested too deeply for the stack") from exc
