"""The repository config records its chunker; repositories made before it keep cutting plainly."""

from __future__ import annotations

import io
import json
import random
import zipfile
from pathlib import Path

import pytest

from backends.local import LocalBackend
from cas import Store
from cas.errors import ConfigurationError, IntegrityError
from cas.format.chunking import Chunker
from cas.format.config import ChunkerName, RepoConfig
from cas.format.hashing import hexdigest
from tests.format.makers import make_zip


def test_a_new_repository_cuts_archives_at_their_members() -> None:
    assert RepoConfig.new().chunker == ChunkerName.ARCHIVES.value
    assert RepoConfig.from_json(RepoConfig.new().to_json()).chunker == ChunkerName.ARCHIVES.value


def test_a_config_written_before_the_field_means_plain_fastcdc() -> None:
    raw = json.loads(RepoConfig.new().to_json())
    del raw["chunker"]
    assert RepoConfig.from_json(json.dumps(raw).encode()).chunker == ChunkerName.FASTCDC.value


@pytest.mark.parametrize("value", ["fastcdc-archives-9", "", 3])
def test_an_unknown_chunker_is_refused(value: object) -> None:
    raw = json.loads(RepoConfig.new().to_json())
    raw["chunker"] = value
    with pytest.raises(IntegrityError, match="chunker"):
        RepoConfig.from_json(json.dumps(raw).encode())
    with pytest.raises(ConfigurationError, match="chunker"):
        RepoConfig.new(chunker="nope")


def _project_zip(path: Path) -> bytes:
    rng = random.Random(2)
    members = [(f"proj/m{i:03d}.py", rng.randbytes(rng.randrange(100, 40_000))) for i in range(40)]
    data = make_zip(members, zipfile.ZIP_STORED)
    path.mkdir()
    (path / "project.zip").write_bytes(data)
    return data


def test_an_old_repository_keeps_its_cuts_unless_told(tmp_path: Path, cas_home: Path) -> None:
    legacy = json.loads(RepoConfig.new().to_json())
    del legacy["chunker"]
    backend = LocalBackend(tmp_path / "repo")
    backend.put("config", json.dumps(legacy).encode(), overwrite=False)
    data = _project_zip(tmp_path / "src")
    config = RepoConfig.from_json(json.dumps(legacy).encode())
    expected = {
        name: [bytes(p) for p in Chunker(config, chunker).chunks(io.BytesIO(data), len(data))]
        for name, chunker in (("plain", ChunkerName.FASTCDC), ("archives", ChunkerName.ARCHIVES))
    }
    assert expected["plain"] != expected["archives"]

    with Store.open(str(tmp_path / "repo"), index=f"sqlite:///{tmp_path / 'i.sqlite'}") as store:
        assert store.repo.config.chunker == "fastcdc"
        store.snapshot(tmp_path / "src", "old-way")
        store.snapshot(tmp_path / "src", "new-way", chunker="fastcdc-archives-1", use_files_cache=False)
        for eid, name in (("old-way", "plain"), ("new-way", "archives")):
            entry = store.entry(eid, "project.zip")
            assert entry is not None and list(entry.chunks) == [hexdigest(p) for p in expected[name]]
            assert store.open_file(eid, "project.zip").read() == data
        with pytest.raises(ConfigurationError, match="unknown chunker"):
            store.snapshot(tmp_path / "src", "bad", chunker="zstd")


def test_a_repository_can_be_created_with_plain_fastcdc(tmp_path: Path, cas_home: Path) -> None:
    with Store.open(str(tmp_path / "repo"), index=f"sqlite:///{tmp_path / 'i.sqlite'}", chunker="fastcdc") as store:
        assert store.repo.config.chunker == "fastcdc"
    with Store.open(str(tmp_path / "repo"), index=f"sqlite:///{tmp_path / 'i.sqlite'}") as store:
        assert store.repo.config.chunker == "fastcdc"


def test_cas_snapshot_chunker_option(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.test_cli import cas

    data = _project_zip(tmp_path / "src")
    repo = ["--repo", str(tmp_path / "repo")]
    cas(tmp_path, *repo, "snapshot", str(tmp_path / "src"), "-e", "plain", "--chunker", "fastcdc")
    cas(tmp_path, *repo, "snapshot", str(tmp_path / "src"), "-e", "members", "--no-files-cache")
    refused = cas(tmp_path, *repo, "snapshot", str(tmp_path / "src"), "-e", "x", "--chunker", "zstd", check=False)
    assert refused.returncode == 2 and "--chunker" in refused.stderr
    monkeypatch.setenv("CAS_HOME", str(tmp_path / "home"))  # where the command line kept its index
    monkeypatch.delenv("CAS_INDEX", raising=False)
    with Store.open(str(tmp_path / "repo"), create=False) as store:
        plain = store.entry("plain", "project.zip")
        members = store.entry("members", "project.zip")
        assert plain is not None and members is not None and plain.chunks != members.chunks
        assert store.open_file("plain", "project.zip").read() == data
