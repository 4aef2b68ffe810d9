"""The cas fsspec filesystem through fsspec's own calls and real consumers (pandas, pyarrow, numpy).

fsspec's abstract tests that only read from the filesystem under test (``AbstractGetTests``: get
into a local directory) run against cas, their scenarios stored as snapshots; one of them
(``test_get_directory_recursive``) builds its source with writes to the filesystem under test and
is skipped. The copy, put, pipe and open suites write to the filesystem under test, which cas
refuses: ``test_every_write_is_refused`` checks that each of those writes raises the read-only
error instead.
"""

from __future__ import annotations

import errno
import itertools
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fsspec.implementations.local import LocalFileSystem
from fsspec.tests.abstract import AbstractFixtures
from fsspec.tests.abstract.get import AbstractGetTests

from cas import Store
from cas.errors import ReadError
from cas.filesystem import CasFileSystem, ReadOnlyError
from cas.format.keys import pack_key

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, str]]:
    monkeypatch.setenv("CAS_HOME", str(tmp_path / "home"))
    url, index = str(tmp_path / "repo"), f"sqlite:///{tmp_path / 'index.sqlite'}"
    Store.open(url, index=index, chunk_min=64, chunk_avg=256, chunk_max=1024).close()
    yield url, index
    CasFileSystem.clear_instance_cache()


@pytest.fixture
def project(tmp_path: Path) -> Path:
    src = tmp_path / "project"
    (src / "src").mkdir(parents=True)
    (src / "data").mkdir()
    (src / "empty").mkdir()
    (src / "src" / "train.py").write_text("print('train')\n" * 50)
    (src / "data" / "metrics.csv").write_text("step,loss\n" + "".join(f"{i},{1 / (i + 1):.6f}\n" for i in range(500)))
    pq.write_table(pa.table({"step": list(range(300)), "name": [f"n{i}" for i in range(300)]}),
                   src / "data" / "table.parquet")
    np.save(src / "data" / "weights.npy", np.arange(10_000, dtype=np.float32).reshape(100, 100))
    os.symlink("src/train.py", src / "main.py")
    os.chmod(src / "src" / "train.py", 0o750)
    return src


def snapshot(repo: tuple[str, str], path: Path, execution_id: str) -> None:
    with Store.open(repo[0], index=repo[1]) as s:
        s.snapshot(path, execution_id)


@pytest.fixture
def fs(repo: tuple[str, str], project: Path) -> CasFileSystem:
    snapshot(repo, project, "run-42")
    return fsspec.filesystem("cas", repo=repo[0], index=repo[1])


@pytest.fixture(autouse=True)
def _registered() -> None:
    """pandas and pyarrow reach the filesystem through fsspec's registry; installing cas fills it
    from the entry point (checked by test_the_entry_point_registers_cas_with_fsspec)."""
    if "cas" not in fsspec.registry:
        fsspec.register_implementation("cas", CasFileSystem)


def test_the_entry_point_registers_cas_with_fsspec(tmp_path: Path, repo: tuple[str, str], project: Path) -> None:
    """The ``fsspec.specs`` entry point of pyproject.toml, as installed metadata, makes a fresh
    Python's ``fsspec.filesystem("cas")`` and ``fsspec.open("cas://...")`` find cas."""
    declared = _entry_points("fsspec.specs")
    assert declared == {"cas": "cas.filesystem:CasFileSystem"}
    dist = tmp_path / "meta" / "cas_entry_point_check-0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: cas-entry-point-check\nVersion: 0\n")
    (dist / "entry_points.txt").write_text("[fsspec.specs]\n" + "".join(f"{k} = {v}\n" for k, v in declared.items()))
    snapshot(repo, project, "run-42")
    code = (
        "import fsspec, json, sys\n"
        "fs = fsspec.filesystem('cas', repo=sys.argv[1], index=sys.argv[2])\n"
        "with fsspec.open('cas://run-42/src/train.py', 'rt', repo=sys.argv[1], index=sys.argv[2]) as f:\n"
        "    text = f.read()\n"
        "print(json.dumps([type(fs).__module__, fs.ls('', detail=False), text[:6]]))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "meta"), str(ROOT)])}
    out = subprocess.run([sys.executable, "-c", code, *repo], capture_output=True, text=True, env=env, check=False)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == ["cas.filesystem", ["run-42"], "print("]


def _entry_points(group: str) -> dict[str, str]:
    """The ``[project.entry-points."GROUP"]`` table of pyproject.toml (no TOML parser before 3.11)."""
    lines = (ROOT / "pyproject.toml").read_text().splitlines()
    start = lines.index(f'[project.entry-points."{group}"]') + 1
    out = {}
    for line in itertools.takewhile(lambda text: not text.startswith("["), lines[start:]):
        if "=" in line:
            key, value = (part.strip() for part in line.split("=", 1))
            out[key] = value.strip('"')
    return out


def test_defaults_come_from_cas_repo_and_cas_index(repo: tuple[str, str], project: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    snapshot(repo, project, "run-42")
    monkeypatch.setenv("CAS_REPO", repo[0])
    monkeypatch.setenv("CAS_INDEX", repo[1])
    with fsspec.open("cas://run-42/src/train.py", "rb") as f:
        assert f.read(5) == b"print"


def test_listing_info_and_walking(fs: CasFileSystem, project: Path) -> None:
    assert fs.ls("", detail=False) == ["run-42"]
    assert fs.ls("cas://run-42", detail=False) == [
        "run-42/data", "run-42/empty", "run-42/main.py", "run-42/src"]
    info = fs.info("run-42/src/train.py")
    assert info["type"] == "file" and info["size"] == (project / "src" / "train.py").stat().st_size
    assert info["mode"] == 0o750
    assert info["mtime"] == pytest.approx((project / "src" / "train.py").stat().st_mtime, abs=1e-6)
    link = fs.info("run-42/main.py")
    assert link["islink"] and link["destination"] == "src/train.py" and link["type"] == "other"
    assert fs.info("run-42/empty")["type"] == "directory"
    assert fs.isdir("run-42/data") and fs.isfile("run-42/data/metrics.csv") and not fs.exists("run-42/nope")
    assert fs.ls("run-42/src/train.py", detail=False) == ["run-42/src/train.py"]

    files = {p.relative_to(project).as_posix() for p in project.rglob("*") if p.is_file() or p.is_symlink()}
    assert set(fs.find("run-42")) == {f"run-42/{p}" for p in files}
    assert fs.glob("run-42/**/*.py") == ["run-42/main.py", "run-42/src/train.py"]
    assert fs.glob("run-42/data/*.csv") == ["run-42/data/metrics.csv"]
    walked = {d: (sorted(dirs), sorted(names)) for d, dirs, names in fs.walk("run-42")}
    assert walked["run-42"] == (["data", "empty", "src"], ["main.py"])
    assert walked["run-42/empty"] == ([], [])
    sizes = {f"run-42/{p}": (project / p).lstat().st_size for p in files}
    assert fs.du("run-42", total=False) == sizes
    assert fs.du("run-42") == sum(sizes.values())


def test_cat_file_ranges_and_seekable_files(fs: CasFileSystem, project: Path) -> None:
    data = (project / "data" / "metrics.csv").read_bytes()
    assert fs.cat_file("run-42/data/metrics.csv") == data
    assert fs.cat_file("run-42/data/metrics.csv", 100, 400) == data[100:400]
    assert fs.cat_file("run-42/data/metrics.csv", -50) == data[-50:]
    assert fs.cat_file("run-42/data/metrics.csv", 10, -10) == data[10:-10]
    assert fs.cat(["run-42/src/train.py", "run-42/data/metrics.csv"])["run-42/data/metrics.csv"] == data
    with fs.open("run-42/data/metrics.csv") as f:
        assert f.seekable() and f.size == len(data)
        f.seek(777)
        assert f.read(33) == data[777:810]
        f.seek(-20, os.SEEK_END)
        assert f.read() == data[-20:]
        f.seek(0)
        assert b"".join(iter(lambda: f.read(97), b"")) == data
    assert fs.read_block("run-42/data/metrics.csv", 200, 100, delimiter=b"\n").endswith(b"\n")
    with pytest.raises(IsADirectoryError):
        fs.cat_file("run-42/data")
    with pytest.raises(FileNotFoundError):
        fs.cat_file("run-42/data/missing.csv")
    with pytest.raises(FileNotFoundError):
        fs.info("run-42/../run-42/src")


def test_executions_limits_what_is_shown(repo: tuple[str, str], project: Path) -> None:
    snapshot(repo, project, "run-1")
    snapshot(repo, project, "run-2")
    fs = CasFileSystem(repo=repo[0], index=repo[1], executions=["run-2"], skip_instance_cache=True)
    assert fs.ls("", detail=False) == ["run-2"]
    assert not fs.exists("run-1/src/train.py") and fs.exists("run-2/src/train.py")
    with pytest.raises(FileNotFoundError):
        CasFileSystem(repo=repo[0], index=repo[1], executions=["run-9"], skip_instance_cache=True)


def test_checksum_and_ukey_follow_the_content(repo: tuple[str, str], project: Path) -> None:
    snapshot(repo, project, "run-1")
    (project / "data" / "metrics.csv").write_text("step,loss\n0,1\n")
    snapshot(repo, project, "run-2")
    fs = fsspec.filesystem("cas", repo=repo[0], index=repo[1])
    assert fs.ukey("run-1/src/train.py") == fs.ukey("run-2/src/train.py")
    assert fs.checksum("run-1/src/train.py") == fs.checksum("run-2/src/train.py")
    assert fs.checksum("run-1/data/metrics.csv") != fs.checksum("run-2/data/metrics.csv")
    assert fs.ukey("run-1/src") == fs.ukey("run-2/src") and fs.ukey("run-1/data") != fs.ukey("run-2/data")


def test_real_consumers_read_files_inside_a_snapshot(fs: CasFileSystem, repo: tuple[str, str], project: Path) -> None:
    options = {"repo": repo[0], "index": repo[1]}
    frame = pd.read_csv("cas://run-42/data/metrics.csv", storage_options=options)
    pd.testing.assert_frame_equal(frame, pd.read_csv(project / "data" / "metrics.csv"))

    table = pq.read_table("run-42/data/table.parquet", filesystem=fs)
    assert table.equals(pq.read_table(project / "data" / "table.parquet"))
    assert pd.read_parquet("cas://run-42/data/table.parquet", storage_options=options).shape == (300, 2)

    with fs.open("run-42/data/weights.npy") as f:
        weights = np.load(f)
    np.testing.assert_array_equal(weights, np.load(project / "data" / "weights.npy"))


def test_a_corrupt_chunk_is_an_io_error_naming_the_file(fs: CasFileSystem, repo: tuple[str, str]) -> None:
    entry = fs.view.open(fs.view.lookup("run-42/data/metrics.csv")).entry  # with its chunk list
    assert len(entry.chunks) > 3
    loc = fs.store.repo.locate([entry.chunks[-1]])[entry.chunks[-1]]
    pack = Path(repo[0]) / pack_key(loc.pack_id)
    raw = bytearray(pack.read_bytes())
    raw[loc.offset] ^= 0x55
    pack.write_bytes(bytes(raw))
    with pytest.raises(ReadError, match="run-42/data/metrics.csv") as info:
        fs.cat_file("run-42/data/metrics.csv")
    assert isinstance(info.value, OSError) and info.value.errno == errno.EIO
    with pytest.raises(OSError, match="metrics.csv"):
        pd.read_csv("cas://run-42/data/metrics.csv", storage_options={"repo": repo[0], "index": repo[1]})
    assert fs.cat_file("run-42/data/metrics.csv", 0, 10) == b"step,loss\n"  # the chunks that are intact


@pytest.mark.parametrize("write", [
    lambda fs: fs.open("run-42/new.txt", "wb"),
    lambda fs: fs.open("run-42/src/train.py", "ab"),
    lambda fs: fs.pipe_file("run-42/new.txt", b"x"),
    lambda fs: fs.pipe("run-42/new.txt", b"x"),
    lambda fs: fs.touch("run-42/new.txt"),
    lambda fs: fs.mkdir("run-42/newdir"),
    lambda fs: fs.makedirs("run-42/a/b", exist_ok=True),
    lambda fs: fs.rm("run-42/src/train.py"),
    lambda fs: fs.rm_file("run-42/src/train.py"),
    lambda fs: fs.rmdir("run-42/empty"),
    lambda fs: fs.cp("run-42/src/train.py", "run-42/copy.py"),
    lambda fs: fs.mv("run-42/src/train.py", "run-42/moved.py"),
    lambda fs: fs.put(__file__, "run-42/put.py"),
])
def test_every_write_is_refused(fs: CasFileSystem, write) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ReadOnlyError) as info:
        write(fs)
    assert isinstance(info.value, NotImplementedError) and info.value.errno == errno.EROFS
    assert not fs.exists("run-42/new.txt") and fs.isfile("run-42/src/train.py")


_scenarios = itertools.count()


class TestCasGet(AbstractFixtures, AbstractGetTests):
    """fsspec's ``get`` suite: copy files and trees out of cas into a local directory. Each scenario
    is built on local disk by fsspec's own scenario code and stored as a snapshot."""

    @pytest.fixture
    def fs(self, repo: tuple[str, str]) -> CasFileSystem:  # type: ignore[override]
        return CasFileSystem(repo=repo[0], index=repo[1])

    @pytest.fixture
    def fs_join(self):  # type: ignore[no-untyped-def]
        return lambda *parts: "/".join(p.rstrip("/") for p in parts)

    @pytest.fixture
    def fs_path(self) -> str:
        return ""

    def _stored(self, fs: CasFileSystem, build, tmp_path: Path) -> str:  # type: ignore[no-untyped-def]
        execution = f"scenario-{next(_scenarios)}"
        stage = tmp_path / execution
        stage.mkdir()
        build(LocalFileSystem(auto_mkdir=True), os.path.join, str(stage))
        fs.store.snapshot(stage, execution)
        return f"{execution}/source"

    @pytest.fixture
    def fs_bulk_operations_scenario_0(self, fs, tmp_path):  # type: ignore[no-untyped-def]
        return self._stored(fs, self._bulk_operations_scenario_0, tmp_path)

    @pytest.fixture
    def fs_glob_edge_cases_files(self, fs, tmp_path):  # type: ignore[no-untyped-def]
        return self._stored(fs, self._glob_edge_cases_files, tmp_path)

    @pytest.fixture
    def fs_dir_and_file_with_same_name_prefix(self, fs, tmp_path):  # type: ignore[no-untyped-def]
        return self._stored(fs, self._dir_and_file_with_same_name_prefix, tmp_path)

    @pytest.fixture
    def fs_10_files_with_hashed_names(self, fs, tmp_path):  # type: ignore[no-untyped-def]
        return self._stored(fs, self._10_files_with_hashed_names, tmp_path)

    @pytest.mark.skip(reason="builds its source with fs.mkdir and fs.touch on the filesystem under test, "
                      "which is read-only (the writes are checked by test_every_write_is_refused)")
    def test_get_directory_recursive(self) -> None:  # type: ignore[override]
        pass

    @pytest.fixture
    def local_path(self, tmp_path: Path) -> str:
        out = tmp_path / "local"
        out.mkdir()
        return str(out)
