"""``os`` as a module under test sees it, with some calls counted (monkeypatch the module's ``os``)."""

from __future__ import annotations

import os


class CountingPread:
    """Every call passed to ``os``; the bytes read with ``pread`` counted in :attr:`read`."""

    def __init__(self) -> None:
        self.read = 0

    def __getattr__(self, name: str) -> object:
        return getattr(os, name)

    def pread(self, fd: int, n: int, offset: int) -> bytes:
        data = os.pread(fd, n, offset)
        self.read += len(data)
        return data
