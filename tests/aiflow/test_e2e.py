"""cas inside real AIFlow deployments: the cas-aiflow-bridge loaded by AIFlow's own Python and code.

The environments (pyenv's Python 3.7 with ai-flow 0.3.1, Python 3.8 with ai-flow-nightly 2023.12.31)
are built by ``tests/aiflow_envs.py``; if one cannot be built every test here FAILS, naming what
is missing. cas itself runs in this interpreter's environment, reached by the bridge through a
``cas`` executable, exactly as a deployment with two environments would.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sqlite3
import subprocess
import sys
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import aiflow_envs

REPO_ROOT = Path(__file__).resolve().parents[2]
E2E = REPO_ROOT / "tests" / "aiflow_e2e"


@pytest.fixture(scope="session")
def envs() -> dict[str, aiflow_envs.AIFlowEnv]:
    try:
        return aiflow_envs.ensure_envs()
    except aiflow_envs.EnvUnavailable as exc:
        pytest.fail(f"a real AIFlow environment could not be made: {exc}", pytrace=False)


@pytest.fixture(scope="session")
def cas_exe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ``cas`` executable of cas's own environment: this interpreter running the checkout."""
    path = tmp_path_factory.mktemp("cas-bin") / "cas"
    path.write_text(f'#!/bin/sh\nPYTHONPATH={REPO_ROOT} exec {sys.executable} -m cas "$@"\n')
    path.chmod(0o755)
    return path


@pytest.fixture
def old_cas(tmp_path: Path) -> Path:
    """Stands in for a cas release from before the ``aiflow`` commands: argparse's refusal, exit 2."""
    path = tmp_path / "old-cas"
    path.write_text(
        "#!/bin/sh\necho \"cas: argument command: invalid choice: 'aiflow' (choose from 'snapshot', 'log') "
        "(see 'cas --help')\" >&2\nexit 2\n"
    )
    path.chmod(0o755)
    return path


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "CAS_INDEX", "CAS_REPO", "CAS_EXECUTABLE")}
    env["CAS_HOME"] = str(tmp_path / "cas-home")  # one host: the client, the server and cas share it
    env["AIFLOW_HOME"] = str(tmp_path / "aiflow-home")
    return env


@pytest.mark.parametrize("env_name", ["aiflow-0.3.1", "aiflow-nightly"])
def test_bridge_contract_in_aiflow_python(
    envs: dict[str, aiflow_envs.AIFlowEnv], cas_exe: Path, old_cas: Path, tmp_path: Path, env_name: str
) -> None:
    env = envs[env_name]
    work = tmp_path / "work"
    work.mkdir()
    result = subprocess.run(
        [str(env.python), str(E2E / "bridge_contract.py"), str(work), str(cas_exe), str(old_cas)],
        capture_output=True, text=True, env=_env(tmp_path), timeout=600, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    facts = json.loads(result.stdout.strip().splitlines()[-1])
    print(f"\n{env_name}: {json.dumps(facts, indent=1)}")
    assert facts["python"].startswith(env.spec.python.rsplit(".", 1)[0])
    assert facts["concurrent_fetches"] == 1
    errors = facts["errors"]
    assert "refusing '/etc/passwd'" in errors["foreign_uri"]
    assert "nothing is stored under this URI" in errors["unknown_uri"]
    assert "'root_directory'" in errors["missing_key"]
    assert "pip install" in errors["missing_cas"] and "cas_executable" in errors["missing_cas"]
    assert "too old" in errors["old_cas"] and "pip install -U cas-store" in errors["old_cas"]


# -- AIFlow 0.3.1: real server, real client, a real project ------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def _server_031(env: aiflow_envs.AIFlowEnv, port: int, db: Path, repository: Path, proc_env: dict[str, str],
                log: Path) -> Iterator[None]:  # fmt: skip
    with open(log, "w") as err:
        proc = subprocess.Popen(
            [str(env.python), str(E2E / "server_031.py"), str(port), str(db), str(repository)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True, env=proc_env,
        )  # fmt: skip
        try:
            first: list[str] = []
            reader = threading.Thread(target=lambda: first.append(proc.stdout.readline()), daemon=True)  # type: ignore[union-attr]
            reader.start()
            reader.join(180)
            if not first or not first[0].startswith("ready"):
                raise AssertionError(f"AIFlow 0.3.1 server did not start: {log.read_text()[-2000:]}")
            yield
        finally:
            if proc.stdin is not None:
                proc.stdin.close()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def _project(path: Path, name: str, port: int, blob: dict[str, Any], payload: Path) -> Path:
    """A real AIFlow 0.3.1 project: project.yaml, one workflow of AIFlow's mock jobs, and a payload."""
    import shutil

    import yaml  # type: ignore[import-untyped]

    (path / "workflows" / "train").mkdir(parents=True)
    config = {"project_name": name, "server_uri": f"localhost:{port}", "blob": blob}
    (path / "project.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    shutil.copy(E2E / "workflow_031.py", path / "workflows" / "train" / "train.py")
    (path / "workflows" / "train" / "train.yaml").write_text("task_1:\n  job_type: mock\n")
    shutil.copytree(payload, path / "dependencies" / payload.name, ignore=shutil.ignore_patterns("__pycache__"))
    return path


def _tree(root: Path) -> dict[str, bytes | None]:
    out: dict[str, bytes | None] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            out[os.path.relpath(os.path.join(dirpath, name), root)] = None
        for name in filenames:
            full = Path(dirpath) / name
            out[str(full.relative_to(root))] = full.read_bytes()
    return out


def _bytes_under(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) if root.exists() else 0


def _snapshots(db: Path) -> list[tuple[str, str]]:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return [(str(u), str(s)) for u, s in conn.execute("SELECT uri, signature FROM workflow_snapshot ORDER BY uuid")]


def test_aiflow_031_client_and_server_upload_and_download_through_cas(
    envs: dict[str, aiflow_envs.AIFlowEnv], cas_exe: Path, tmp_path: Path
) -> None:
    env = envs["aiflow-0.3.1"]
    proc_env = _env(tmp_path)
    port = _free_port()
    db, repository = tmp_path / "aiflow.sqlite", tmp_path / "scheduler-repository"
    repository.mkdir()
    # The payload: real code of realistic shape, Airflow 2.0's sources from AIFlow's environment (16 MB).
    payload = next((env.root / "lib").glob("python3.*/site-packages/airflow"))
    managers = {
        "aiflow": {
            "blob_manager_class": "ai_flow_plugins.blob_manager_plugins.local_blob_manager.LocalBlobManager",
            "blob_manager_config": {"root_directory": str(tmp_path / "aiflow-blobs")},
        },
        "cas": {
            "blob_manager_class": "cas_aiflow_bridge.LocalBlobManager",
            "blob_manager_config": {"root_directory": str(tmp_path / "cas-blobs"), "cas_executable": str(cas_exe)},
        },
    }
    uploaded: dict[str, list[int]] = {}
    submitted: dict[str, list[tuple[str, dict[str, bytes | None]]]] = {}
    with _server_031(env, port, db, repository, proc_env, tmp_path / "server.log"):
        for label, blob in managers.items():
            root = Path(blob["blob_manager_config"]["root_directory"])
            project = _project(tmp_path / label / f"proj_{label}", f"proj_{label}", port, blob, payload)
            entry = project / "workflows" / "train" / "train.py"
            uploaded[label], submitted[label] = [], []
            for version in (1, 2):
                if version == 2:
                    with entry.open("a") as f:
                        f.write("# version 2: tuned a hyperparameter\n")
                before = _bytes_under(root)
                result = subprocess.run([str(env.python), str(entry)], capture_output=True, text=True,
                                        env=proc_env, cwd=project, timeout=300, check=False)  # fmt: skip
                assert result.returncode == 0, result.stderr[-3000:]
                assert json.loads(result.stdout.strip().splitlines()[-1]) == {
                    "namespace": f"proj_{label}", "workflow_name": "train"
                }  # fmt: skip
                uploaded[label].append(_bytes_under(root) - before)
                uri, signature = _snapshots(db)[-1]
                assert uri.startswith(str(root) + "/")
                expected = _tree(project)  # the zip was made from this, after AIFlow's translation
                # The server's submitWorkflow downloaded the zip through the manager and extracted it.
                extracted = repository / f"workflow_train_{signature}" / project.name
                assert _tree(extracted) == expected
                submitted[label].append((uri, expected))

    # Nothing of cas's in the scheduler's repository: only AIFlow's zips and their extractions.
    assert sorted(n for n in os.listdir(repository) if n.startswith(".")) == []
    cas_root = managers["cas"]["blob_manager_config"]["root_directory"]
    for uri, expected in submitted["cas"]:
        assert uri.startswith(f"{cas_root}/cas/file-") and uri.endswith(".zip")
        # Restored from cas by cas's own CLI, in its own environment, compared byte for byte.
        out = tmp_path / "restored" / uri.rsplit("/", 2)[-2]
        config = json.dumps({"root_directory": cas_root})
        got = subprocess.run([str(cas_exe), "--json", "aiflow", "download", "--manager", "LocalBlobManager",
                              "--config", config, uri, str(out)], capture_output=True, text=True,
                             env=proc_env, check=False)  # fmt: skip
        assert got.returncode == 0, got.stderr
        with zipfile.ZipFile(json.loads(got.stdout)["path"]) as zf:
            zf.extractall(out / "x")
        assert _tree(out / "x" / "proj_cas") == expected
    assert submitted["cas"][0][1] != submitted["cas"][1][1]

    a, c = uploaded["aiflow"], uploaded["cas"]
    print(
        f"\nbytes written to the blob root per submission (AIFlow 0.3.1 client -> server, same run): "
        f"AIFlow LocalBlobManager {a[0]:,} + {a[1]:,} = {sum(a):,} B; "
        f"cas_aiflow_bridge.LocalBlobManager {c[0]:,} + {c[1]:,} = {sum(c):,} B"
    )
    assert a[0] > 0 and a[1] > 0 and c[0] > 0 and c[1] > 0
    # The second zip differs from the first in one member (and AIFlow's generated/ entries): a new
    # repository cuts zips at their members (docs/FORMAT.md, Chunks), so cas stores about those
    # members, the zip's directory and the index rows, not the zip again (39 KB for a 4.8 MB zip
    # when this was written). The exact ratio to the changed bytes is tested with AIFlow's own zip
    # code in tests/aiflow/test_archive_dedup.py.
    assert c[1] * 20 < a[1]


# -- ai-flow-nightly 2023.12.31: its client upload and task-manager download code -------------------


def test_aiflow_nightly_upload_and_task_download_through_cas(
    envs: dict[str, aiflow_envs.AIFlowEnv], cas_exe: Path, tmp_path: Path
) -> None:
    import shutil

    import yaml  # type: ignore[import-untyped]

    env = envs["aiflow-nightly"]
    payload = next((envs["aiflow-0.3.1"].root / "lib").glob("python3.*/site-packages/airflow"))
    managers = {
        "aiflow": {"blob_manager_class": "ai_flow.blob_manager.impl.local_blob_manager.LocalBlobManager",
                   "blob_manager_config": {"root_directory": str(tmp_path / "aiflow-blobs")}},
        "cas": {"blob_manager_class": "cas_aiflow_bridge.LocalBlobManager",
                "blob_manager_config": {"root_directory": str(tmp_path / "cas-blobs"),
                                        "cas_executable": str(cas_exe)}},
    }  # fmt: skip
    written: dict[str, list[int]] = {}
    for label, blob in managers.items():
        home = tmp_path / label / "aiflow-home"
        home.mkdir(parents=True)
        (home / "aiflow_client.yaml").write_text(
            yaml.safe_dump({"server_address": "localhost:50051", "blob_manager": blob}, sort_keys=False)
        )
        proc_env = {**_env(tmp_path), "AIFLOW_HOME": str(home)}
        source = tmp_path / label / "src"
        source.mkdir()
        shutil.copy(E2E / "workflow_nightly.py", source / "train.py")
        artifact = source / "deps"
        shutil.copytree(payload, artifact, ignore=shutil.ignore_patterns("__pycache__"))
        root = Path(blob["blob_manager_config"]["root_directory"])
        written[label] = []
        for version in (1, 2):
            if version == 2:
                with (source / "train.py").open("a") as f:
                    f.write("# version 2: tuned a hyperparameter\n")
            before = _bytes_under(root)
            result = subprocess.run([str(env.python), str(E2E / "nightly_flow.py"), str(source / "train.py"),
                                     str(artifact)], capture_output=True, text=True, env=proc_env, timeout=300,
                                    check=False)  # fmt: skip
            assert result.returncode == 0, result.stderr[-3000:]
            out = json.loads(result.stdout.strip().splitlines()[-1])
            assert out["blob_manager"] == blob["blob_manager_class"]
            assert out["workflows"] == ["train"]
            expected = {"train.py": (source / "train.py").read_bytes(),
                        **{f"deps/{k}": v for k, v in _tree(artifact).items()}, "deps": None}  # fmt: skip
            got = {k: v for k, v in _tree(Path(out["working_dir"]) / "train").items() if "__pycache__" not in k}
            assert got == expected
            if label == "cas":
                assert out["uri"].startswith(f"{root}/cas/file-")
                written[label].append(_bytes_under(root) - before)
            else:  # AIFlow's manager moves the zip to <root>/train.zip, replacing the previous one
                written[label].append(Path(out["uri"]).stat().st_size)
    a, c = written["aiflow"], written["cas"]
    print(
        f"\nbytes written to the blob root per upload (ai-flow-nightly client upload -> task download): "
        f"AIFlow LocalBlobManager {a[0]:,} + {a[1]:,} = {sum(a):,} B; "
        f"cas_aiflow_bridge.LocalBlobManager {c[0]:,} + {c[1]:,} = {sum(c):,} B"
    )
    assert c[1] < a[1]
