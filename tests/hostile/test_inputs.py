"""Input checks as a user meets them: ``cas``'s real ``main`` (in this process, with its own
environment and streams: :class:`Cas`), its exit status, its one-line errors.

Execution IDs and labels are validated; values that look like SQL are stored as data (every query
is parameterised); bad URLs and options fail naming the field; secrets never reach stderr or
``--json``; repositories are private; cas never changes ownership.
"""

from __future__ import annotations

import ast
import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from backends import open_backend
from cas import ConfigurationError, Store
from tests.inprocess import run_main, text
from tests.servers import s3 as s3_servers
from tests.servers.s3 import MotoServer, free_port

ROOT = Path(__file__).resolve().parents[2]
moto_server = s3_servers.moto_server

SQL_INJECTION = "'; DROP TABLE snapshots; --"


class Cas:
    """Runs ``cas`` against one local repository, with a private CAS_HOME and its own environment:
    its real ``main`` in this process (:func:`tests.inprocess.run_main`: exit status, stdout and
    stderr as a process of its own has them, without an interpreter's start-up per command), or
    with ``process=True`` ``python -m cas`` as a process."""

    def __init__(self, base: Path, env: dict[str, str] | None = None, *, process: bool = False) -> None:
        self.base = base
        self.process = process
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("CAS_", "AWS_", "OSS_"))}
        self.env.update({"CAS_HOME": str(base / "home"), "PYTHONPATH": str(ROOT)})
        self.env.update(env or {})

    def __call__(self, *args: str, repo: str | None = None) -> subprocess.CompletedProcess[str]:
        argv = ["--repo", repo or str(self.base / "repo"), *args]
        if self.process:
            return subprocess.run([sys.executable, "-m", "cas", *argv], capture_output=True, text=True, env=self.env,
                                  cwd=self.base, timeout=120, check=False)
        status, out, err = run_main(argv, self.env, self.base, timeout=120)
        return subprocess.CompletedProcess(argv, status, text(out), text(err))

    def ok(self, *args: str, repo: str | None = None) -> str:
        proc = self(*args, repo=repo)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    def fails(self, *args: str, repo: str | None = None) -> str:
        """Run a command that must fail: non-zero status, one line on stderr, no traceback."""
        proc = self(*args, repo=repo)
        assert proc.returncode not in (0, 70), f"exit {proc.returncode}: {proc.stderr}"
        lines = proc.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("cas: "), proc.stderr
        assert "Traceback" not in proc.stderr
        return lines[0]

    def fails_all(self, commands: list[tuple[str, ...]]) -> list[str]:
        """:meth:`fails` for each command (as processes, a few at a time)."""
        if not self.process:
            return [self.fails(*args) for args in commands]
        with ThreadPoolExecutor(4) as pool:
            return list(pool.map(lambda args: self.fails(*args), commands))


# -- execution IDs and labels -------------------------------------------------------------------

BAD_IDS = ["", "-starts-with-dash", ".hidden", "../escape", "a/b", "a\\b", "x" * 201, "with space", "caf\u00e9",
           "new\nline", SQL_INJECTION, "a;b", "%2e%2e", "\u202eevil"]


def test_bad_execution_ids_are_refused(cas: Cas, project: Path) -> None:
    cas.ok("log")  # create the repository and index first, so the parallel runs below only read
    for line in cas.fails_all([("snapshot", str(project), f"--execution-id={eid}") for eid in BAD_IDS]):
        assert "execution ID" in line, line
    # Reading commands answer "unknown execution ID" without using the ID as a key.
    for execution_id in ("../../config", SQL_INJECTION):
        assert "execution ID" in cas.fails("restore", "--", execution_id, str(cas.base / "dest"))
        assert not (cas.base / "dest").exists() or os.listdir(cas.base / "dest") == []
    assert json.loads(cas.ok("--json", "log")) == []


def test_execution_id_limits(cas: Cas, project: Path) -> None:
    longest = "a" + "b" * 199
    cas.ok("snapshot", str(project), "-e", longest)
    cas.ok("snapshot", str(project), "-e", "7:run@host+x=1_2.3-4")
    cas.fails("snapshot", str(project), "-e", longest + "c")
    listed = [s["execution_id"] for s in json.loads(cas.ok("--json", "log"))]
    assert sorted(listed) == sorted([longest, "7:run@host+x=1_2.3-4"])


BAD_LABELS = ["novalue", "=value", "-x=1", "a b=1", "x" * 65 + "=1", "caf\u00e9=1", "k=\x1b[2J", "k=tab\t",
              "k=" + "v" * 257, "k=\x9b31m", "k=\x7f"]


def test_bad_labels_are_refused(cas: Cas, project: Path) -> None:
    cas.ok("log")
    for line in cas.fails_all([("snapshot", str(project), "-e", "run-1", f"--label={label}") for label in BAD_LABELS]):
        assert "label" in line, line
    assert json.loads(cas.ok("--json", "log")) == [], "a snapshot with a refused label was stored"


def test_too_many_labels_are_refused(cas: Cas, project: Path) -> None:
    labels = [f"--label=k{i}=v" for i in range(65)]
    assert "labels" in cas.fails("snapshot", str(project), "-e", "run-1", *labels)
    cas.ok("snapshot", str(project), "-e", "run-1", *labels[:64])


def test_undecodable_label_bytes_are_refused(tmp_path: Path, project: Path) -> None:
    # A label value that is not text (invalid UTF-8 on the command line) is refused, not stored.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CAS_", "AWS_"))}
    env.update({"CAS_HOME": str(tmp_path / "home"), "PYTHONPATH": str(ROOT)})
    argv = [sys.executable.encode(), b"-m", b"cas", b"--repo", os.fsencode(tmp_path / "repo"), b"snapshot",
            os.fsencode(project), b"-e", b"run-1", b"--label=k=\xff\xfe"]
    proc = subprocess.run(argv, capture_output=True, env=env, timeout=60, check=False)
    assert proc.returncode == 1 and proc.stderr.count(b"\n") == 1 and b"label" in proc.stderr


def test_sql_looking_values_round_trip_as_data(cas: Cas, project: Path) -> None:
    cas.ok("snapshot", str(project), "-e", "run-1", f"--label=note={SQL_INJECTION}",
           "--label=q=\" OR 1=1; --", "--label=x=Robert'); DROP TABLE blobs;--")
    cas.ok("snapshot", str(project), "-e", "1=1", "--label=note=%' OR '1'='1")
    log = {s["execution_id"]: s for s in json.loads(cas.ok("--json", "log"))}
    assert set(log) == {"run-1", "1=1"}
    assert log["run-1"]["labels"] == {"note": SQL_INJECTION, "q": "\" OR 1=1; --",
                                      "x": "Robert'); DROP TABLE blobs;--"}
    assert log["1=1"]["labels"] == {"note": "%' OR '1'='1"}
    # The tables are all still there and consistent.
    assert json.loads(cas.ok("--json", "verify", "--read-data"))["ok"]
    cas.ok("restore", "1=1", str(cas.base / "dest"))
    assert (cas.base / "dest" / "a.txt").read_text() == "a\n"
    # A rebuild from the backend alone brings the same labels back.
    cas.ok("rebuild-index")
    again = {s["execution_id"]: s["labels"] for s in json.loads(cas.ok("--json", "log"))}
    assert again["run-1"]["note"] == SQL_INJECTION


def _sql_calls(path: Path) -> Iterator[tuple[int, ast.expr]]:
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Call) and node.args:
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if name in ("text", "exec_driver_sql", "execute", "executescript", "executemany"):
                yield node.lineno, node.args[0]


def test_sql_is_never_built_from_strings() -> None:
    """Every statement is SQLAlchemy Core (bound parameters) or a constant string: no f-strings,
    concatenation or % formatting reaches a text()/execute() call."""
    checked = 0
    for path in sorted((ROOT / "manifests").rglob("*.py")) + sorted((ROOT / "cas").rglob("*.py")):
        for lineno, arg in _sql_calls(path):
            checked += 1
            built = isinstance(arg, (ast.JoinedStr, ast.BinOp)) or (
                isinstance(arg, ast.Call) and isinstance(arg.func, ast.Attribute) and arg.func.attr == "format"
            )
            assert not built, f"{path.relative_to(ROOT)}:{lineno} builds SQL from a string"
    assert checked > 10


# -- URLs, options and configuration ------------------------------------------------------------


@pytest.mark.parametrize(
    ("repo", "named"),
    [
        ("ftp://host/x", "scheme 'ftp'"),
        ("gopher:relative", "scheme 'gopher'"),
        ("s3://", "bucket"),
        ("s3://bucket/p?colour=x", "colour"),
        ("s3://bucket/p?secret_access_key=x", "cannot be given in an s3:// URL"),
        ("s3://user:pw@bucket/p", "credentials"),
        ("oss://bucket/p", "endpoint"),
        ("oss://", "bucket"),
        ("hdfs:///root", "namenode"),
        ("webhdfs://127.0.0.1:1/r?timeout=soon", "timeout"),
        ("webhdfs://127.0.0.1:1/r?colour=red", "colour"),
        ("webhdfs://127.0.0.1:99999/r", "port"),
        ("webhdfs://127.0.0.1:1/../etc", "'..'"),
        ("file://otherhost/x", "host"),
    ],
)
def test_bad_repository_urls_fail_naming_the_field(cas: Cas, repo: str, named: str) -> None:
    assert named in cas.fails("log", repo=repo)


def test_bad_index_urls_fail_naming_the_index(cas: Cas) -> None:
    assert "index" in cas.fails("--index", "nosuchdb://x/y", "log")
    assert "index" in cas.fails("--index", "not a url", "log")


@pytest.mark.parametrize(
    ("url", "options", "named"),
    [
        ("s3://bucket", {"read_timeout": "soon"}, "read_timeout"),
        ("s3://bucket", {"part_size": "big"}, "part_size"),
        ("s3://bucket", {"part_size": 1}, "part_size"),
        ("s3://bucket", {"connect_timeout": float("inf")}, "connect_timeout"),
        ("s3://bucket", {"addressing_style": "sideways"}, "addressing_style"),
        ("s3://bucket", {"access_key_id": "only-the-id"}, "secret_access_key"),
        ("s3://bucket", {"colour": "red"}, "colour"),
        ("oss://bucket", {"endpoint": "http://127.0.0.1:1", "access_key_id": "i", "access_key_secret": "s",
                          "part_size": "big"}, "part_size"),
        ("oss://bucket", {"endpoint": "http://127.0.0.1:1", "access_key_id": "i"}, "access_key_secret"),
        ("oss://bucket", {"endpoint": 42, "access_key_id": "i", "access_key_secret": "s"}, "endpoint"),
        ("oss://a", {"bucket": "b"}, "bucket"),
        ("webhdfs://127.0.0.1:1/r", {"timeout": [1, 2, 3]}, "timeout"),
        ("webhdfs://127.0.0.1:1/r", {"token": "t", "kerberos": True}, "token"),
    ],
)
def test_bad_backend_options_fail_naming_the_field(
    url: str, options: dict[str, object], named: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("OSS_ENDPOINT", "OSS_ACCESS_KEY_ID", "OSS_ACCESS_KEY_SECRET"):
        monkeypatch.delenv(name, raising=False)
    pytest.importorskip({"s3": "boto3", "oss": "oss2", "webhdfs": "hdfs"}[url.split(":")[0]])
    with pytest.raises(ConfigurationError, match=named):
        open_backend(url, **options)


@pytest.mark.parametrize(
    ("overrides", "named"),
    [({"chunk_min": 1}, "chunk_min"), ({"pack_size": 10}, "pack_size"), ({"compression_level": 99},
                                                                          "compression_level")],
)
def test_bad_repository_parameters_fail_naming_the_field(
    tmp_path: Path, overrides: dict[str, int], named: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CAS_HOME", str(tmp_path / "home"))
    with pytest.raises(ConfigurationError, match=named):
        Store.open(str(tmp_path / "repo"), index=f"sqlite:///{tmp_path / 'i.sqlite'}", **overrides)


# -- secrets ------------------------------------------------------------------------------------

AWS_SECRET = "aws-s3cret-Value-0123456789"
OSS_SECRET = "oss-s3cret-Value-0123456789"
PG_PASSWORD = "pg-s3cret-Value-0123456789"
HDFS_TOKEN = "hdfs-s3cret-Token-0123456789"
SECRETS = (AWS_SECRET, OSS_SECRET, PG_PASSWORD, HDFS_TOKEN)


def assert_no_secret(proc: subprocess.CompletedProcess[str]) -> None:
    for secret in SECRETS:
        assert secret not in proc.stdout and secret not in proc.stderr, f"secret leaked: {proc.stderr}"
    for fragment in ("s3cret-Value", "s3cret-Token"):
        assert fragment not in proc.stdout + proc.stderr


def test_secrets_stay_out_of_errors_when_services_are_unreachable(tmp_path: Path) -> None:
    closed = free_port()
    run = Cas(tmp_path, {
        "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE", "AWS_SECRET_ACCESS_KEY": AWS_SECRET,
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{closed}", "AWS_DEFAULT_REGION": "us-east-1",
        "OSS_ACCESS_KEY_ID": "id", "OSS_ACCESS_KEY_SECRET": OSS_SECRET, "OSS_ENDPOINT": f"http://127.0.0.1:{closed}",
    })
    cases = [
        ("log", "s3://bucket/prefix", ()),
        ("log", "oss://bucket/prefix", ()),
        ("log", str(tmp_path / "repo"), ("--index", f"postgresql://bob:{PG_PASSWORD}@127.0.0.1:{closed}/db")),
    ]
    for command, repo, extra in cases:
        for json_flag in ((), ("--json",)):
            proc = run(*json_flag, *extra, command, repo=repo)
            assert proc.returncode == 1, proc.stderr
            assert proc.stderr.startswith("cas: error:") and proc.stderr.count("\n") == 1, proc.stderr
            assert_no_secret(proc)


def test_hdfs_delegation_token_stays_out_of_errors(tmp_path: Path) -> None:
    pytest.importorskip("hdfs")
    closed = free_port()
    proc = Cas(tmp_path)("--json", "log", repo=f"webhdfs://127.0.0.1:{closed}/root?token={HDFS_TOKEN}")
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
    assert_no_secret(proc)


def test_secrets_stay_out_of_output_of_a_working_s3_repository(
    tmp_path: Path, project: Path, moto_server: MotoServer
) -> None:
    moto_server.client().create_bucket(Bucket="secrets-test")
    run = Cas(tmp_path, {
        "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE", "AWS_SECRET_ACCESS_KEY": AWS_SECRET,
        "AWS_ENDPOINT_URL": moto_server.endpoint_url, "AWS_DEFAULT_REGION": "us-east-1",
    })
    repo = "s3://secrets-test/cas"
    for args in (("snapshot", str(project), "-e", "run-1"), ("--json", "log"), ("--json", "ls", "run-1"),
                 ("--json", "verify", "--read-data"), ("verify",), ("restore", "run-1", str(tmp_path / "dest"))):
        proc = run(*args, repo=repo)
        assert proc.returncode == 0, proc.stderr
        assert_no_secret(proc)
    proc = run("snapshot", str(project), "-e", "run-1", repo="s3://no-such-bucket/cas")
    assert proc.returncode == 1
    assert_no_secret(proc)


# -- permissions --------------------------------------------------------------------------------


def test_repository_is_created_private(cas: Cas, project: Path) -> None:
    os.umask(old := os.umask(0o022))
    try:
        cas.ok("snapshot", str(project), "-e", "run-1")
    finally:
        os.umask(old)
    repo = cas.base / "repo"
    assert stat.S_IMODE(os.stat(repo).st_mode) == 0o700
    for dirpath, _dirnames, filenames in os.walk(repo):
        for name in filenames:
            mode = stat.S_IMODE(os.stat(os.path.join(dirpath, name)).st_mode)
            assert mode & 0o077 == 0, f"{name} is readable by others ({mode:o})"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to own files as another user")
def test_restore_never_chowns(cas: Cas, project: Path) -> None:
    os.chown(project / "a.txt", 4321, 4321)
    os.chown(project, 4321, 4321)
    cas.ok("snapshot", str(project), "-e", "run-1")
    dest = cas.base / "dest"
    cas.ok("restore", "run-1", str(dest))
    cas.ok("restore", "--same-permissions", "run-1", str(cas.base / "dest2"))
    for path in (dest, dest / "a.txt", cas.base / "dest2" / "a.txt"):
        st = os.stat(path)
        assert (st.st_uid, st.st_gid) == (os.geteuid(), os.getegid()), f"{path} was chowned"


def test_the_engine_has_no_chown_call() -> None:
    for path in sorted((ROOT / "cas").rglob("*.py")) + sorted((ROOT / "backends").rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in ("chown", "fchown", "lchown"):
                raise AssertionError(f"{path.relative_to(ROOT)}:{node.lineno} calls {node.attr}")
