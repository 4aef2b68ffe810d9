"""Describing a directory tree on disk exactly, to compare a restore with its source."""

from __future__ import annotations

import os
import stat


def describe(root: str, *, times: bool = True) -> dict[str, tuple[object, ...]]:
    """Every path under ``root`` (not ``root`` itself) with type, permission bits, mtime and content."""
    out: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root)
            st = os.lstat(full)
            mtime = st.st_mtime_ns if times else 0
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(full), mtime)
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st.st_mode), mtime)
            else:
                with open(full, "rb") as f:
                    out[rel] = ("file", stat.S_IMODE(st.st_mode), mtime, f.read())
        dirnames[:] = [d for d in dirnames if not os.path.islink(os.path.join(dirpath, d))]
    return out
