"""What a user meets when the input, the index or the environment is bad: one clear line, never a
traceback, an "internal error", a secret, or raw control characters from stored data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.hostile.test_inputs import Cas

# -- durations ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (("gc", "--grace", "99999999999999999d"), "--grace"),
        (("gc", "--grace=-1h"), "--grace"),
        (("gc", "--grace", "inf"), "--grace"),
        (("gc", "--grace", "nan"), "--grace"),
        (("forget", "--keep-within", "99999999999999d"), "--keep-within"),
        (("forget", "--keep-within", "1e400s"), "--keep-within"),
    ],
)
def test_out_of_range_durations_are_usage_errors(cas: Cas, args: tuple[str, ...], option: str) -> None:
    proc = cas(*args)
    assert proc.returncode == 2, proc.stderr
    line = cas.fails(*args)
    assert option in line and "36500d" in line, line


def test_largest_duration_is_accepted(cas: Cas, project: Path) -> None:
    cas.ok("snapshot", str(project), "-e", "run-1")
    assert json.loads(cas.ok("--json", "gc", "--dry-run", "--grace", "36500d"))["deleted"] == []
    assert json.loads(cas.ok("--json", "forget", "--dry-run", "--keep-within", "36500d")) == {"would_forget": []}


# -- a damaged index ----------------------------------------------------------------------------


def _index_file(cas: Cas) -> Path:
    (path,) = (cas.base / "home" / "index").glob("*.sqlite")
    return path


def _damage(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    page = 4096
    assert len(data) > 4 * page, "the index is too small for this test's damage"
    if how == "header":
        data[:100] = bytes(range(100))
    elif how == "every page but the first":
        data[page:] = bytes(i % 251 for i in range(len(data) - page))
    else:  # one page in the middle: only a full check of the file finds it
        middle = (len(data) // page // 2) * page
        data[middle : middle + page] = b"\xff" * page
    path.write_bytes(bytes(data))
    for extra in ("-wal", "-shm"):
        Path(str(path) + extra).unlink(missing_ok=True)


@pytest.mark.parametrize("how", ["header", "every page but the first", "one page"])
def test_a_damaged_sqlite_index_is_named_and_rebuild_index_recovers_it(cas: Cas, project: Path, how: str) -> None:
    cas.ok("snapshot", str(project), "-e", "run-1", "--label", "k=v")
    cas.ok("snapshot", str(project), "-e", "run-2")
    index = _index_file(cas)
    _damage(index, how)
    commands = [("verify",), ("repair",)]
    if how != "one page":
        commands += [("stats",), ("log",), ("ls", "run-1"), ("restore", "run-1", str(cas.base / "out")),
                     ("snapshot", str(project), "-e", "run-3"), ("forget", "run-1"), ("gc",)]
    for args in commands:
        line = cas.fails(*args)
        assert f"index {index} is damaged" in line and "cas rebuild-index" in line, (args, line)
    proc = cas("rebuild-index")
    assert proc.returncode == 0, proc.stderr
    assert "is damaged; moved it to" in proc.stderr and "Traceback" not in proc.stderr
    (aside,) = index.parent.glob(index.name + ".damaged-*[0-9]Z")
    assert aside.read_bytes()[:16] != b"SQLite format 3\0" or how != "header"  # the damaged file, kept
    log = {s["execution_id"]: s for s in json.loads(cas.ok("--json", "log"))}
    assert set(log) == {"run-1", "run-2"} and log["run-1"]["labels"] == {"k": "v"}
    assert json.loads(cas.ok("--json", "verify", "--read-data"))["ok"]
    cas.ok("restore", "run-1", str(cas.base / "restored"))
    assert (cas.base / "restored" / "a.txt").read_text() == "a\n"


def test_rebuild_index_with_json_names_where_the_damaged_index_went(cas: Cas, project: Path) -> None:
    cas.ok("snapshot", str(project), "-e", "run-1")
    index = _index_file(cas)
    _damage(index, "header")
    report = json.loads(cas.ok("--json", "rebuild-index", "--sync"))
    assert report["snapshots"] == 1 and Path(report["damaged_index_moved_to"]).is_file()
    assert report["damaged_index_moved_to"].startswith(f"{index}.damaged-")


def test_undecodable_text_in_the_index_is_damage_and_never_echoed(cas: Cas, project: Path) -> None:
    import sqlite3

    cas.ok("snapshot", str(project), "-e", "run-1")
    index = _index_file(cas)
    with sqlite3.connect(index) as db:  # a label whose stored text is not UTF-8 and holds an escape
        db.execute("UPDATE snapshots SET labels = CAST(X'7b2261223a221b5b324aff227d' AS TEXT)")
    db.close()
    for args in (("log",), ("verify",), ("--json", "log")):
        proc = cas(*args)
        assert "\x1b" not in proc.stderr + proc.stdout, proc.stderr
        assert "is damaged" in cas.fails(*args)
    cas.ok("rebuild-index")
    assert [s["labels"] for s in json.loads(cas.ok("--json", "log"))] == [{}]


# -- index URLs ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+psycopg2://cas:pg-s3cret-Value@[::1/cas",
        "postgresql://cas:pg-s3cret-Value@127.0.0.1/cas?connect_timeout=abc",
        "postgresql://cas:pg-s3cret-Value@127.0.0.1/cas?sslmode=sideways",
    ],
)
def test_bad_index_urls_are_one_line_without_the_password(cas: Cas, url: str) -> None:
    proc = cas("--index", url, "log")
    assert proc.returncode in (1, 2), proc.stderr
    line = cas.fails("--index", url, "log")
    assert "index" in line and "s3cret" not in line and ":***@" in line, line


# -- credentials in service endpoints -----------------------------------------------------------

ENDPOINT_SECRET = "endpoint-s3cret-Value-42"


def test_credentials_in_endpoint_urls_stay_out_of_errors(tmp_path: Path) -> None:
    from tests.servers.s3 import free_port

    closed = free_port()
    endpoint = f"http://user:{ENDPOINT_SECRET}@127.0.0.1:{closed}"
    run = Cas(tmp_path, {
        "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE", "AWS_SECRET_ACCESS_KEY": "not-the-subject", "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint,
        "OSS_ACCESS_KEY_ID": "id", "OSS_ACCESS_KEY_SECRET": "not-the-subject", "OSS_ENDPOINT": endpoint,
    })
    repos = ["s3://bucket/prefix", "oss://bucket/prefix"]
    try:
        import hdfs  # noqa: F401

        repos.append(f"webhdfs://127.0.0.1:{closed}/root?hdfs_url=http://{ENDPOINT_SECRET}@127.0.0.1:{closed}")
    except ImportError:
        pass
    for repo in repos:
        for args in (("log",), ("--json", "log"), ("--json", "snapshot", str(tmp_path), "-e", "run-1")):
            proc = run(*args, repo=repo)
            assert proc.returncode == 1, (repo, proc.stderr)
            assert proc.stderr.startswith("cas: error:") and proc.stderr.count("\n") == 1, proc.stderr
            assert ENDPOINT_SECRET not in proc.stdout + proc.stderr, proc.stderr
            assert "s3cret" not in proc.stdout + proc.stderr, proc.stderr


# -- names from the repository on a terminal ----------------------------------------------------

HOSTILE_NAMES = ["new\nline", "\x1b[31mred", "\u202eevil.txt", "'quoted", "bell\x07", "c1\x9bx"]


def _unprintable(text: str) -> list[str]:
    return [c for line in text.split("\n") for c in line if not c.isprintable()]


def test_names_with_control_characters_are_quoted_on_the_terminal_and_exact_in_json(cas: Cas, tmp_path: Path) -> None:
    import os

    src = tmp_path / "hostile"
    (src / "sub").mkdir(parents=True)
    for i, name in enumerate(HOSTILE_NAMES):
        (src / "sub" / name).write_text(f"{i}\n")
    (src / os.fsdecode(b"raw\xffbyte")).write_text("x\n")
    os.symlink("\x1b]0;title\x07", src / "link")
    os.mkfifo(src / "fifo\x1b[2J")
    (tmp_path / "empty").mkdir()
    cas.ok("snapshot", str(tmp_path / "empty"), "-e", "empty")
    proc = cas("snapshot", str(src), "-e", "run-1")
    assert proc.returncode == 0 and "special file" in proc.stderr, proc.stderr
    assert not _unprintable(proc.stderr), proc.stderr
    outputs = {
        "ls": cas.ok("ls", "-r", "run-1"),
        "diff": cas.ok("diff", "empty", "run-1"),
    }
    for what, out in outputs.items():
        assert not _unprintable(out), (what, out)
        assert len(out.split("\n")) == len(HOSTILE_NAMES) + 4, (what, out)  # one line per entry (and the end)
        for name in HOSTILE_NAMES:
            assert repr("sub/" + name) in out, (what, name, out)
    assert repr("\x1b]0;title\x07") in outputs["ls"]
    listing = {r["path"]: r for r in json.loads(cas.ok("--json", "ls", "-r", "run-1"))}
    assert {"sub/" + n for n in HOSTILE_NAMES} <= set(listing)
    assert listing["link"]["target"] == "\x1b]0;title\x07"
    assert {d["path"] for d in json.loads(cas.ok("--json", "diff", "empty", "run-1"))} >= {"sub/" + n for n in HOSTILE_NAMES}
    # A restore that fails on these names lists them escaped, one line each.
    dest = tmp_path / "dest"
    for name in HOSTILE_NAMES:
        (dest / "sub" / name / "in-the-way").mkdir(parents=True)
    proc = cas("restore", "--overwrite", "run-1", str(dest))
    assert proc.returncode == 3, proc.stderr
    assert not _unprintable(proc.stderr), proc.stderr
    assert len(proc.stderr.splitlines()) == 2 and "6 entries could not be restored" in proc.stderr, proc.stderr
    assert "\\x1b[31mred" in proc.stderr and "new\\nline" in proc.stderr


# -- a truncated pack ---------------------------------------------------------------------------


def test_verify_without_read_data_finds_a_truncated_pack_and_repair_acts_on_it(cas: Cas, tmp_path: Path) -> None:
    import os

    src = tmp_path / "src"
    src.mkdir()
    (src / "early.txt").write_text("early\n")
    (src / "big.bin").write_bytes(os.urandom(600_000))
    cas.ok("snapshot", str(src), "-e", "run-1")
    packs = sorted((cas.base / "repo" / "data").rglob("*"), key=lambda p: p.stat().st_size if p.is_file() else -1)
    data_pack = packs[-1]
    os.truncate(data_pack, data_pack.stat().st_size // 2)
    report = json.loads(cas("--json", "verify").stdout)
    assert not report["ok"] and report["damaged_executions"] == ["run-1"], report
    assert any("truncated" in p["message"] for p in report["problems"]), report
    assert "truncated" in cas("verify").stdout
    repaired = json.loads(cas.ok("--json", "repair"))["repaired"]
    assert repaired["snapshots_marked_damaged"] == ["run-1"], repaired
    after = json.loads(cas("--json", "verify").stdout)  # nothing new, but a damaged snapshot is not "ok"
    assert after["problems"] == [] and not after["ok"] and after["known_damage"], after
    assert json.loads(cas.ok("--json", "log"))[0]["damaged"]
