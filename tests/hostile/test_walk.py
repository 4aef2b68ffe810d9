"""The snapshot walk against a filesystem that changes under it, and trees of awkward shape.

Through the command line, as a user meets it (the snapshots that race and the commands limited to
256 descriptors as real ``cas`` processes, the rest through its ``main`` in this process, see
:class:`tests.hostile.test_inputs.Cas`): a file replaced by a FIFO or a directory, or
rewritten, between the walk's stat and its read; a tree thousands of levels deep; a directory too
big for one tree node; a symlink given as the path to snapshot. Races are made exact by
:mod:`tests.hostile.racing` (no sleeps, no timed assertions; timeouts only guard against hangs).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from cas import Store
from cas.format.hashing import hexdigest
from cas.format.trees import MAX_NODE_BYTES, decode_node
from cas.repo.blobwriter import BlobWriter
from cas.types import BlobKind
from tests.hostile.forge import commit
from tests.hostile.racing import run_racing, write_victim
from tests.hostile.test_inputs import Cas
from tests.inprocess import run_main

MiB = 1024 * 1024


@pytest.fixture
def cas(tmp_path: Path) -> Cas:
    return Cas(tmp_path)


def _project(cas: Cas, victim_size: int = 5) -> tuple[Path, Path]:
    src = cas.base / "src"
    src.mkdir()
    (src / "keep.txt").write_text("keep")
    victim = src / "victim.bin"
    write_victim(victim, victim_size)
    return src, victim


def _stats(cas: Cas, execution_id: str) -> dict[str, int]:
    return next(s["stats"] for s in json.loads(cas.ok("--json", "log")) if s["execution_id"] == execution_id)


def _content(cas: Cas, execution_id: str, path: str) -> bytes:
    status, out, err = run_main(["--repo", str(cas.base / "repo"), "cat", execution_id, path], cas.env, cas.base,
                                timeout=120)
    assert status == 0, err
    return out


# -- a file replaced between the walk's stat and its open ---------------------------------------


def test_file_replaced_by_a_fifo_is_skipped_not_waited_for(cas: Cas) -> None:
    src, victim = _project(cas)
    proc = run_racing(cas.env, cas.base, "fifo", victim, 1, "--repo", str(cas.base / "repo"), 
                      "snapshot", str(src), "-e", "run-1")
    assert proc.returncode == 0, proc.stderr
    assert "skipping special file" in proc.stderr and str(victim) in proc.stderr
    assert _stats(cas, "run-1")["skipped"] == 1
    assert [row["path"] for row in json.loads(cas.ok("--json", "ls", "run-1"))] == ["keep.txt"]


def test_file_replaced_by_a_directory_is_stored_as_the_directory(cas: Cas) -> None:
    src, victim = _project(cas)
    proc = run_racing(cas.env, cas.base, "dir", victim, 1, "--repo", str(cas.base / "repo"),
                      "snapshot", str(src), "-e", "run-1")
    assert proc.returncode == 0, proc.stderr
    listing = {row["path"]: row["type"] for row in json.loads(cas.ok("--json", "ls", "-r", "run-1"))}
    assert listing == {"keep.txt": "file", "victim.bin": "dir", "victim.bin/inner.txt": "file"}


# -- a file rewritten while it is read ------------------------------------------------------------


@pytest.mark.parametrize("size", [5, 20 * MiB], ids=["small", "chunked"])
def test_file_rewritten_once_during_its_read_is_read_again_whole(cas: Cas, size: int) -> None:
    src, victim = _project(cas, size)
    proc = run_racing(cas.env, cas.base, "rewrite", victim, 1, "--repo", str(cas.base / "repo"), 
                      "snapshot", str(src), "-e", "run-1")
    assert proc.returncode == 0, proc.stderr
    # Never a mix of two versions: the re-read sees version 1 whole.
    stored = _content(cas, "run-1", "victim.bin")
    assert stored == b"B" * size, f"stored {stored.count(b'A')} bytes of version 0, {stored.count(b'B')} of 1"
    assert "changed" not in proc.stderr and _stats(cas, "run-1")["changed"] == 0


@pytest.mark.parametrize("size", [5, 20 * MiB], ids=["small", "chunked"])
def test_file_that_keeps_changing_is_stored_with_a_warning_naming_it(cas: Cas, size: int) -> None:
    src, victim = _project(cas, size)
    proc = run_racing(cas.env, cas.base, "rewrite", victim, 1000, "--repo", str(cas.base / "repo"), 
                      "snapshot", str(src), "-e", "run-1")
    assert proc.returncode == 0, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if "changed while it was read" in line]
    assert len(warnings) == 1 and str(victim) in warnings[0]
    assert _stats(cas, "run-1")["changed"] == 1
    assert len(_content(cas, "run-1", "victim.bin")) == size


def test_on_change_fail_fails_naming_the_file(cas: Cas) -> None:
    src, victim = _project(cas, 20 * MiB)
    proc = run_racing(cas.env, cas.base, "rewrite", victim, 1000, "--repo", str(cas.base / "repo"),
                      "snapshot", str(src), "-e", "run-1", "--on-change=fail")
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("cas: error: ") and str(victim) in lines[0], proc.stderr
    assert json.loads(cas.ok("--json", "log")) == []


def test_on_change_retry_waits_for_the_file_to_hold_still(cas: Cas) -> None:
    # Six rewrites: more than the default re-reads absorb, fewer than --on-change=retry allows.
    src, victim = _project(cas, 20 * MiB)
    repo = ("--repo", str(cas.base / "repo"))
    proc = run_racing(cas.env, cas.base, "rewrite", victim, 6, *repo, "snapshot", str(src), "-e", "warned")
    assert proc.returncode == 0 and "changed while it was read" in proc.stderr, proc.stderr
    write_victim(victim, 20 * MiB)
    proc = run_racing(cas.env, cas.base, "rewrite", victim, 6, *repo, "snapshot", str(src), "-e", "waited",
                      "--on-change=retry")
    assert proc.returncode == 0 and "changed" not in proc.stderr, proc.stderr
    assert _content(cas, "waited", "victim.bin") == b"G" * (20 * MiB)


_WRITER = r"""
import os, sys
path, piece = sys.argv[1], 1024 * 1024
generation = 0
while True:
    generation += 1
    fill = bytes([generation % 250 + 1])
    with open(path, "wb") as f:  # truncate, then write the generation in pieces
        for _ in range(24):
            f.write(fill * piece)
        f.write(fill * (generation % 1000 + 1))
    if generation == 2:
        open(path + ".started", "w").close()
"""


def test_file_rewritten_by_another_process_is_stored_whole_or_reported(cas: Cas) -> None:
    """A real concurrent writer: not deterministic, but whatever the interleaving, the stored file
    is a content the file had (one generation's bytes), or the snapshot says it changed."""
    src = cas.base / "src"
    src.mkdir()
    victim = src / "live.bin"
    writer = subprocess.Popen([sys.executable, "-c", _WRITER, str(victim)])
    try:
        marker = Path(str(victim) + ".started")
        while not marker.exists():
            assert writer.poll() is None, "the writer died"
        marker.unlink()
        proc = cas("snapshot", str(src), "-e", "run-1")
    finally:
        writer.kill()
        writer.wait()
    assert proc.returncode == 0, proc.stderr
    if _stats(cas, "run-1").get("changed"):
        assert str(victim) in proc.stderr
        return
    stored = _content(cas, "run-1", "live.bin")
    assert len(set(stored)) <= 1, f"torn: bytes of {len(set(stored))} generations stored without a warning"


# -- depth ---------------------------------------------------------------------------------------

DEPTH = 3000
_DIR = os.O_RDONLY | os.O_DIRECTORY


@pytest.fixture
def deep_cleanup(tmp_path: Path) -> Iterator[None]:
    """Remove the test's directories with ``rm -rf`` afterwards: pytest's own clean-up of old
    temporary directories recurses and would fail, in a later session, on a tree this deep."""
    yield
    for child in tmp_path.iterdir():
        subprocess.run(["rm", "-rf", "--", str(child)], check=False, timeout=300)


def _descend(base: Path, depth: int, *, create: bool) -> int:
    """A descriptor of ``base/d/d/.../d`` (``depth`` levels), made relative to each parent, since the
    full path is far longer than PATH_MAX."""
    fd = os.open(base, _DIR)
    for _ in range(depth):
        if create:
            os.mkdir("d", dir_fd=fd)
        child = os.open("d", _DIR, dir_fd=fd)
        os.close(fd)
        fd = child
    return fd


def _write_leaf(fd: int, data: bytes) -> None:
    leaf = os.open("leaf.txt", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644, dir_fd=fd)
    os.write(leaf, data)
    os.close(leaf)


def _few_descriptors() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))


def _run(cas: Cas, *args: str) -> subprocess.CompletedProcess[str]:
    """``cas`` with only 256 descriptors allowed, fewer than the tree has levels."""
    argv = [sys.executable, "-m", "cas", "--repo", str(cas.base / "repo"), *args]
    return subprocess.run(argv, capture_output=True, text=True, env=cas.env, cwd=cas.base, timeout=300,
                          check=False, preexec_fn=_few_descriptors)


def _ok(cas: Cas, *args: str) -> str:
    proc = _run(cas, *args)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def _check_deep_commands(cas: Cas, depth: int, old: str, new: str) -> None:
    """ls -r, diff, restore, gc and verify on two snapshots of a chain of ``depth`` directories
    ending in leaf.txt, whose leaf differs (b"old" / b"new")."""
    deepest = "d/" * depth + "leaf.txt"
    listing = _ok(cas, "ls", "-r", new).splitlines()
    assert len(listing) == depth + 1 and listing[-1].endswith(deepest)
    assert _ok(cas, "diff", old, new).splitlines() == [f"M {deepest}"]
    _ok(cas, "restore", new, str(cas.base / "out"))
    fd = _descend(cas.base / "out", depth, create=False)
    try:
        assert sorted(os.listdir(fd)) == ["leaf.txt"]
        leaf = os.open("leaf.txt", os.O_RDONLY, dir_fd=fd)
        assert os.read(leaf, 100) == b"new"
        os.close(leaf)
    finally:
        os.close(fd)
    _ok(cas, "gc")
    assert "no problems" in _ok(cas, "verify")


@pytest.mark.usefixtures("deep_cleanup")
def test_a_tree_thousands_of_levels_deep_is_stored_and_read_back(cas: Cas) -> None:
    src = cas.base / "src"
    src.mkdir()
    fd = _descend(src, DEPTH, create=True)
    try:
        _write_leaf(fd, b"old")
        _ok(cas, "snapshot", str(src), "-e", "old")
        _write_leaf(fd, b"new")
        _ok(cas, "snapshot", str(src), "-e", "new")
    finally:
        os.close(fd)
    _check_deep_commands(cas, DEPTH, "old", "new")


def _put_node(writer: BlobWriter, entry: dict[str, object]) -> str:
    data = json.dumps({"v": 1, "entries": [entry]}, separators=(",", ":")).encode()
    writer.add(hexdigest(data), BlobKind.TREE, data)
    return hexdigest(data)


@pytest.mark.usefixtures("deep_cleanup")
def test_a_forged_tree_deeper_than_any_written_is_read_by_every_command(cas: Cas, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Readers do not depend on the writer's walk: a chain of raw tree nodes, 4,000 deep."""
    depth = 4000
    cas.ok("log")
    monkeypatch.setenv("CAS_HOME", cas.env["CAS_HOME"])
    with Store.open(str(cas.base / "repo"), create=False) as store:
        with BlobWriter(store.repo) as writer:
            roots = {}
            for execution_id in ("old", "new"):
                data = execution_id.encode()
                writer.add(hexdigest(data), BlobKind.DATA, data)
                leaf = {"name": "leaf.txt", "type": "file", "mode": 0o644, "mtime_ns": 0, "size": len(data),
                        "digest": hexdigest(data), "chunks": [hexdigest(data)]}
                tree = _put_node(writer, leaf)
                for _ in range(depth):
                    tree = _put_node(writer, {"name": "d", "type": "dir", "mode": 0o755, "mtime_ns": 0, "tree": tree})
                roots[execution_id] = tree
            writer.flush()
        for execution_id, tree in roots.items():
            commit(store, execution_id, tree)
    _check_deep_commands(cas, depth, "old", "new")


# -- width ---------------------------------------------------------------------------------------


def test_a_wide_directory_is_stored_as_parts_and_found_in_the_files_cache(cas: Cas, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    src = cas.base / "src"
    src.mkdir()
    count = 20_000
    for i in range(count):
        path = src / (f"{i:06d}-" + "n" * 200)
        path.write_bytes(b"%d" % i)
        os.utime(path, ns=(10**18, 10**18))  # not "racy": the files cache may remember them
    cas.ok("snapshot", str(src), "-e", "one")
    first = _stats(cas, "one")
    assert first["files"] == count and first["files_from_cache"] == 0
    cas.ok("snapshot", str(src), "-e", "two")
    second = _stats(cas, "two")
    assert second["files"] == count and second["files_from_cache"] == count
    monkeypatch.setenv("CAS_HOME", cas.env["CAS_HOME"])
    with Store.open(str(cas.base / "repo"), create=False) as store:
        root = store.get("two").root
        assert root == store.get("one").root
        parts = decode_node(store.repo.read_blob(root))
        assert isinstance(parts, tuple) and len(parts) > 1, "20,000 entries should be stored as parts"
        for part in parts:
            assert len(store.repo.read_blob(part)) <= MAX_NODE_BYTES
        assert [p for p, _ in store.ls("two")] == sorted(p.name for p in src.iterdir())


# -- the path given ------------------------------------------------------------------------------


def test_a_symlink_given_as_the_path_is_followed(cas: Cas) -> None:
    (cas.base / "target.txt").write_text("through the link")
    (cas.base / "link.txt").symlink_to("target.txt")
    (cas.base / "dir").mkdir()
    (cas.base / "dir" / "a.txt").write_text("a")
    (cas.base / "dirlink").symlink_to("dir")
    cas.ok("snapshot", "link.txt", "-e", "file")
    cas.ok("snapshot", "dirlink", "-e", "dir")
    assert [(r["path"], r["type"]) for r in json.loads(cas.ok("--json", "ls", "file"))] == [("link.txt", "file")]
    assert _content(cas, "file", "link.txt") == b"through the link"
    assert [r["path"] for r in json.loads(cas.ok("--json", "ls", "dir"))] == ["a.txt"]
