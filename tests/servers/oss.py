"""The OSS protocol server (:mod:`tests.oss_server`) as pytest fixtures.

Import them explicitly in a test module::

    from tests.servers.oss import oss_server  # noqa: F401

``oss_server`` is one server for the whole session on a free 127.0.0.1 port, knowing the single
credential :data:`ACCESS_KEY_ID` / :data:`ACCESS_KEY_SECRET`. Tests keep out of each other's way
by taking a fresh bucket from :func:`new_bucket` rather than sharing one.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.oss_server import OssProtocolServer

ACCESS_KEY_ID = "LTAItestkeyid0000"
#: Distinctive so a test can search messages and logs for it.
ACCESS_KEY_SECRET = "test-secret-Zq8vN3pW6xK1"


def new_bucket(server: OssProtocolServer) -> str:
    """Create a bucket with a unique valid name on ``server`` and return the name."""
    name = f"cas-test-{uuid.uuid4().hex[:16]}"
    server.create_bucket(name)
    return name


@pytest.fixture(scope="session")
def oss_server() -> Iterator[OssProtocolServer]:
    """A running OSS protocol server, stopped at the end of the session."""
    server = OssProtocolServer({ACCESS_KEY_ID: ACCESS_KEY_SECRET}).start()
    try:
        yield server
    finally:
        server.stop()


__all__ = ["ACCESS_KEY_ID", "ACCESS_KEY_SECRET", "new_bucket", "oss_server"]
