"""AIFlow download locks live under $CAS_HOME, never in the caller's ``local_dir``."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from cas.aiflow import download as download_protocol


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CAS_HOME", str(tmp_path / "cas-home"))
    for name in ("CAS_INDEX", "CAS_REPO"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path / "cas-home"


def test_a_download_takes_its_lock_under_cas_home(home: Path, tmp_path: Path) -> None:
    from cas.aiflow import CasBlobManager

    manager = CasBlobManager({"repo": str(tmp_path / "repo")})
    src = tmp_path / "model.bin"
    src.write_bytes(os.urandom(200_000))
    ref = manager.parse_uri(manager.upload(str(src)))
    out = tmp_path / "out"
    out.mkdir()
    seen: dict[str, list[str]] = {}

    def store():  # type: ignore[no-untyped-def]
        # Called under the lock, only when a fetch is needed: what exists while it is held.
        seen["locks"] = os.listdir(home / "locks")
        seen["local_dir"] = os.listdir(out)
        return manager.store

    path, fetched = download_protocol.download(ref, str(out), store)
    assert fetched and Path(path).read_bytes() == src.read_bytes()
    assert len(seen["locks"]) == 1 and seen["locks"][0].startswith("download-")
    assert seen["local_dir"] == []  # nothing of ours in the caller's directory while locked
    assert os.listdir(out) == ["model.bin"]  # and only the result afterwards
    assert os.listdir(home / "locks") == []  # the holder removed its lock file
    manager.close()


def test_one_directory_by_two_paths_shares_a_lock_and_other_names_do_not_wait(home: Path, tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    os.symlink(real, tmp_path / "alias")
    events: list[str] = []
    other_name_done = threading.Event()

    def first() -> None:
        with download_protocol.download_lock(str(real), "x"):
            events.append("first holds x")
            started.set()
            assert other_name_done.wait(30)  # "y" was taken while "x" is held
            events.append("first releases x")

    def second() -> None:
        started.wait(30)
        with download_protocol.download_lock(str(tmp_path / "alias"), "x"):
            events.append("second holds x")

    def other() -> None:
        started.wait(30)
        with download_protocol.download_lock(str(real), "y"):
            events.append("other holds y")
        other_name_done.set()

    started = threading.Event()
    threads = [threading.Thread(target=f) for f in (first, second, other)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)
    assert events.index("other holds y") < events.index("first releases x") < events.index("second holds x")
    assert os.listdir(home / "locks") == [] and os.listdir(real) == []
