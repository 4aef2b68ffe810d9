"""Re-submitting an AIFlow project zip with one line edited stores about the edited member (issue 13).

The project is the installed SQLAlchemy package (without ``__pycache__``), zipped as AIFlow's client
zips a project and uploaded through ``cas.aiflow.LocalBlobManager.upload`` before and after one line
is appended to ``orm/session.py``. The zips are made by AIFlow's own ``make_dir_zipfile`` (0.3.1's
and the nightly's, run in the real AIFlow environments of :mod:`tests.aiflow_envs`), and by the same
procedure in this interpreter (deflate, ``os.walk`` order, each directory as an entry).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

import cas.aiflow
from backends.local import LocalBackend
from cas.errors import ConfigurationError
from cas.format.config import RepoConfig
from tests import aiflow_envs

pytest.importorskip("sqlalchemy")

Zipper = Callable[[Path, Path], None]

_AIFLOW_ZIP_MODULE = {
    aiflow_envs.AIFLOW_031.name: "ai_flow.util.file_util.zip_file_util",
    aiflow_envs.AIFLOW_NIGHTLY.name: "ai_flow.common.util.file_util.zip_file_util",
}


def _zip_like_aiflow(project: Path, out: Path) -> None:
    rel = project.parent
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for root, _dirs, files in os.walk(project):
            zf.write(root, os.path.relpath(root, rel))
            for name in files:
                path = os.path.join(root, name)
                if os.path.isfile(path):
                    zf.write(path, os.path.join(os.path.relpath(root, rel), name))


def _changed(path: Path, member: str) -> int:
    """The member's bytes in the zip (local header to the next member) plus the central directory
    with its end record, from zipfile's own reading."""
    with zipfile.ZipFile(path) as zf:
        starts = sorted(i.header_offset for i in zf.infolist()) + [zf.start_dir]  # type: ignore[attr-defined]
        at = zf.getinfo(member).header_offset
        directory = path.stat().st_size - zf.start_dir  # type: ignore[attr-defined]
    return starts[starts.index(at) + 1] - at + directory


@pytest.fixture(scope="session")
def envs() -> dict[str, aiflow_envs.AIFlowEnv]:
    try:
        return aiflow_envs.ensure_envs()
    except aiflow_envs.EnvUnavailable as exc:
        pytest.fail(f"a real AIFlow environment could not be made: {exc}", pytrace=False)


def _aiflow_zipper(env: aiflow_envs.AIFlowEnv) -> Zipper:
    module = _AIFLOW_ZIP_MODULE[env.spec.name]

    def zip_project(project: Path, out: Path) -> None:
        code = f"import sys; from {module} import make_dir_zipfile; make_dir_zipfile(sys.argv[1], sys.argv[2])"
        subprocess.run([str(env.python), "-c", code, str(project), str(out)], check=True, timeout=300)

    return zip_project


def test_one_line_edit_of_a_zipped_project_stores_the_edited_member(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    _check_resubmission(_zip_like_aiflow, tmp_path, monkeypatch)


@pytest.mark.parametrize("env_name", sorted(_AIFLOW_ZIP_MODULE))
def test_resubmission_zipped_by_aiflows_own_code(env_name: str, envs: dict[str, aiflow_envs.AIFlowEnv],
                                                 tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _check_resubmission(_aiflow_zipper(envs[env_name]), tmp_path, monkeypatch)


def test_a_repository_from_before_cuts_members_when_the_config_says(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    legacy = json.loads(RepoConfig.new().to_json())
    del legacy["chunker"]  # written before the field existed: plain FastCDC
    LocalBackend(tmp_path / "blobs" / "cas").put("config", json.dumps(legacy).encode(), overwrite=False)
    _check_resubmission(_zip_like_aiflow, tmp_path, monkeypatch, {"chunker": "fastcdc-archives-1"})


def test_an_unknown_chunker_in_the_config_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="LocalBlobManager: unknown chunker 'zip'"):
        cas.aiflow.LocalBlobManager({"root_directory": str(tmp_path), "chunker": "zip"})


def _check_resubmission(zip_project: Zipper, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                        config: dict[str, str] | None = None) -> None:
    import sqlalchemy

    monkeypatch.setenv("CAS_HOME", str(tmp_path / "cas-home"))
    monkeypatch.delenv("CAS_INDEX", raising=False)
    project = tmp_path / "work" / "sqlalchemy"
    shutil.copytree(Path(sqlalchemy.__file__).parent, project, ignore=shutil.ignore_patterns("__pycache__"))
    zip_project(project, tmp_path / "v1.zip")
    with open(project / "orm" / "session.py", "a") as f:
        f.write("# one more line\n")
    zip_project(project, tmp_path / "v2.zip")
    manager = cas.aiflow.LocalBlobManager({"root_directory": str(tmp_path / "blobs"), **(config or {})})
    try:
        manager.upload(str(tmp_path / "v1.zip"))
        first = manager.last_snapshot
        uri = manager.upload(str(tmp_path / "v2.zip"))
        second = manager.last_snapshot
        restored = manager.download(uri, str(tmp_path / "restored"))
    finally:
        manager.close()
    assert Path(restored).read_bytes() == (tmp_path / "v2.zip").read_bytes()
    assert first is not None and second is not None
    assert first.new_bytes == (tmp_path / "v1.zip").stat().st_size
    changed = _changed(tmp_path / "v2.zip", "sqlalchemy/orm/session.py")
    # Measured 1.00x; before the archive chunker, 19-34x.
    assert changed <= second.new_bytes <= 1.1 * changed, (second.new_bytes, changed)
