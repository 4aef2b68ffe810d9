"""The AIFlow ``BlobManager`` classes: AIFlow's interface on top of a cas :class:`~cas.store.Store`.

:class:`CasBlobManager` does the work; :class:`LocalBlobManager`, :class:`OssBlobManager`,
:class:`HDFSBlobManager` and :class:`S3BlobManager` differ only in the adapter
(:mod:`cas.aiflow.config`) that turns their ``blob_manager_config`` into a repository.

When AIFlow is importable the classes subclass its ``BlobManager`` (0.3's ``upload``/``download``
and 0.2's ``upload_project``/``download_project``/``cleanup_project`` are all implemented);
otherwise this module imports nothing of AIFlow's and works the same. Which one is decided when
this module is imported.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Dict  # noqa: UP035 - AIFlow's interface spells it Dict

from backends import open_backend, redact_url
from backends.base import Backend
from cas.aiflow import download as download_protocol
from cas.aiflow.config import (
    Location,
    cas_location,
    hdfs_location,
    local_location,
    optional_str,
    oss_location,
    passphrase_source,
    s3_location,
)
from cas.aiflow.staging import stage_file, staging_dir
from cas.aiflow.uris import (
    CONTENT_NAME,
    BlobRef,
    check_name,
    file_id,
    make_uri,
    parse_uri,
    project_id,
    uri_prefix,
)
from cas.errors import AlreadyExists, ConfigurationError, IntegrityError, NotFound
from cas.format.config import ChunkerName
from cas.format.records import check_labels
from cas.ops.snapshot.filter import SnapshotFilter
from cas.repo.repository import default_home
from cas.store import Snapshot, Store

try:  # Subclass AIFlow's interface when AIFlow is installed; never require it.
    from ai_flow.plugin_interface.blob_manager_interface import BlobManager as _AIFlowBlobManager  # type: ignore[import-not-found]
except ImportError:
    _AIFlowBlobManager = None

_Base: type = _AIFlowBlobManager if _AIFlowBlobManager is not None else object


class CasBlobManager(_Base):  # type: ignore[misc,valid-type]
    """An AIFlow blob manager over any cas repository.

    ``blob_manager_config`` keys:

    * ``repo`` (required): repository URL, ``file:///path``, ``s3://bucket/prefix``,
      ``oss://bucket/prefix`` or ``hdfs://host:port/path`` (or, from Python, a
      :class:`backends.base.Backend`). URIs are ``<repo>/cas/<execution id>/<basename>``.
    * ``backend_options``: a mapping passed to :func:`backends.open_backend` (credentials, endpoint).
    * ``index_url``: the index database shared by every host, e.g. ``postgresql://...``; default
      ``$CAS_INDEX`` or a per-host SQLite file (enough when everything runs on one host).
    * ``cache_directory``: local working space (staged uploads, downloads without ``local_dir``);
      default ``$CAS_HOME/aiflow``.
    * ``chunker``: how uploads are cut into chunks (a :class:`~cas.format.config.ChunkerName`
      value); default the repository's own. ``fastcdc-archives-1`` cuts project zips at their
      members in a repository created before it existed (docs/FORMAT.md, Chunks).
    * ``password`` or ``password_file``: the passphrase of an encrypted repository (docs/SECURITY.md),
      or the first line of a file holding it; default ``$CAS_PASSWORD``. Never printed or logged.

    Instances are safe to share between threads; after a ``fork`` the child reopens its own
    connections.
    """

    _locate: ClassVar[Callable[[Mapping[str, Any], str], Location]] = staticmethod(cas_location)
    """The config adapter: checks the required keys and says where the repository is."""

    def __init__(self, config: Dict[str, Any]) -> None:  # noqa: UP006
        name = type(self).__name__
        if not isinstance(config, Mapping):
            raise ConfigurationError(
                f"{name}: blob_manager_config must be a mapping, got {type(config).__name__}"
            )
        config = dict(config)
        if _AIFlowBlobManager is not None:
            super().__init__(config)
        self.config = config
        self._log = logging.getLogger(f"{type(self).__module__}.{name}")
        location = self._locate(config, name)
        self.root_dir: str = location.uri_root
        self._uri_prefix = uri_prefix(location.uri_root)
        self._repo = location.repo
        self._options = location.options
        self._index_url = optional_str(config, "index_url", name)
        self._chunker = optional_str(config, "chunker", name)
        if self._chunker is not None and self._chunker not in {c.value for c in ChunkerName}:
            known = ", ".join(c.value for c in ChunkerName)
            raise ConfigurationError(f"{name}: unknown chunker {self._chunker!r} (known: {known})")
        self._password = passphrase_source(config, name)
        cache = optional_str(config, "cache_directory", name) or os.path.join(default_home(), "aiflow")
        self._cache_dir = os.path.abspath(os.path.expanduser(cache))
        self._lock = threading.Lock()
        self._store_pid: int | None = None
        self._store_obj: Store | None = None
        # Open the backend now so a wrong option or a missing SDK fails at construction; nothing
        # is sent over the network until the store is first used.
        self._backend = self._open_backend()
        self.last_snapshot: Snapshot | None = None
        """The snapshot written by the latest ``upload``/``upload_project`` of this instance (its stats)."""
        self.last_download_fetched: bool | None = None
        """Whether the latest ``download`` of this instance fetched (False: a verified copy was there)."""

    def _open_backend(self) -> Backend:
        if isinstance(self._repo, Backend):
            return self._repo
        return open_backend(self._repo, **self._options)

    @property
    def log(self) -> logging.Logger:
        return self._log

    @property
    def store(self) -> Store:
        """The open store (opened on first use, and again in a forked child)."""
        with self._lock:
            pid = os.getpid()
            if self._store_obj is None or self._store_pid != pid:
                if self._store_pid is not None and self._store_pid != pid:
                    # Inherited across fork: SDK sessions and database connections are not ours.
                    self._backend = self._open_backend()
                self._store_obj = Store.open(self._backend, index=self._index_url, password=self._password)
                self._store_pid = pid
            return self._store_obj

    def close(self) -> None:
        """Close the store's connections. Idempotent; the manager reopens them if used again."""
        with self._lock:
            if self._store_obj is not None and self._store_pid == os.getpid():
                self._store_obj.close()
                if not isinstance(self._repo, Backend):
                    self._backend = self._open_backend()
            self._store_obj = None
            self._store_pid = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(root={redact_url(self.root_dir)!r})"

    # -- AIFlow 0.3 interface -----------------------------------------------------------------

    def upload(self, local_file_path: str) -> str:
        """Store a copy of one file; return ``<root>/cas/file-<BLAKE3>/<basename>``.

        The caller's file is only read. Uploading the same bytes again returns the same URI and
        stores nothing new. Raises :class:`NotFound` if the file does not exist and
        :class:`ConfigurationError` if it is not a regular file.
        """
        src = os.fspath(local_file_path)
        name = check_name(os.path.basename(src), src)
        try:
            st = os.stat(src)
        except FileNotFoundError:
            raise NotFound(f"cannot upload {src}: no such file") from None
        if not stat.S_ISREG(st.st_mode):
            raise ConfigurationError(
                f"cannot upload {src}: not a regular file (use upload_project for a directory)"
            )
        with staging_dir(self._cache_dir) as work:
            staged, digest = stage_file(src, work)
            execution_id = file_id(digest)
            labels = {"aiflow.kind": "file"}
            _add_label(labels, "aiflow.name", name)
            try:
                snap = self.store.snapshot(staged, execution_id, labels=labels, use_files_cache=False,
                                           chunker=self._chunker)
            except AlreadyExists:
                # Written by another version of this code with a different tree: same bytes or bust.
                entry = self.store.entry(execution_id, CONTENT_NAME)
                if entry is None or entry.digest != digest:
                    raise IntegrityError(
                        f"execution {execution_id} does not hold the content its name says"
                    ) from None
                snap = self.store.get(execution_id)
        self.last_snapshot = snap
        uri = make_uri(self._uri_prefix, execution_id, name)
        self._log.info("uploaded %s as %s (%d new bytes)", src, uri, snap.new_bytes)
        return uri

    def download(self, remote_file_path: str, local_dir: str | None = None) -> str:
        """Fetch a URI issued by :meth:`upload` into ``local_dir``; return ``local_dir/<basename>``.

        The result appears under its final name only once complete and verified. If that path
        already holds the same bytes it is returned without fetching. Concurrent calls for one
        URI and directory on one host fetch once (see :mod:`cas.aiflow.download`). A ``project-``
        (or any tree) URI is restored as a directory. ``local_dir`` defaults to a directory under
        ``cache_directory``. Raises :class:`ConfigurationError` for a URI not under this
        manager's root.
        """
        ref = self.parse_uri(remote_file_path)
        if local_dir is None:
            local_dir = os.path.join(self._cache_dir, "downloads", ref.execution_id)
        local_dir = os.fspath(local_dir)
        os.makedirs(local_dir, exist_ok=True)
        final, fetched = download_protocol.download(ref, local_dir, lambda: self.store)
        self.last_download_fetched = fetched
        if fetched:
            self._log.info("downloaded %s to %s", ref.uri, final)
        else:
            self._log.debug("%s is already at %s", ref.uri, final)
        return final

    # -- AIFlow 0.2 interface -----------------------------------------------------------------

    def upload_project(self, workflow_snapshot_id: str, project_path: str) -> str:
        """Snapshot the project directory as a tree; return ``<root>/cas/project-<id>/<dir name>``.

        ``.casignore`` files in the project leave out what they match, with ``.gitignore`` rules
        (:mod:`cas.ops.snapshot.filter`); the snapshot's stats count what was left out.

        Files equal to ones already stored (by any earlier project or execution) are not stored
        again. Reusing a workflow snapshot ID for a different tree raises :class:`AlreadyExists`;
        for an identical tree it returns the same URI.
        """
        execution_id = project_id(workflow_snapshot_id)
        path = os.fspath(project_path)
        if not os.path.isdir(path):
            raise ConfigurationError(f"cannot upload project {path}: not a directory")
        name = check_name(os.path.basename(os.path.abspath(path)), path)
        labels = {"aiflow.kind": "project"}
        _add_label(labels, "aiflow.workflow_snapshot_id", str(workflow_snapshot_id))
        _add_label(labels, "aiflow.name", name)
        snap = self.store.snapshot(path, execution_id, labels=labels, filter=SnapshotFilter(ignore_files=True),
                                   chunker=self._chunker)
        self.last_snapshot = snap
        uri = make_uri(self._uri_prefix, execution_id, name)
        self._log.info("uploaded project %s as %s (%d new bytes)", path, uri, snap.new_bytes)
        return uri

    def download_project(
        self, workflow_snapshot_id: str, remote_path: str, local_path: str | None = None
    ) -> str:
        """Restore a project to ``<local_path>/workflow_<id>_project/<dir name>`` and return that path.

        ``local_path`` defaults to ``cache_directory/projects``. A completed restore is reused;
        concurrent calls on one host restore once.
        """
        ref = self.parse_uri(remote_path)
        base = os.fspath(local_path) if local_path is not None else os.path.join(self._cache_dir, "projects")
        wsid = str(workflow_snapshot_id)
        if ref.execution_id != project_id(wsid):
            self._log.warning(
                "%s was not uploaded for workflow snapshot %s; restoring it anyway", ref.uri, wsid
            )
        return self.download(ref.uri, os.path.join(base, f"workflow_{wsid}_project"))

    def cleanup_project(self, workflow_snapshot_id: str, remote_path: str) -> None:
        """Nothing to do: stored snapshots are immutable, and a restored project directory may be
        in use by other workers on this host, so it is left for the caller to remove."""

    # -- URIs ---------------------------------------------------------------------------------

    def parse_uri(self, uri: str) -> BlobRef:
        """The execution and basename a URI names; :class:`ConfigurationError` unless it is ours."""
        return parse_uri(uri, self._uri_prefix, type(self).__name__)


class LocalBlobManager(CasBlobManager):
    """Drop-in for AIFlow's ``LocalBlobManager``: ``root_directory`` (required), a local path.

    The repository is ``<root_directory>/cas``; URIs are ``<root_directory>/cas/<id>/<basename>``.
    Also takes ``index_url`` and ``cache_directory``.
    """

    _locate = staticmethod(local_location)


class OssBlobManager(CasBlobManager):
    """Drop-in for AIFlow's ``OssBlobManager``.

    Keys: ``bucket`` and ``root_directory`` (required); ``access_key_id``, ``access_key_secret``
    and ``endpoint`` (required unless ``OSS_ACCESS_KEY_ID``, ``OSS_ACCESS_KEY_SECRET``,
    ``OSS_ENDPOINT`` are set); optional ``index_url``, ``cache_directory`` and the OSS backend's
    ``part_size``, ``multipart_threshold``, ``connect_timeout``, ``read_timeout``. The repository
    is ``oss://<bucket>/<root_directory>/cas``; URIs start with ``oss://<bucket>/<root_directory>``.
    """

    _locate = staticmethod(oss_location)


class HDFSBlobManager(CasBlobManager):
    """Drop-in for AIFlow's ``HDFSBlobManager``.

    Keys: ``hdfs_url`` (required; the WebHDFS address, e.g. ``http://namenode:50070``),
    ``root_directory`` (required; an absolute HDFS path), ``hdfs_user`` (default: the local user
    name), optional ``index_url`` and ``cache_directory``. The repository is
    ``<root_directory>/cas`` on HDFS; URIs are ``<root_directory>/cas/<id>/<basename>``.
    """

    _locate = staticmethod(hdfs_location)


class S3BlobManager(CasBlobManager):
    """Drop-in for AIFlow 0.3's ``S3BlobManager``.

    Keys: ``bucket_name`` (required); ``endpoint_url``, ``region_name``, ``access_key_id``,
    ``secret_access_key``, ``session_token`` as in AIFlow; ``config`` (botocore ``Config``
    arguments: ``s3.addressing_style``, ``connect_timeout``, ``read_timeout`` and
    ``max_pool_connections`` are honoured, others refused); ``service_name`` (must be ``s3``),
    ``api_version`` (ignored), ``use_ssl`` and ``verify`` (only their defaults; see
    ``docs/aiflow.md``). New, optional: ``root_directory`` (a key prefix inside the bucket),
    ``index_url``, ``cache_directory``. The repository is ``s3://<bucket_name>/<root_directory>/cas``;
    URIs start with ``s3://<bucket_name>[/<root_directory>]``.
    """

    _locate = staticmethod(s3_location)


# The classes' public home, as before cas.aiflow became a package: their repr and their loggers'
# names (``cas.aiflow.<Class>``, from ``type(self).__module__``) stay what logging configs name.
for _cls in (CasBlobManager, LocalBlobManager, OssBlobManager, HDFSBlobManager, S3BlobManager):
    _cls.__module__ = "cas.aiflow"
del _cls


def _add_label(labels: dict[str, str], key: str, value: str) -> None:
    """Labels are informational; a value the engine would refuse is left out rather than failing."""
    try:
        labels.update(check_labels({key: value}))
    except ConfigurationError:
        pass
