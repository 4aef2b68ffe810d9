"""AIFlow blob managers that store into cas, for AIFlow's own Python (3.7 and up).

cas needs Python >= 3.10 and SQLAlchemy 2; AIFlow 0.3 needs Python 3.7 and SQLAlchemy 1.3, so cas
cannot be imported where AIFlow runs. These classes can: they are pure Python with no dependencies,
and each call runs the ``cas`` executable of a separate environment (``cas --json aiflow <command>``)
which builds the same-named class of ``cas.aiflow`` from the same ``blob_manager_config`` and makes
the call there. So the guarantees are cas.aiflow's: content-addressed URIs, the caller's file never
moved or changed, downloads verified and renamed into place only when whole, one fetch for
concurrent downloads of a host, nothing left in ``local_dir`` but the result.

``blob_manager_class: cas_aiflow_bridge.<Name>`` with ``LocalBlobManager``, ``OssBlobManager``,
``HDFSBlobManager``, ``S3BlobManager`` (AIFlow's own config keys) or ``CasBlobManager`` (``repo``).
One more key, ``cas_executable``: the path of ``cas`` (or of a script running it); default
``$CAS_EXECUTABLE``, else ``cas`` on ``PATH``. The config travels to cas on stdin, never on its
command line. ``PYTHONPATH`` and ``PYTHONHOME`` belong to AIFlow's Python and are not passed on.

Errors reach AIFlow as exceptions carrying cas's one-line message: :class:`CasNotFound` (also a
``FileNotFoundError``), :class:`CasConfigurationError` (also a ``ValueError``, raised at
construction for a missing key), :class:`CasIntegrityError`, :class:`CasAlreadyExists`, and
:class:`CasNotInstalled` for a missing, foreign or too old ``cas``, saying how to install it.
"""

import importlib
import json
import logging
import os
import shutil
import subprocess
from typing import Any, Dict, List, Optional  # noqa: F401 - used by the type comments (ruff reads none)

__version__ = "0.1.0"

PROTOCOL = 1
"""The ``cas aiflow`` protocol this bridge speaks (``cas.aiflow.cli.PROTOCOL``)."""

INSTALL_HINT = (
    "install cas in its own Python >= 3.10 environment "
    "(python3.11 -m venv /opt/cas && /opt/cas/bin/pip install 'cas-store[all]') "
    "and set cas_executable: /opt/cas/bin/cas in blob_manager_config, or $CAS_EXECUTABLE"
)

_INTERFACES = (
    "ai_flow.plugin_interface.blob_manager_interface",  # AIFlow 0.2 / 0.3
    "ai_flow.blob_manager.blob_manager_interface",  # ai-flow-nightly (2022-2023)
)


def _aiflow_base():  # type: () -> Any
    """AIFlow's ``BlobManager`` from whichever interface module is importable, else None."""
    for name in _INTERFACES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name is not None and name.startswith(exc.name):
                continue  # this AIFlow has no such module (or there is no AIFlow): try the next
            raise  # AIFlow is there but broken: say so rather than hide it
        return module.BlobManager
    return None


_AIFlowBlobManager = _aiflow_base()
_Base = _AIFlowBlobManager if _AIFlowBlobManager is not None else object  # type: Any


class CasError(Exception):
    """A cas call failed; the message is cas's one line."""


class CasNotInstalled(CasError):
    """No usable ``cas`` executable: missing, not cas, or too old for this bridge."""


class CasConfigurationError(CasError, ValueError):
    """A bad ``blob_manager_config`` or argument (a missing key, a URI not under this root...)."""


class CasNotFound(CasError, FileNotFoundError):
    """Nothing stored under the URI, or no such local file."""


class CasIntegrityError(CasError):
    """Stored data does not match its hashes; nothing was written under the final name."""


class CasAlreadyExists(CasError, FileExistsError):
    """A name that must not be overwritten is taken."""


_ERRORS = {
    "NotFound": CasNotFound,
    "ConfigurationError": CasConfigurationError,
    "IntegrityError": CasIntegrityError,
    "AlreadyExists": CasAlreadyExists,
}


def find_cas_executable(configured=None):  # type: (Optional[str]) -> str
    """``cas_executable`` if given, else ``$CAS_EXECUTABLE``, else ``cas`` on ``PATH``."""
    for value, origin in ((configured, "cas_executable"), (os.environ.get("CAS_EXECUTABLE"), "$CAS_EXECUTABLE")):
        if value:
            path = os.path.expanduser(str(value))
            if os.sep not in path:
                found = shutil.which(path)
                if found is None:
                    raise CasNotInstalled(f"{origin} {path!r} is not on PATH; {INSTALL_HINT}")
                return found
            if not (os.path.isfile(path) and os.access(path, os.X_OK)):
                raise CasNotInstalled(f"{origin} {path} is not an executable file; {INSTALL_HINT}")
            return path
    found = shutil.which("cas")
    if found is None:
        raise CasNotInstalled("no cas executable: 'cas' is not on PATH; " + INSTALL_HINT)
    return found


class CasBlobManager(_Base):
    """An AIFlow blob manager over any cas repository (``repo``, ``backend_options``, ``index_url``).

    Every class takes ``cas_executable`` besides the keys of its ``cas.aiflow`` namesake. The
    configuration is checked by cas at construction, which also fixes :attr:`root_dir` (the root
    every URI starts with). :attr:`last_result` holds cas's answer to the latest call (e.g.
    ``new_bytes`` of an upload, ``fetched`` of a download).
    """

    cas_manager = "CasBlobManager"

    def __init__(self, config):  # type: (Dict[str, Any]) -> None
        if not isinstance(config, dict):
            raise CasConfigurationError(
                f"{type(self).__name__}: blob_manager_config must be a mapping, got {type(config).__name__}"
            )
        config = dict(config)
        if _AIFlowBlobManager is not None:
            super().__init__(config)  # sets config, root_dir and the logger as AIFlow's base does
        else:
            self.config = config
            self.root_dir = config.get("root_directory")
            self._log = logging.getLogger(type(self).__module__ + "." + type(self).__name__)
        self.cas_executable = find_cas_executable(config.get("cas_executable"))
        self._cas_config = {k: v for k, v in config.items() if k != "cas_executable"}
        try:
            self._config_json = json.dumps(self._cas_config)
        except (TypeError, ValueError) as exc:
            raise CasConfigurationError(f"{type(self).__name__}: blob_manager_config is not plain data: {exc}")
        self.last_result = None  # type: Optional[Dict[str, Any]]
        info = self._call("check", [])
        if info.get("protocol") != PROTOCOL:
            raise CasNotInstalled(
                "{} speaks cas aiflow protocol {}, this cas-aiflow-bridge {}: install matching versions "
                "(pip install -U cas-store beside cas, pip install -U cas-aiflow-bridge beside AIFlow)".format(
                    self.cas_executable, info.get("protocol"), PROTOCOL
                )
            )
        self.cas_version = str(info.get("cas_version"))
        self.root_dir = info["root_dir"]

    @property
    def log(self):  # type: () -> logging.Logger
        return self._log

    # -- AIFlow 0.3 / nightly interface ---------------------------------------------------------

    def upload(self, local_file_path):  # type: (str) -> str
        """Store a copy of the file by content; return ``<root>/cas/file-<BLAKE3>/<basename>``."""
        result = self._call("upload", [os.fspath(local_file_path)])
        self._log.info("uploaded %s as %s (%s new bytes)", local_file_path, result["uri"], result.get("new_bytes"))
        return result["uri"]

    def download(self, remote_file_path, local_dir=None):  # type: (str, Optional[str]) -> str
        """Fetch a URI into ``local_dir``, verified; return ``local_dir/<basename>``."""
        args = [str(remote_file_path)]
        if local_dir is not None:
            args.append(os.path.abspath(os.fspath(local_dir)))
        return self._call("download", args)["path"]

    # -- AIFlow 0.2 interface -------------------------------------------------------------------

    def upload_project(self, workflow_snapshot_id, project_path):  # type: (str, str) -> str
        """Snapshot the project directory as a tree; return its URI."""
        return self._call("upload-project", [str(workflow_snapshot_id), os.fspath(project_path)])["uri"]

    def download_project(self, workflow_snapshot_id, remote_path, local_path=None):
        # type: (str, str, Optional[str]) -> str
        """Restore a project to ``<local_path>/workflow_<id>_project/<dir name>``; return that path."""
        args = [str(workflow_snapshot_id), str(remote_path)]
        if local_path is not None:
            args.append(os.path.abspath(os.fspath(local_path)))
        return self._call("download-project", args)["path"]

    def cleanup_project(self, workflow_snapshot_id, remote_path):  # type: (str, str) -> None
        """Nothing to do: stored snapshots are immutable (as in ``cas.aiflow``)."""

    # -- the cas call ---------------------------------------------------------------------------

    def _call(self, command, args):  # type: (str, List[str]) -> Dict[str, Any]
        argv = [self.cas_executable, "--json", "aiflow", command, "--manager", self.cas_manager,
                "--config", "-"] + (["--"] + list(args) if args else [])  # "--": a path may start with "-"
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
        try:
            proc = subprocess.run(argv, input=self._config_json, capture_output=True, text=True, env=env,
                                  check=False)  # the exit status is read below
        except OSError as exc:
            raise CasNotInstalled(f"cannot run {self.cas_executable}: {exc.strerror or exc}; {INSTALL_HINT}")
        answer = _last_json_object(proc.stdout)
        if proc.returncode == 0 and answer is not None and "error" not in answer:
            self.last_result = answer
            return answer
        if answer is not None and isinstance(answer.get("error"), dict):
            error = answer["error"]
            raise _ERRORS.get(str(error.get("type")), CasError)(str(error.get("message")))
        stderr = proc.stderr or ""
        if proc.returncode == 2 and "invalid choice: 'aiflow'" in stderr:
            raise CasNotInstalled(
                f"{self.cas_executable} is too old for cas-aiflow-bridge (it has no 'cas aiflow' commands); "
                f"upgrade it with pip install -U cas-store in its environment, or {INSTALL_HINT}"
            )
        line = _cas_error_line(stderr)
        if line is None:
            raise CasNotInstalled(
                f"{self.cas_executable} did not answer as cas does (exit status {proc.returncode}, "
                f"no JSON from 'cas aiflow {command}'); {INSTALL_HINT}"
            )
        raise CasError(line)


class LocalBlobManager(CasBlobManager):
    """Drop-in for AIFlow's ``LocalBlobManager``: ``root_directory`` (required), a local path."""

    cas_manager = "LocalBlobManager"


class OssBlobManager(CasBlobManager):
    """Drop-in for AIFlow's ``OssBlobManager``: ``bucket``, ``root_directory``, ``access_key_id``,
    ``access_key_secret``, ``endpoint`` (the last three also from ``OSS_*`` in cas's environment)."""

    cas_manager = "OssBlobManager"


class HDFSBlobManager(CasBlobManager):
    """Drop-in for AIFlow's ``HDFSBlobManager``: ``hdfs_url``, ``root_directory``, ``hdfs_user``."""

    cas_manager = "HDFSBlobManager"


class S3BlobManager(CasBlobManager):
    """Drop-in for AIFlow's ``S3BlobManager``: ``bucket_name`` and AIFlow 0.3's boto3 keys."""

    cas_manager = "S3BlobManager"


def _last_json_object(stdout):  # type: (str) -> Optional[Dict[str, Any]]
    for line in reversed((stdout or "").strip().splitlines()):
        try:
            value = json.loads(line)
        except ValueError:
            return None
        return value if isinstance(value, dict) else None
    return None


def _cas_error_line(stderr):  # type: (str) -> Optional[str]
    for line in reversed(stderr.splitlines()):
        if line.startswith("cas: error: "):
            return line[len("cas: error: "):].strip()
        if line.startswith("cas: ") and "see 'cas --help'" in line:
            return line[len("cas: "):].strip()
    return None


__all__ = [
    "INSTALL_HINT",
    "PROTOCOL",
    "CasAlreadyExists",
    "CasBlobManager",
    "CasConfigurationError",
    "CasError",
    "CasIntegrityError",
    "CasNotFound",
    "CasNotInstalled",
    "HDFSBlobManager",
    "LocalBlobManager",
    "OssBlobManager",
    "S3BlobManager",
    "find_cas_executable",
]
