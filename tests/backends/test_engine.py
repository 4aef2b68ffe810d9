"""The engine over each backend: a snapshot, an incremental snapshot and a byte-exact restore.

:class:`EngineThroughBackend` is mixed into each backend's test class (``tests/test_backend_*.py``)
beside :class:`backends.testing.BackendContract`, which stays free of the engine: the contract
belongs to ``backends``, this test to ``cas``. Here it runs against the local backend.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from backends.base import Backend, Capabilities
from backends.local import LocalBackend


class EngineThroughBackend:
    """Needs a ``backend`` fixture: a fresh, empty backend."""

    def test_engine_snapshot_and_restore_through_backend(
        self, backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        from cas import Store

        tmp = Path(tmp_path)
        monkeypatch.setenv("CAS_HOME", str(tmp / "cas-home"))
        src = tmp / "project"
        (src / "pkg" / "empty").mkdir(parents=True)
        (src / "pkg" / "code.py").write_text("print('hi')\n" * 50)
        (src / "weights.bin").write_bytes(os.urandom(3 * 1024 * 1024 + 5))
        os.symlink("pkg/code.py", src / "main.py")
        os.chmod(src / "pkg" / "code.py", 0o750)
        with Store.open(backend, index=f"sqlite:///{tmp / 'index.sqlite'}", pack_size=1024 * 1024) as store:
            store.snapshot(src, "run-1")
            (src / "pkg" / "code.py").write_text("print('changed')\n")
            second = store.snapshot(src, "run-2")
            assert second.stats["new_bytes"] < 1024
            store.restore("run-2", tmp / "out")
        for rel in ("pkg/code.py", "weights.bin"):
            assert (tmp / "out" / rel).read_bytes() == (src / rel).read_bytes()
            assert os.stat(tmp / "out" / rel).st_mode == os.stat(src / rel).st_mode
            assert os.stat(tmp / "out" / rel).st_mtime_ns == os.stat(src / rel).st_mtime_ns
        assert os.readlink(tmp / "out" / "main.py") == "pkg/code.py"
        assert (tmp / "out" / "pkg" / "empty").is_dir()


class TestEngineOverLocal(EngineThroughBackend):
    @pytest.fixture
    def backend(self, tmp_path: Path) -> LocalBackend:
        return LocalBackend(tmp_path / "repo")


def test_engine_reads_remote_from_capabilities(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Retries and the chunk cache follow ``capabilities.remote``, not the backend's URL."""
    from cas import Store

    monkeypatch.setenv("CAS_HOME", str(tmp_path / "cas-home"))
    monkeypatch.delenv("CAS_CHUNK_CACHE", raising=False)
    index = f"sqlite:///{tmp_path / 'index.sqlite'}"
    with Store.open(str(tmp_path / "repo"), index=index) as store:
        assert isinstance(store.repo.backend, LocalBackend)  # opened by URL, not wrapped in retries
        assert store.repo.chunk_cache is None

    class FarAway(LocalBackend):
        capabilities = Capabilities(remote=True)

    with Store.open(FarAway(tmp_path / "repo"), index=index) as store:
        assert store.repo.chunk_cache is not None
