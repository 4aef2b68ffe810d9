"""``cas cache``, ``cas cache prune`` and ``cas cache clear`` as a user runs them, over an S3
repository (moto) so restores go through the chunk cache."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

from tests import inprocess
from tests.servers.s3 import REGION, moto_server  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent


def _cli(env: dict[str, str], *args: str, code: int = 0) -> subprocess.CompletedProcess[str]:
    """``cas ARGS`` with exactly ``env``, through its real ``main`` in this process (tests.inprocess)."""
    status, out, err = inprocess.run_main(args, env, os.getcwd())
    proc = subprocess.CompletedProcess(list(args), status, inprocess.text(out), inprocess.text(err))
    assert proc.returncode == code, proc.stderr
    return proc


def test_cache_commands(tmp_path: Path, moto_server: Any) -> None:  # noqa: F811
    bucket = "cachecli-" + os.urandom(4).hex()
    moto_server.client().create_bucket(Bucket=bucket)
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CAS_", "AWS_"))}
    env.update(PYTHONPATH=str(ROOT), CAS_HOME=str(home), AWS_ENDPOINT_URL=moto_server.endpoint_url,
               AWS_ACCESS_KEY_ID=moto_server.access_key_id, AWS_SECRET_ACCESS_KEY=moto_server.secret_access_key,
               AWS_DEFAULT_REGION=REGION)

    # Before anything: an empty cache, and no repository needed (none is created).
    empty = json.loads(_cli(env, "--json", "cache").stdout)
    assert (empty["entries"], empty["bytes"], empty["hit_rate"], empty["files_cache_bytes"]) == (0, 0, None, 0)
    assert 0 < empty["max_bytes"] <= 10 << 30
    assert not (home / "repo").exists()

    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        (src / f"f{i}.bin").write_bytes(os.urandom(400_000))
        os.utime(src / f"f{i}.bin", ns=(1_600_000_000_000_000_000,) * 2)
    repo = ["--repo", f"s3://{bucket}/cas"]
    _cli(env, *repo, "snapshot", str(src), "-e", "run-1")
    _cli(env, *repo, "restore", "run-1", str(tmp_path / "o1"))
    first = json.loads(_cli(env, "--json", "cache").stdout)
    assert first["entries"] > 0 and first["misses"] > 0 and first["hits"] == 0
    assert first["bytes"] >= 1_200_000 and first["files_cache_bytes"] > 0
    _cli(env, *repo, "restore", "run-1", str(tmp_path / "o2"))
    second = json.loads(_cli(env, "--json", "cache").stdout)
    assert second["hits"] > 0 and second["misses"] == first["misses"] and 0 < second["hit_rate"] < 1
    text = _cli(env, "cache").stdout
    assert "hit rate" in text and "files cache" in text and "entries" in text

    # The cap from the option or CAS_CACHE_MAX, in the units people write.
    assert json.loads(_cli(env, "--json", "--cache-max", "2GiB", "cache").stdout)["max_bytes"] == 2 << 30
    assert json.loads(_cli({**env, "CAS_CACHE_MAX": "300MB"}, "--json", "cache").stdout)["max_bytes"] == 300_000_000

    pruned = json.loads(_cli(env, "--json", "cache", "prune", "--max-size", "500KiB").stdout)
    assert pruned["evicted"] > 0 and 0 < pruned["bytes"] <= 500 * 1024
    assert pruned["files_cache_expired"] == 0  # seen a moment ago; the time to live is 30 days
    expired = json.loads(_cli(env, "--json", "cache", "prune", "--files-cache-ttl", "0s").stdout)
    # The snapshot's three files, and each of the two restores' three (a restore records the files of
    # chunk_min bytes or more it creates, for a snapshot of its destination).
    assert expired["files_cache_expired"] == 3 + 2 * 3
    # A restore after pruning fetches what was evicted and is still byte-exact.
    _cli(env, *repo, "restore", "run-1", str(tmp_path / "o3"))
    for i in range(3):
        assert (tmp_path / "o3" / f"f{i}.bin").read_bytes() == (src / f"f{i}.bin").read_bytes()

    cleared = json.loads(_cli(env, "--json", "cache", "clear").stdout)
    assert cleared["removed"] > 0 and cleared["entries"] == 0 and cleared["bytes"] == 0
    assert cleared["files_caches_removed"] == 1 and cleared["files_cache_bytes"] == 0
    chunks = home / "cache" / "chunks"
    assert [p for p in chunks.rglob("*") if p.is_file() and not p.name.startswith("ledger.sqlite")] == []

    bad = _cli(env, "cache", "prune", "--max-size", "lots", code=2)
    assert "invalid size" in bad.stderr and "Traceback" not in bad.stderr


def test_prefetch_from_a_local_repository_says_there_is_no_cache(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAS_")}
    env.update(PYTHONPATH=str(ROOT), CAS_HOME=str(tmp_path / "home"))
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "f").write_text("x")
    _cli(env, "snapshot", str(tmp_path / "src"), "-e", "run-1")
    proc = _cli(env, "prefetch", "run-1", code=1)
    assert proc.stderr.startswith("cas: error: nothing to prefetch into") and len(proc.stderr.splitlines()) == 1
