"""Each role of docs/ROLES.md runs every command, with exactly the documented permissions.

The table below says, for each command and role, whether the command must succeed or must fail
naming the permission the role lacks. A refused command must print one line on stderr, exit 1
and leave the bucket and the index as they were. The S3 side is a moto server with IAM
authentication (one IAM user per role, holding the policy from docs/ROLES.md); the index is a
PostgreSQL database whose roles got the GRANTs from docs/ROLES.md. A command added to cas joins
the table: name how to run it in ``COMMANDS`` and what each role may do in ``TABLE``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.servers import s3 as s3_servers
from tests.servers.postgres import _connect, postgres_admin  # noqa: F401
from tests.trust.deployment import (
    ROLES,
    Deployment,
    make_iam_users,
    passwords,
    role_names,
    role_policies,
    sql_statements,
)

OK = None
"""In ``TABLE``: the command succeeds. A string instead: it fails, and its line contains the string."""


@dataclass
class Case:
    """What a command needs to build its arguments."""

    deployment: Deployment
    role: str
    tmp: str
    source: str
    uri: str


COMMANDS: dict[str, Callable[[Case], list[str]]] = {
    "log": lambda c: ["log"],
    "ls": lambda c: ["ls", "base-2", "-r"],
    "diff": lambda c: ["diff", "base-1", "base-2"],
    "cat": lambda c: ["cat", "base-2", "src/train.py"],
    "restore": lambda c: ["restore", "base-2", os.path.join(c.tmp, "restored")],
    "stats": lambda c: ["stats"],
    "verify": lambda c: ["verify"],
    "verify --read-data": lambda c: ["verify", "--read-data"],
    "gc --dry-run": lambda c: ["gc", "--dry-run"],
    "forget --dry-run": lambda c: ["forget", "base-1", "--dry-run"],
    "aiflow download": lambda c: ["aiflow", "download", c.uri, os.path.join(c.tmp, "downloaded")],
    "find": lambda c: ["find", "*.py"],
    "prefetch": lambda c: ["prefetch", "base-2"],
    "cache": lambda c: ["cache"],
    "copy --to local": lambda c: ["copy", "base-2", "--to", os.path.join(c.tmp, "copy"),
                                  "--to-index", "sqlite:///" + os.path.join(c.tmp, "copy.sqlite")],
    "snapshot": lambda c: ["snapshot", c.source, "--execution-id", f"new-{c.role}"],
    "aiflow upload": lambda c: ["aiflow", "upload", os.path.join(c.source, "src", "train.py")],
    "forget": lambda c: ["forget", f"doomed-{c.role}"],
    "gc": lambda c: ["gc"],
    "repair": lambda c: ["repair"],
    "rebuild-index --sync": lambda c: ["rebuild-index", "--sync"],
    "rebuild-index": lambda c: ["rebuild-index"],
    # client-side encryption: each on a repository of its own beside the deployment's (_encrypted)
    "init --encrypt": lambda c: [*_beside(c, "new"), "--password-file", _password_file(c, "first"),
                                 "init", "--encrypt", "--kdf-cost", "10"],
    "key list": lambda c: [*_encrypted(c), "key", "list"],
    "key add": lambda c: [*_encrypted(c), "key", "add", "--new-password-file", _password_file(c, "second"),
                          "--kdf-cost", "10"],
    "key remove": lambda c: _encrypted_with_two_keys_remove_first(c),
}

NO_DELETE_ROWS = "needs DELETE on table"
TABLE: dict[str, dict[str, str | None]] = {
    "log": {"reader": OK, "writer": OK, "maintainer": OK},
    "ls": {"reader": OK, "writer": OK, "maintainer": OK},
    "diff": {"reader": OK, "writer": OK, "maintainer": OK},
    "cat": {"reader": OK, "writer": OK, "maintainer": OK},
    "restore": {"reader": OK, "writer": OK, "maintainer": OK},
    "stats": {"reader": OK, "writer": OK, "maintainer": OK},
    "verify": {"reader": OK, "writer": OK, "maintainer": OK},
    "verify --read-data": {"reader": OK, "writer": OK, "maintainer": OK},
    "gc --dry-run": {"reader": OK, "writer": OK, "maintainer": OK},
    "forget --dry-run": {"reader": OK, "writer": OK, "maintainer": OK},
    "aiflow download": {"reader": OK, "writer": OK, "maintainer": OK},
    "find": {"reader": OK, "writer": OK, "maintainer": OK},
    "prefetch": {"reader": OK, "writer": OK, "maintainer": OK},
    "cache": {"reader": OK, "writer": OK, "maintainer": OK},
    "copy --to local": {"reader": OK, "writer": OK, "maintainer": OK},
    "snapshot": {"reader": "s3:PutObject", "writer": OK, "maintainer": OK},
    "aiflow upload": {"reader": "s3:PutObject", "writer": OK, "maintainer": OK},
    "forget": {"reader": "s3:DeleteObject", "writer": "s3:DeleteObject", "maintainer": OK},
    "gc": {"reader": NO_DELETE_ROWS, "writer": NO_DELETE_ROWS, "maintainer": OK},
    "repair": {"reader": NO_DELETE_ROWS, "writer": NO_DELETE_ROWS, "maintainer": OK},
    "rebuild-index --sync": {"reader": "needs INSERT on table", "writer": OK, "maintainer": OK},
    "rebuild-index": {"reader": NO_DELETE_ROWS, "writer": NO_DELETE_ROWS, "maintainer": OK},
    "init --encrypt": {"reader": "s3:PutObject", "writer": OK, "maintainer": OK},
    "key list": {"reader": OK, "writer": OK, "maintainer": OK},
    "key add": {"reader": "s3:PutObject", "writer": OK, "maintainer": OK},
    "key remove": {"reader": "s3:DeleteObject", "writer": "s3:DeleteObject", "maintainer": OK},
}


# -- client-side encryption (issue 18): repositories of their own, made by the maintainer --------


def _password_file(c: Case, text: str) -> str:
    path = os.path.join(c.tmp, f"pw-{text}")
    with open(path, "w") as f:
        f.write(f"{text} passphrase\n")
    return path


def _beside(c: Case, name: str) -> list[str]:
    """Global options for a repository under the deployment's prefix (so inside every role's
    policy), with an index of this host's (an index describes one repository)."""
    tag = f"{name}-{c.role}-{secrets.token_hex(3)}"
    return ["--repo", f"{c.deployment.repo}/{tag}", "--index", "sqlite:///" + os.path.join(c.tmp, f"{tag}.sqlite")]


def _encrypted(c: Case, second_key: bool = False) -> list[str]:
    """An encrypted repository the maintainer created (and gave a second key): global options for
    ``c.role`` to open it with the first passphrase (the second, when there is one)."""
    home = os.path.join(c.tmp, "home-maintainer")
    repo = _beside(c, "enc")
    first = _password_file(c, "first")
    as_maintainer = [repo[0], repo[1], "--index", "sqlite:///" + os.path.join(c.tmp, "maintainer.sqlite"),
                     "--password-file", first]
    _ok(run_cas(c.deployment, "maintainer", [*as_maintainer, "init", "--encrypt", "--kdf-cost", "10"], home))
    if not second_key:
        return [*repo, "--password-file", first]
    _ok(run_cas(c.deployment, "maintainer", [*as_maintainer, "key", "add", "--kdf-cost", "10",
                                             "--new-password-file", _password_file(c, "second")], home))
    return [*repo, "--password-file", _password_file(c, "second")]


def _encrypted_with_two_keys_remove_first(c: Case) -> list[str]:
    options = _encrypted(c, second_key=True)
    status, out, err = run_cas(c.deployment, "maintainer", [*options, "--json", "key", "list"],
                               os.path.join(c.tmp, "home-maintainer"))
    assert status == 0, err
    first = next(k["id"] for k in json.loads(out) if not k["current"])
    return [*options, "key", "remove", first]


NOT_IN_TABLE = {"mount"}
"""``cas mount`` serves until unmounted, so it is not run here: it reads what ``cat`` reads (the index
with SELECT, packs with GetObject), and docs/ROLES.md lists it with the reader's commands."""


def test_table_covers_every_command() -> None:
    """Every cas subcommand appears in the table (a new one must be added with its roles)."""
    from cas.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    covered = {name.split()[0] for name in TABLE} | NOT_IN_TABLE
    assert set(sub.choices) <= covered, sorted(set(sub.choices) - covered)
    assert set(TABLE) == set(COMMANDS)
    assert all(set(row) == set(ROLES) for row in TABLE.values())


# -- the deployment -----------------------------------------------------------------------------


def run_cas(deployment: Deployment, role: str, argv: list[str], home: str) -> tuple[int, str, str]:
    """``cas --repo ... --index ... ARGV`` in this process, as ``role``: (status, stdout, stderr)."""
    from cas.cli import main

    saved = dict(os.environ)
    os.environ.update(deployment.env(role))
    os.environ["CAS_HOME"] = home
    out = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")  # with .buffer, which 'cas cat' writes to
    err = io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            status = main(["--repo", deployment.repo, "--index", deployment.index_url(role), *argv])
    finally:
        os.environ.clear()
        os.environ.update(saved)
    out.flush()
    return status, out.buffer.getvalue().decode("utf-8", "replace"), err.getvalue()


def _write_tree(root: str, version: int) -> None:
    os.makedirs(os.path.join(root, "src"), exist_ok=True)
    with open(os.path.join(root, "src", "train.py"), "w") as f:
        f.write(f"print('train v{version}')\n")
    with open(os.path.join(root, "weights.bin"), "wb") as f:
        f.write(bytes(range(256)) * 512 + version.to_bytes(4, "big"))


@pytest.fixture(scope="module")
def deployment(postgres_admin: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Deployment, str, str]]:  # noqa: F811
    """The roles on moto (IAM on) and PostgreSQL, and a repository the maintainer filled with
    ``base-1``, ``base-2`` (a small change), one ``doomed-<role>`` per role and one AIFlow upload.
    Yields ``(deployment, source directory, the upload's URI)``."""
    server = s3_servers.start_moto_server()
    database = "cas_roles_" + secrets.token_hex(4)
    names = role_names()
    with _connect() as conn:
        conn.execute(f'CREATE DATABASE "{database}"')
    try:
        bucket = "roles-" + secrets.token_hex(4)
        keys = make_iam_users(server, bucket)
        server.post("/moto-api/reset-auth", b"0")
        db_url = postgres_admin.rsplit("/", 1)[0] + "/" + database
        admin_block = role_policies("postgres")["admin"]
        found = passwords(admin_block)
        with _connect(database) as conn:
            for statement in sql_statements(admin_block, names, database):
                conn.execute(statement)
        dep = Deployment(server.endpoint_url, bucket, db_url,
                         {r: (names[r], found[r]) for r in ROLES}, keys)
        source = str(tmp_path_factory.mktemp("source"))
        home = str(tmp_path_factory.mktemp("home-maintainer"))
        _write_tree(source, 1)
        _ok(run_cas(dep, "maintainer", ["stats"], home))  # creates the tables, as their owner
        with _maintainer_db(dep) as conn:
            for statement in sql_statements(role_policies("postgres")["maintainer"], names, database):
                conn.execute(statement)
        _ok(run_cas(dep, "maintainer", ["snapshot", source, "-e", "base-1"], home))
        _write_tree(source, 2)
        _ok(run_cas(dep, "maintainer", ["snapshot", source, "-e", "base-2"], home))
        for role in ROLES:
            _ok(run_cas(dep, "maintainer", ["snapshot", source, "-e", f"doomed-{role}"], home))
        status, out, err = run_cas(dep, "maintainer", ["--json", "aiflow", "upload", os.path.join(source, "weights.bin")], home)
        assert status == 0, err
        yield dep, source, json.loads(out)["uri"]
    finally:
        s3_servers.stop_moto_server(server)
        with _connect() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
            for name in names.values():
                conn.execute(f'DROP ROLE IF EXISTS "{name}"')


def _ok(result: tuple[int, str, str]) -> None:
    assert result[0] == 0, result[2]


@contextlib.contextmanager
def _maintainer_db(dep: Deployment) -> Iterator[Any]:
    import psycopg

    with psycopg.connect(dep.index_url("maintainer"), autocommit=True, connect_timeout=5) as conn:
        yield conn


def _state(dep: Deployment) -> tuple[dict[str, str], dict[str, list[tuple[Any, ...]]]]:
    """Every object in the bucket (key -> ETag) and every row of every table, seen by the owners."""
    client = _admin_s3(dep)
    objects = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=dep.bucket):
        for item in page.get("Contents", ()):
            objects[item["Key"]] = item["ETag"]
    rows = {}
    with _maintainer_db(dep) as conn:
        tables = [r[0] for r in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename")]
        for table in tables:
            rows[table] = sorted(conn.execute(f'SELECT * FROM "{table}"').fetchall(), key=repr)
    return objects, rows


def _admin_s3(dep: Deployment) -> Any:
    import boto3  # type: ignore[import-untyped]
    from botocore.config import Config  # type: ignore[import-untyped]

    key_id, secret = dep.s3_keys["admin"]
    return boto3.client("s3", endpoint_url=dep.endpoint_url, region_name="us-east-1", aws_access_key_id=key_id,
                        aws_secret_access_key=secret, config=Config(s3={"addressing_style": "path"}))


CASES = [(command, role) for command, row in TABLE.items() for role in ROLES]


@pytest.mark.parametrize(("command", "role"), CASES, ids=[f"{r}-{c}" for c, r in CASES])
def test_role_runs_command(deployment: tuple[Deployment, str, str], command: str, role: str,
                           tmp_path: Any) -> None:
    dep, source, uri = deployment
    expected = TABLE[command][role]
    home = os.path.join(str(tmp_path), "home")
    argv = COMMANDS[command](Case(dep, role, str(tmp_path), source, uri))
    before = _state(dep) if expected is not OK else None
    status, out, err = run_cas(dep, role, argv, home)
    if expected is OK:
        assert status == 0, f"{role} {command}: {err}"
        return
    lines = err.strip().splitlines()
    assert status == 1, f"{role} {command} was not refused: {status} {out} {err}"
    assert len(lines) == 1 and lines[0].startswith("cas: error: "), err
    assert expected in lines[0], lines[0]
    assert _state(dep) == before, f"{role} {command} changed the repository or the index"


def test_reader_lists_a_snapshot_whose_tree_entries_are_not_filled(deployment: tuple[Deployment, str, str],
                                                                   tmp_path: Any) -> None:
    """Snapshots indexed before migration 0005 get their tree entries when a role that may write
    opens the index. A reader (SELECT only) cannot write them: it still opens the index and lists
    such a snapshot, by reading its trees, and leaves it unfilled."""
    dep, _source, _uri = deployment
    home = os.path.join(str(tmp_path), "home")
    query = "SELECT trees_indexed FROM snapshots WHERE execution_id = 'base-2'"
    with _maintainer_db(dep) as conn:
        conn.execute("UPDATE snapshots SET trees_indexed = false WHERE execution_id = 'base-2'")
    try:
        status, out, err = run_cas(dep, "reader", ["ls", "base-2", "-r"], home)
        assert status == 0, err
        assert "src/train.py" in out
        with _maintainer_db(dep) as conn:
            assert conn.execute(query).fetchone()[0] is False
    finally:
        with _maintainer_db(dep) as conn:
            conn.execute("UPDATE snapshots SET trees_indexed = true WHERE execution_id = 'base-2'")
