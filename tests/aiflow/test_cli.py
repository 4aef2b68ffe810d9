"""``cas aiflow ...``: the JSON protocol the cas-aiflow-bridge speaks, run as a process like the bridge does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def _cas(args: list[str], tmp_path: Path, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "CAS_HOME": str(tmp_path / "home")}
    env.pop("CAS_INDEX", None)
    env.pop("CAS_REPO", None)
    return subprocess.run([sys.executable, "-m", "cas", *args], input=stdin, capture_output=True, text=True,
                          env=env, cwd=tmp_path, check=False)  # fmt: skip


def test_check_upload_download_roundtrip(tmp_path: Path) -> None:
    config = json.dumps({"root_directory": str(tmp_path / "root")})
    base = ["--json", "aiflow"]
    check = _cas([*base, "check", "--manager", "LocalBlobManager", "--config", "-"], tmp_path, config)
    assert check.returncode == 0, check.stderr
    assert json.loads(check.stdout) == {"protocol": 1, "cas_version": json.loads(check.stdout)["cas_version"],
                                        "manager": "LocalBlobManager", "root_dir": str(tmp_path / "root")}  # fmt: skip
    src = tmp_path / "-model.bin"
    src.write_bytes(os.urandom(50_000))
    up = _cas([*base, "upload", "--manager", "LocalBlobManager", "--config", "-", "--", str(src)], tmp_path, config)
    assert up.returncode == 0, up.stderr
    answer = json.loads(up.stdout)
    assert answer["uri"].startswith(f"{tmp_path / 'root'}/cas/file-") and answer["new_bytes"] == 50_000
    out = tmp_path / "out"
    for fetched in (True, False):
        down = _cas([*base, "download", "--manager", "LocalBlobManager", "--config", config, answer["uri"], str(out)],
                    tmp_path)  # fmt: skip
        assert down.returncode == 0, down.stderr
        assert json.loads(down.stdout) == {"path": str(out / "-model.bin"), "fetched": fetched}
    assert (out / "-model.bin").read_bytes() == src.read_bytes()
    assert os.listdir(out) == ["-model.bin"]


def test_errors_are_one_line_and_json(tmp_path: Path) -> None:
    config = json.dumps({"root_directory": str(tmp_path / "root")})
    cases = [
        (["check", "--manager", "LocalBlobManager", "--config", "{}"], "ConfigurationError", "'root_directory'"),
        (["check", "--manager", "LocalBlobManager", "--config", "{bad"], "ConfigurationError", "not valid JSON"),
        (["download", "--manager", "LocalBlobManager", "--config", config, "/etc/passwd", str(tmp_path)],
         "ConfigurationError", "refusing"),
        (["download", "--manager", "LocalBlobManager", "--config", config,
          f"{tmp_path / 'root'}/cas/file-{'ab' * 32}/x.zip", str(tmp_path / "o")], "NotFound", "nothing is stored"),
        (["upload", "--manager", "LocalBlobManager", "--config", config, str(tmp_path / "nope")], "NotFound", "nope"),
    ]  # fmt: skip
    for args, kind, text in cases:
        result = _cas(["--json", "aiflow", *args], tmp_path)
        assert result.returncode == 1, result
        error = json.loads(result.stdout)["error"]
        assert error["type"] == kind and text in error["message"], error
        assert result.stderr.count("\n") == 1 and result.stderr.startswith("cas: error: "), result.stderr
    assert not (tmp_path / "o" / "x.zip").exists()
