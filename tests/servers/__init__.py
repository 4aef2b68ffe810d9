"""The servers the integration tests talk to (one module each), and what their tests share."""

from __future__ import annotations

import sys
from http.server import ThreadingHTTPServer
from types import ModuleType

import pytest

#: Keys per list request in tests that write pages of them (S3's and OSS's own pages are 1,000).
SMALL_LIST_PAGE = 50


def small_list_pages(monkeypatch: pytest.MonkeyPatch, driver: ModuleType) -> int:
    """Make an object-store driver (``backends.s3``, ``backends.oss``) ask for
    :data:`SMALL_LIST_PAGE` keys per list request (moto, MinIO and the OSS protocol server answer
    pages of ``max-keys``); return that size."""
    monkeypatch.setattr(driver, "LIST_PAGE", SMALL_LIST_PAGE)
    return SMALL_LIST_PAGE


class LoopbackHTTPServer(ThreadingHTTPServer):
    """The threading HTTP server of the tests' protocol servers (OSS, the S3 gate): a thread per
    connection, not waited for at exit; a client that resets its connection (as clients cut off by
    the fault tests do) ends that connection, not in a traceback on the suite's output."""

    daemon_threads = True

    def handle_error(self, request, client_address):  # type: ignore[no-untyped-def]
        if isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
            return
        super().handle_error(request, client_address)
