"""Client-side encryption end to end (docs/SECURITY.md, "Client-side encryption"): what the backend
holds, keyed names, passphrases through the CLI and where they never appear, keys, copies between
encrypted and unencrypted repositories, and unencrypted repositories unchanged.

The engine's own suites (snapshot/restore round trips, dedup, gc, verify and repair) run on an
encrypted repository too: tests/engine.py ``either_store`` and the ``REPO_KINDS`` parameters.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from backends.s3 import from_url
from cas import Store
from cas.errors import ConfigurationError, IntegrityError
from cas.format.config import RepoConfig
from cas.repo.keystore import WrongPassphrase
from tests.engine import ENCRYPTED, SMALL_CHUNKS, TEST_PASSWORD
from tests.inprocess import run_main
from tests.inprocess import text as decoded
from tests.servers import s3 as s3_servers
from tests.servers.s3 import MotoServer
from tests.treeutil import describe

moto_server = s3_servers.moto_server
ROOT = Path(__file__).resolve().parents[2]
MARKER = b"PLAINTEXT-MARKER-7f3a9c"
NAME = "secret-model-name.safetensors"
LABEL = "confidential-team-zeta"
EXECUTION = "run-visible-name-0042"


def _project(root: Path) -> Path:
    """Files a bucket holder must not read: a compressible one full of a marker, an incompressible
    one, a name, and (in the snapshot) an execution ID and a label."""
    (root / "sub").mkdir(parents=True)
    (root / NAME).write_bytes(MARKER * 5000)
    (root / "sub" / "notes.txt").write_bytes(b"hello " + MARKER + b" world\n")
    (root / "random.bin").write_bytes(os.urandom(300_000) + MARKER)
    return root


def _stored_bytes(repo_dir: Path) -> list[tuple[str, bytes]]:
    return [(str(p.relative_to(repo_dir)), p.read_bytes()) for p in sorted(repo_dir.rglob("*")) if p.is_file()]


def _open(tmp_path: Path, name: str, **options: object) -> Store:
    return Store.open(str(tmp_path / name), index=f"sqlite:///{tmp_path / (name + '.sqlite')}",
                      **SMALL_CHUNKS, **options)  # type: ignore[arg-type]


def test_the_backend_holds_no_plaintext_names_or_ids(tmp_path: Path, cas_home: Path) -> None:
    src = _project(tmp_path / "src")
    needles = [MARKER, NAME.encode(), LABEL.encode(), EXECUTION.encode(), b"notes.txt", b"random.bin"]
    for kind, options in (("plain", {}), ("encrypted", ENCRYPTED)):
        with _open(tmp_path, kind, **options) as store:
            snap = store.snapshot(src, EXECUTION, labels={"team": LABEL})
            file_digest = store.entry(EXECUTION, NAME).digest  # type: ignore[union-attr]
            chunk_ids = store.entry(EXECUTION, NAME).chunks  # type: ignore[union-attr]
            store.restore(EXECUTION, tmp_path / f"out-{kind}")
        assert describe(str(tmp_path / f"out-{kind}")) == describe(str(src))
        hex_needles = [snap.root.encode(), file_digest.encode(), *(c.encode() for c in chunk_ids)]
        found = set()
        for name, data in _stored_bytes(tmp_path / kind):
            for needle in needles + hex_needles:
                if needle in data or needle.decode() in name:
                    found.add(needle)
            for chunk_id in chunk_ids:  # chunk IDs as raw bytes in pack trailers
                if bytes.fromhex(chunk_id) in data:
                    found.add(chunk_id.encode())
        if kind == "plain":
            assert MARKER in found and EXECUTION.encode() in found and LABEL.encode() in found  # the test can see it
        else:
            assert found == set(), found
    stored = _stored_bytes(tmp_path / "encrypted")
    names = {n.split("/")[0] for n, _ in stored}
    assert names == {"config", "keys", "data", "snapshots"}


def test_the_same_file_gets_different_names_in_two_encrypted_repositories(
    tmp_path: Path, cas_home: Path
) -> None:
    src = _project(tmp_path / "src")

    def data_names(name: str, options: dict[str, object]) -> set[str]:
        with _open(tmp_path, name, **options) as store:
            store.snapshot(src, "run-1", use_files_cache=False)
            root = store.get("run-1").root
        return {n for n, _ in _stored_bytes(tmp_path / name) if n.startswith("data/")} | {root}

    plain_a, plain_b = data_names("plain-a", {}), data_names("plain-b", {})
    assert plain_a == plain_b  # unencrypted: names are content, equal everywhere
    enc_a, enc_b = data_names("enc-a", dict(ENCRYPTED)), data_names("enc-b", dict(ENCRYPTED))
    roots = {n for n in enc_a | enc_b if "/" not in n}
    assert len(roots) == 1  # the same tree inside: dedup works on content within a repository
    assert (enc_a - roots).isdisjoint(enc_b - roots) and (enc_a - roots).isdisjoint(plain_a)


def test_dedup_within_an_encrypted_repository(tmp_path: Path, cas_home: Path) -> None:
    src = _project(tmp_path / "src")
    with _open(tmp_path, "enc", **ENCRYPTED) as store:
        first = store.snapshot(src, "run-1", use_files_cache=False)
        second = store.snapshot(src, "run-2", use_files_cache=False)
    assert first.new_bytes > 300_000 and second.new_bytes == 0


def test_a_wrong_or_missing_passphrase_is_refused_with_one_line(tmp_path: Path, cas_home: Path) -> None:
    _open(tmp_path, "enc", **ENCRYPTED).close()
    with pytest.raises(WrongPassphrase):
        _open(tmp_path, "enc", password="not it")
    with pytest.raises(ConfigurationError, match="is encrypted: give its passphrase"):
        _open(tmp_path, "enc")
    with pytest.raises(ConfigurationError, match="KDF cost"):
        _open(tmp_path, "other", encrypt=True, password="x", kdf_cost=4)
    assert not (tmp_path / "other" / "config").exists()


def test_an_altered_config_opens_no_key(tmp_path: Path, cas_home: Path) -> None:
    _open(tmp_path, "enc", **ENCRYPTED).close()
    path = tmp_path / "enc" / "config"
    config = json.loads(path.read_bytes())
    config["chunk_max"] *= 2
    path.write_text(json.dumps(config, sort_keys=True, separators=(",", ":")))
    with pytest.raises(WrongPassphrase):
        _open(tmp_path, "enc", password=TEST_PASSWORD)


def test_unencrypted_config_is_as_before_and_an_old_cas_refuses_an_encrypted_one(
    tmp_path: Path, cas_home: Path
) -> None:
    with _open(tmp_path, "plain") as store:
        assert not store.encrypted
    plain = json.loads((tmp_path / "plain" / "config").read_bytes())
    assert plain["version"] == 1 and sorted(plain) == sorted(
        ["chunk_avg", "chunk_max", "chunk_min", "chunker", "compression_level", "pack_size", "repo_id", "version"])
    assert RepoConfig.from_json((tmp_path / "plain" / "config").read_bytes()).to_json() == (
        tmp_path / "plain" / "config").read_bytes()
    _open(tmp_path, "enc", **ENCRYPTED).close()
    encrypted = (tmp_path / "enc" / "config").read_bytes()
    assert json.loads(encrypted)["version"] == 2
    # The config module of cas before encryption existed, from git history, reading this config.
    old = subprocess.run(["git", "-C", str(ROOT), "show", "deda455:cas/format/config.py"],
                         capture_output=True, text=True, check=False)
    if old.returncode != 0:
        pytest.skip("git history with the commit before encryption is not available")
    (tmp_path / "old_config.py").write_text(old.stdout)
    spec = importlib.util.spec_from_file_location("old_config", tmp_path / "old_config.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules["old_config"] = module  # dataclasses look their module up
    try:
        spec.loader.exec_module(module)  # type: ignore[union-attr]
    finally:
        sys.modules.pop("old_config", None)
    with pytest.raises(IntegrityError, match="format version 2 is not supported"):
        module.RepoConfig.from_json(encrypted)
    module.RepoConfig.from_json((tmp_path / "plain" / "config").read_bytes())  # and still reads ours


def test_keys_through_the_api(tmp_path: Path, cas_home: Path) -> None:
    with _open(tmp_path, "enc", **ENCRYPTED) as store:
        store.snapshot(_project(tmp_path / "src"), "run-1")
        first = store.list_keys()[0].key_id
        second = store.add_key("second passphrase", kdf_cost=10)
        assert {k.key_id: k.current for k in store.list_keys()} == {first: True, second: False}
        with pytest.raises(ConfigurationError, match="this passphrase opened"):
            store.remove_key(first)
    with _open(tmp_path, "enc", password="second passphrase") as store:
        assert [s.execution_id for s in store.list()] == ["run-1"]
        store.remove_key(first)
        with pytest.raises(ConfigurationError, match="last key"):
            store.remove_key(second)
    with pytest.raises(WrongPassphrase):
        _open(tmp_path, "enc", password=TEST_PASSWORD)
    with _open(tmp_path, "plain") as plain, pytest.raises(ConfigurationError, match="not encrypted"):
        plain.list_keys()


@pytest.fixture
def s3_url(moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    s3_servers.isolate_from_ambient_aws(monkeypatch, str(tmp_path))
    bucket = f"cas-{uuid.uuid4().hex[:16]}"
    moto_server.client().create_bucket(Bucket=bucket)
    return f"s3://{bucket}/enc"


def test_copy_between_encrypted_and_unencrypted_repositories_over_s3(
    tmp_path: Path, cas_home: Path, moto_server: MotoServer, s3_url: str
) -> None:
    src = _project(tmp_path / "src")
    with _open(tmp_path, "enc", **ENCRYPTED) as source:
        source.snapshot(src, "run-1", labels={"team": LABEL})
        # A new target created by the copy is encrypted like its source, with its own master key.
        backend = from_url(s3_url, **moto_server.backend_options())
        report = source.copy(["run-1"], backend, to_index=f"sqlite:///{tmp_path / 's3.sqlite'}",
                             to_password="target passphrase")
        assert report.copied == ["run-1"]
        with Store.open(from_url(s3_url, **moto_server.backend_options()), index=f"sqlite:///{tmp_path / 's3b.sqlite'}",
                        password="target passphrase") as target:
            assert target.encrypted and target.verify(read_data=True).ok
            target.restore("run-1", tmp_path / "from-s3")
            with pytest.raises(ConfigurationError, match="would be encrypted: give its passphrase"):
                target.copy(["run-1"], str(tmp_path / "plain"))  # a new target is encrypted like its source
            _open(tmp_path, "plain").close()  # an existing unencrypted one stays so
            target.copy(["run-1"], str(tmp_path / "plain"), to_index=f"sqlite:///{tmp_path / 'plain.sqlite'}")
        bucket = s3_url.split("/")[2]
        for obj in moto_server.client().list_objects_v2(Bucket=bucket)["Contents"]:
            body = moto_server.client().get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
            assert MARKER not in body and LABEL.encode() not in body and b"run-1" not in body
    assert describe(str(tmp_path / "from-s3")) == describe(str(src))
    with _open(tmp_path, "plain") as plain:
        assert not plain.encrypted
        plain.restore("run-1", tmp_path / "from-plain")
    assert describe(str(tmp_path / "from-plain")) == describe(str(src))


# -- the command line ----------------------------------------------------------------------------


def _cas(tmp_path: Path, *args: str, env: dict[str, str] | None = None, ok: bool = True) -> subprocess.CompletedProcess[str]:
    """``cas --repo TMP/repo ARGS`` run in this process (tests/inprocess.py: a subprocess per command
    would cost a second each), from ``tmp_path``, with no terminal on stdin, ``CAS_HOME`` under
    ``tmp_path`` and of the passphrase variables only those in ``env``."""
    base = {k: v for k, v in os.environ.items()
            if k not in ("CAS_REPO", "CAS_INDEX", "CAS_PASSWORD", "CAS_NEW_PASSWORD", "CAS_TO_PASSWORD")}
    argv = ["--repo", str(tmp_path / "repo"), *args]
    status, out, err = run_main(argv, {**base, "CAS_HOME": str(tmp_path / "home"), **(env or {})}, tmp_path)
    proc = subprocess.CompletedProcess(argv, status, decoded(out), decoded(err))
    if ok:
        assert proc.returncode == 0, proc.stderr
    return proc


def _one_line_error(proc: subprocess.CompletedProcess[str], text: str) -> None:
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1 and text in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_init_keys_and_passphrases(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    first, second = "first secret phrase", "second secret phrase"
    (tmp_path / "pw1").write_text(first + "\n")
    (tmp_path / "pw2").write_text(second + "\n")
    src = _project(tmp_path / "src")
    outputs: list[str] = []

    def run(*args: str, ok: bool = True, **env: str) -> subprocess.CompletedProcess[str]:
        proc = _cas(tmp_path, *args, env=env, ok=ok)
        outputs.extend([proc.stdout, proc.stderr])
        return proc

    run("--json", "--password-file", "pw1", "init", "--encrypt", "--kdf-cost", "10")
    _one_line_error(run("--password-file", "pw1", "init", "--encrypt", ok=False), "exists already")
    run("--password-file", "pw1", "snapshot", str(src), "-e", "run-1", "-l", "team=x")
    run("--json", "log", CAS_PASSWORD=first)
    _one_line_error(run("log", ok=False, CAS_PASSWORD="wrong"), "wrong passphrase for the repository")
    _one_line_error(run("log", ok=False), "is encrypted: give its passphrase")  # no TTY, no prompt
    _one_line_error(run("--password-file", "nope", "log", ok=False), "cannot read the password file")
    # --password-file wins over the environment.
    run("--password-file", "pw1", "ls", "run-1", CAS_PASSWORD="wrong")
    # A passphrase is never an argument.
    for option in (["--password", first], [f"--password={first}"], ["--passw", first]):
        usage = run(*option, "log", ok=False)
        assert usage.returncode == 2 and usage.stderr.count("\n") == 1, usage.stderr

    # No new passphrase anywhere (no TTY): the line names the new key's sources, not the repository's.
    _one_line_error(run("key", "add", ok=False, CAS_PASSWORD=first), "a new key for the repository at")
    added = json.loads(run("--json", "key", "add", "--kdf-cost", "10", CAS_PASSWORD=first, CAS_NEW_PASSWORD=second).stdout)
    keys = json.loads(run("--json", "--password-file", "pw2", "key", "list").stdout)
    assert {k["id"]: k["current"] for k in keys}[added["added"]] is True and len(keys) == 2
    old = next(k["id"] for k in keys if not k["current"])
    _one_line_error(run("--password-file", "pw1", "key", "remove", old, ok=False), "this passphrase opened")
    run("--password-file", "pw2", "key", "remove", old)
    _one_line_error(run("--password-file", "pw1", "log", ok=False), "wrong passphrase")
    _one_line_error(run("--password-file", "pw2", "key", "remove", added["added"], ok=False), "last key")
    run("--json", "--password-file", "pw2", "verify", "--read-data")
    run("--password-file", "pw2", "restore", "run-1", str(tmp_path / "out"))
    assert describe(str(tmp_path / "out")) == describe(str(src))
    run("--password-file", "pw2", "copy", "run-1", "--to", str(tmp_path / "copy"))
    run("--password-file", "pw2", "--repo", str(tmp_path / "copy"), "restore", "run-1", str(tmp_path / "out2"))
    assert describe(str(tmp_path / "out2")) == describe(str(src))
    # A target with a passphrase of its own: --to-password-file, or CAS_TO_PASSWORD.
    run("--password-file", "pw2", "copy", "run-1", "--to", str(tmp_path / "copy-b"), "--to-password-file", "pw1")
    run("--password-file", "pw2", "copy", "run-1", "--to", str(tmp_path / "copy-b"), CAS_TO_PASSWORD=first)
    run("--password-file", "pw1", "--repo", str(tmp_path / "copy-b"), "restore", "run-1", str(tmp_path / "out3"))
    assert describe(str(tmp_path / "out3")) == describe(str(src))
    _one_line_error(run("--password-file", "pw2", "--repo", str(tmp_path / "copy-b"), "log", ok=False), "wrong passphrase")
    # Unencrypted repositories know no keys and ignore CAS_PASSWORD.
    run("--repo", str(tmp_path / "plain"), "init")
    _one_line_error(run("--repo", str(tmp_path / "plain"), "key", "list", ok=False), "not encrypted")
    run("--repo", str(tmp_path / "plain"), "log", CAS_PASSWORD=first)
    for text in [*outputs, caplog.text]:
        assert first not in text and second not in text


def test_cli_usage_errors(tmp_path: Path) -> None:
    proc = _cas(tmp_path, "init", "--encrypt", "--kdf-cost", "4", ok=False, env={"CAS_PASSWORD": "pw"})
    _one_line_error(proc, "KDF cost must be an integer from 10 to 18")
    assert not (tmp_path / "repo").exists() or not (tmp_path / "repo" / "config").exists()
    proc = _cas(tmp_path, "init", "--encrypt", ok=False)
    _one_line_error(proc, "would be encrypted: give its passphrase")
    (tmp_path / "empty").write_text("\n")
    proc = _cas(tmp_path, "--password-file", "empty", "init", "--encrypt", ok=False)
    _one_line_error(proc, "holds no passphrase")


def test_cli_prompts_for_the_passphrase_on_a_terminal(tmp_path: Path) -> None:
    import pty

    _cas(tmp_path, "init", "--encrypt", "--kdf-cost", "10", env={"CAS_PASSWORD": "typed secret"})
    env = {**os.environ, "CAS_HOME": str(tmp_path / "home"), "PYTHONPATH": str(ROOT)}
    env.pop("CAS_PASSWORD", None)
    pid, fd = pty.fork()
    if pid == 0:  # the child: a terminal on stdin, as a user at a shell
        os.chdir(tmp_path)
        os.execve(sys.executable, [sys.executable, "-m", "cas", "--repo", str(tmp_path / "repo"), "--json", "log"], env)
    seen = b""
    sent = False
    while True:
        try:
            chunk = os.read(fd, 1024)
        except OSError:
            break
        if not chunk:
            break
        seen += chunk
        if not sent and b"passphrase:" in seen:
            os.write(fd, b"typed secret\n")
            sent = True
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    assert sent and os.waitstatus_to_exitcode(status) == 0, seen
    assert b"[]" in seen and b"typed secret" not in seen  # the prompt does not echo


def test_aiflow_managers_take_the_passphrase_from_their_config(tmp_path: Path, cas_home: Path) -> None:
    from cas.aiflow.managers import LocalBlobManager

    secret = "aiflow secret phrase"
    Store.open(str(tmp_path / "root" / "cas"), encrypt=True, password=secret, kdf_cost=10).close()
    (tmp_path / "model.bin").write_bytes(MARKER * 100)
    (tmp_path / "pw").write_text(secret + "\n")
    for key, value in (("password", secret), ("password_file", str(tmp_path / "pw"))):
        manager = LocalBlobManager({"root_directory": str(tmp_path / "root"), key: value})
        uri = manager.upload(str(tmp_path / "model.bin"))
        path = manager.download(uri, str(tmp_path / f"down-{key}"))
        assert Path(path).read_bytes() == MARKER * 100
        assert secret not in repr(manager) and secret not in uri
        manager.close()
    wrong = LocalBlobManager({"root_directory": str(tmp_path / "root"), "password": "nope"})
    with pytest.raises(WrongPassphrase):
        wrong.upload(str(tmp_path / "model.bin"))
    for _name, data in _stored_bytes(tmp_path / "root" / "cas"):
        assert MARKER not in data


def test_the_fsspec_filesystem_reads_an_encrypted_repository(
    tmp_path: Path, cas_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cas.filesystem import CasFileSystem

    src = _project(tmp_path / "src")
    with _open(tmp_path, "enc", **ENCRYPTED) as store:
        store.snapshot(src, "run-1")
    index = f"sqlite:///{tmp_path / 'enc.sqlite'}"
    (tmp_path / "pw").write_text(TEST_PASSWORD + "\n")
    fs = CasFileSystem(str(tmp_path / "enc"), index=index, password_file=str(tmp_path / "pw"), skip_instance_cache=True)
    assert fs.cat_file(f"run-1/{NAME}", start=7, end=107) == (MARKER * 5000)[7:107]
    fs.close()
    monkeypatch.setenv("CAS_PASSWORD", TEST_PASSWORD)
    fs = CasFileSystem(str(tmp_path / "enc"), index=index, skip_instance_cache=True)
    assert fs.cat_file("run-1/sub/notes.txt") == (src / "sub" / "notes.txt").read_bytes()
    fs.close()


def test_an_encrypted_config_replaced_by_an_unencrypted_one_is_refused_when_a_passphrase_is_given(
    tmp_path: Path, cas_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cas import passphrase

    with _open(tmp_path, "enc", **ENCRYPTED) as store:
        store.snapshot(_project(tmp_path / "src"), "run-1")
    plain = json.loads((tmp_path / "enc" / "config").read_bytes())
    del plain["encryption"]
    plain["version"] = 1
    (tmp_path / "enc" / "config").write_text(json.dumps(plain, sort_keys=True, separators=(",", ":")))
    before = _stored_bytes(tmp_path / "enc")
    for given in (TEST_PASSWORD, passphrase.fixed(TEST_PASSWORD)):
        with pytest.raises(IntegrityError, match="has encryption keys but an unencrypted config"):
            _open(tmp_path, "enc", password=given)
    monkeypatch.setenv("CAS_PASSWORD", TEST_PASSWORD)
    with pytest.raises(IntegrityError, match="config was replaced"):
        _open(tmp_path, "enc", password=passphrase.source(None))
    assert _stored_bytes(tmp_path / "enc") == before  # nothing written, not even a new index's sync


def test_a_failed_creation_leaves_no_key_behind(tmp_path: Path, cas_home: Path) -> None:
    """The key is written before the config; if the config cannot be written, the key goes too
    (a key without its config would make a later unencrypted repository there look replaced)."""
    from backends.local import LocalBackend

    class ConfigFails(LocalBackend):
        def put(self, key: str, data: object, *, overwrite: bool = True) -> None:
            if key == "config":
                raise OSError(28, "No space left on device")
            super().put(key, data, overwrite=overwrite)  # type: ignore[arg-type]

    with pytest.raises(OSError):
        Store.open(ConfigFails(tmp_path / "repo"), index=f"sqlite:///{tmp_path / 'i.sqlite'}", **ENCRYPTED)  # type: ignore[arg-type]
    assert _stored_bytes(tmp_path / "repo") == []
