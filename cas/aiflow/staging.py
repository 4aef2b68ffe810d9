"""The private copy an upload stores: fixed bytes, name, mode and mtime, whatever the caller does.

``upload`` never stores the caller's file directly: it is copied into a fresh directory under
``<cache_directory>/staging`` while being hashed, so the bytes stored are exactly the bytes hashed
(a file changing during the upload cannot end up under a name that does not match it), and the
copy's name (:data:`cas.aiflow.uris.CONTENT_NAME`), mode and mtime are fixed, so equal content
always makes the identical tree.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator

from cas.aiflow.uris import CONTENT_NAME
from cas.format.hashing import new_hasher

COPY_BLOCK = 1 << 20
"""Bytes read at a time when copying or hashing a file."""
STAGED_MODE = 0o644


@contextlib.contextmanager
def staging_dir(cache_dir: str) -> Iterator[str]:
    """A new private directory under ``<cache_dir>/staging``, removed with its contents on exit."""
    parent = os.path.join(cache_dir, "staging")
    os.makedirs(parent, mode=0o700, exist_ok=True)
    work = tempfile.mkdtemp(prefix="upload-", dir=parent)
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def stage_file(src: str, work: str) -> tuple[str, str]:
    """Copy ``src`` to ``<work>/content`` with mode 0644 and mtime 0; return (that path, BLAKE3 of
    the bytes copied). ``work`` must not hold ``content`` yet (the copy is created exclusively)."""
    staged = os.path.join(work, CONTENT_NAME)
    digest = _copy_and_hash(src, staged)
    os.chmod(staged, STAGED_MODE)
    os.utime(staged, ns=(0, 0))
    return staged, digest


def _copy_and_hash(src: str, dst: str) -> str:
    hasher = new_hasher()
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    with open(src, "rb") as fin, os.fdopen(os.open(dst, flags, 0o600), "wb") as fout:
        while block := fin.read(COPY_BLOCK):
            hasher.update(block)
            fout.write(block)
    return str(hasher.hexdigest())
