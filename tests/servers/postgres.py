"""PostgreSQL for tests: the machine's cluster started by .ci/services.sh, one fresh database per test.

``CAS_TEST_PG`` overrides the admin URL (default ``postgresql://cas:cas@127.0.0.1:5432/cas``).
``CAS_SKIP_POSTGRES=1`` skips these tests explicitly; otherwise an unreachable server is a failure,
not a silent skip, because CI must have it.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator

import pytest

ADMIN_URL = os.environ.get("CAS_TEST_PG", "postgresql://cas:cas@127.0.0.1:5432/cas")


def _connect(dbname: str | None = None):  # type: ignore[no-untyped-def]
    import psycopg

    url = ADMIN_URL if dbname is None else ADMIN_URL.rsplit("/", 1)[0] + "/" + dbname
    return psycopg.connect(url, autocommit=True, connect_timeout=5)


@pytest.fixture(scope="session")
def postgres_admin() -> str:
    if os.environ.get("CAS_SKIP_POSTGRES") == "1":
        pytest.skip("CAS_SKIP_POSTGRES=1")
    try:
        with _connect() as conn:
            conn.execute("SELECT 1")
    except Exception as exc:  # noqa: BLE001 - any failure to reach the server is the message
        pytest.fail(f"PostgreSQL is not reachable at {ADMIN_URL} ({exc}); run 'bash .ci/services.sh'")
    return ADMIN_URL


@pytest.fixture
def postgres_url(postgres_admin: str) -> Iterator[str]:
    """A SQLAlchemy URL of a new, empty database, dropped after the test."""
    name = "cas_test_" + secrets.token_hex(6)
    with _connect() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield postgres_admin.rsplit("/", 1)[0] + "/" + name
    finally:
        with _connect() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
