"""A deployment with the three roles of docs/ROLES.md, built from that file's own policies.

:func:`role_policies` reads the fenced blocks that follow ``<!-- KIND: ROLE -->`` markers in
docs/ROLES.md, so the test applies exactly what a user would copy. :class:`Deployment` holds a moto
S3 server with IAM authentication (one IAM user per role, plus an admin the test uses to look at the
bucket), and a PostgreSQL database whose roles got exactly the documented GRANTs.
"""

from __future__ import annotations

import json
import os
import re
import secrets
from dataclasses import dataclass, field
from typing import Any

ROLES_DOC = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "docs", "ROLES.md")
ROLES = ("reader", "writer", "maintainer")
DOC_BUCKET = "my-bucket"
DOC_DATABASE = "cas"
PREFIX = "cas"

_BLOCK = re.compile(r"<!-- ([a-z0-9-]+): ([a-z]+) -->\n```[a-z]*\n(.*?)```", re.DOTALL)


def role_policies(kind: str) -> dict[str, str]:
    """``{role: block text}`` of the blocks marked ``<!-- kind: role -->`` in docs/ROLES.md."""
    with open(ROLES_DOC, encoding="utf-8") as f:
        text = f.read()
    return {role: body for k, role, body in _BLOCK.findall(text) if k == kind}


@dataclass
class Deployment:
    """Where everything is, and each role's credentials."""

    endpoint_url: str
    bucket: str
    database_url: str  # the admin's URL of the test database
    pg_roles: dict[str, tuple[str, str]] = field(default_factory=dict)  # role -> (name, password)
    s3_keys: dict[str, tuple[str, str]] = field(default_factory=dict)  # role -> (key id, secret)

    @property
    def repo(self) -> str:
        return f"s3://{self.bucket}/{PREFIX}"

    def index_url(self, role: str) -> str:
        name, password = self.pg_roles[role]
        host_db = self.database_url.split("@", 1)[1]
        return f"postgresql://{name}:{password}@{host_db}"

    def env(self, role: str) -> dict[str, str]:
        key_id, secret = self.s3_keys[role]
        return {
            "AWS_ACCESS_KEY_ID": key_id,
            "AWS_SECRET_ACCESS_KEY": secret,
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_DEFAULT_REGION": "us-east-1",
        }


def make_iam_users(server: Any, bucket: str) -> dict[str, tuple[str, str]]:
    """An IAM user per role with its documented policy, and ``admin`` allowed everything; the
    bucket is created on the way. Must run before moto's authentication is switched on."""
    iam = server.client("iam")
    server.client("s3").create_bucket(Bucket=bucket)
    policies = role_policies("s3-policy")
    policies["admin"] = json.dumps({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]})
    keys = {}
    for role, policy in policies.items():
        user = f"cas-{role}"
        iam.create_user(UserName=user)
        iam.put_user_policy(UserName=user, PolicyName=f"cas-{role}", PolicyDocument=policy.replace(DOC_BUCKET, bucket))
        key = iam.create_access_key(UserName=user)["AccessKey"]
        keys[role] = (key["AccessKeyId"], key["SecretAccessKey"])
    return keys


def sql_statements(block: str, names: dict[str, str], database: str) -> list[str]:
    """The statements of a documented SQL block, with the role and database names of this test."""
    for role, name in names.items():
        block = block.replace(f"cas_{role}", name)
    block = block.replace(f"DATABASE {DOC_DATABASE} ", f'DATABASE "{database}" ')
    return [s.strip() for s in block.split(";") if s.strip() and not s.strip().startswith("--")]


def role_names() -> dict[str, str]:
    """Cluster-wide role names, unique to this run (roles are shared by every database)."""
    tag = secrets.token_hex(4)
    return {role: f"cas_{role}_{tag}" for role in ROLES}


def passwords(block: str) -> dict[str, str]:
    """``{role: password}`` as the admin block sets them."""
    return {m.group(1): m.group(2) for m in re.finditer(r"ROLE cas_([a-z]+) LOGIN PASSWORD '([^']+)'", block)}
