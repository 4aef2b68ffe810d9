"""AIFlow blob managers that store into a cas repository: deduplicated, verified, immutable.

Drop-in replacements for AIFlow's ``LocalBlobManager``, ``OssBlobManager``, ``HDFSBlobManager`` and
``S3BlobManager`` (same ``blob_manager_config`` keys), plus :class:`CasBlobManager`, which takes any
cas repository URL. Change ``blob_manager_class`` in ``project.yaml`` to ``cas.aiflow.<Name>``; see
``docs/aiflow.md``.

Names. ``upload(path)`` returns ``<root>/cas/<execution id>/<basename>`` where ``<root>`` is the
configured location (the ``root_directory`` path for Local and HDFS, ``oss://bucket/root`` for OSS,
``s3://bucket[/root]`` for S3, the repository URL for :class:`CasBlobManager`). A file is stored
as the execution ``file-<BLAKE3 of its bytes>``, so a URI names one content forever: uploading the
same bytes again returns the same URI and stores nothing, and two files that share a basename but
not their bytes get different URIs. A project directory (``upload_project``) is stored as a tree
under ``project-<workflow snapshot id>``, with every file chunked and deduplicated against
everything stored before. The repository itself lives at ``<root>/cas`` on the backend; a URI is
a name that only these classes resolve, not a path that exists there.

Guarantees (each fixes something AIFlow's own managers get wrong): upload reads the caller's file
and never moves or alters it; a download is written under a temporary name and renamed into place
only when complete and verified against the URI's digest; concurrent downloads of one URI into one
directory, by threads or processes of one host, are serialised by an ``fcntl.flock`` lock so the
first fetches and the others find its verified result; every failure raises; a URI not under this
manager's root is refused; a missing required key raises at construction, naming the key.

Index. Without ``index_url`` the engine's default index is used: ``$CAS_INDEX`` if set, else a
per-host SQLite database under ``$CAS_HOME``. That index only knows what was uploaded on this host,
so when the client, the server and the workers run on different hosts they must share an index:
set ``index_url`` (e.g. ``postgresql://...``) in the same ``blob_manager_config``.

When AIFlow is importable, the classes subclass its ``BlobManager`` (0.3's ``upload``/``download``
and 0.2's ``upload_project``/``download_project``/``cleanup_project`` are all implemented);
otherwise this module imports nothing of AIFlow's and works the same.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import stat
import tempfile
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Dict  # noqa: UP035 - AIFlow's interface spells it Dict

from backends import open_backend, redact_url
from backends.base import Backend
from backends.local import fsync_directory
from cas.errors import AlreadyExists, ConfigurationError, IntegrityError, NotFound
from cas.hashing import is_digest, new_hasher
from cas.records import check_execution_id, check_labels
from cas.repository import default_home
from cas.store import Snapshot, Store

try:  # Subclass AIFlow's interface when AIFlow is installed; never require it.
    from ai_flow.plugin_interface.blob_manager_interface import BlobManager as _AIFlowBlobManager  # type: ignore[import-not-found]
except ImportError:
    _AIFlowBlobManager = None

_Base: type = _AIFlowBlobManager if _AIFlowBlobManager is not None else object

URI_MARKER = "cas"
"""The path segment between the root and the execution ID in every URI these classes issue."""
REPO_DIR = "cas"
"""Where the repository lives under the configured root on the backend."""
FILE_ID_PREFIX = "file-"
PROJECT_ID_PREFIX = "project-"
CONTENT_NAME = "content"
"""The single entry of a ``file-`` snapshot; the basename lives in the URI, so equal bytes share it."""

_COPY_BLOCK = 1 << 20
_STAGED_MODE = 0o644
_DOWNLOAD_PREFIX = ".cas-download-"
_DONE_PREFIX = ".cas-done-"


@dataclass(frozen=True)
class BlobRef:
    """A parsed URI: which execution it names and the basename to give it locally."""

    uri: str
    execution_id: str
    name: str

    @property
    def digest(self) -> str | None:
        """The BLAKE3 of the file for ``file-`` URIs; None for trees (projects, other snapshots)."""
        if self.execution_id.startswith(FILE_ID_PREFIX):
            return self.execution_id[len(FILE_ID_PREFIX) :]
        return None


@dataclass(frozen=True)
class _Location:
    repo: str | Backend
    options: dict[str, Any]
    uri_root: str


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

    Instances are safe to share between threads; after a ``fork`` the child reopens its own
    connections.
    """

    required_keys: tuple[str, ...] = ("repo",)

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
        for key in self.required_keys:
            _required(config, key, name)
        location = self._location(config)
        self.root_dir: str = location.uri_root
        self._uri_prefix = f"{location.uri_root}/{URI_MARKER}/"
        self._repo = location.repo
        self._options = location.options
        self._index_url = _optional_str(config, "index_url", name)
        cache = _optional_str(config, "cache_directory", name) or os.path.join(default_home(), "aiflow")
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

    # -- configuration ----------------------------------------------------------------------------

    def _location(self, config: dict[str, Any]) -> _Location:
        repo = config["repo"]
        options = config.get("backend_options") or {}
        if not isinstance(options, Mapping):
            raise ConfigurationError(f"{type(self).__name__}: backend_options must be a mapping")
        if isinstance(repo, Backend):
            return _Location(repo, {}, redact_url(repo.describe()).rstrip("/"))
        return _Location(str(repo), dict(options), str(repo).rstrip("/"))

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
                self._store_obj = Store.open(self._backend, index=self._index_url)
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
        name = _check_name(os.path.basename(src), src)
        try:
            st = os.stat(src)
        except FileNotFoundError:
            raise NotFound(f"cannot upload {src}: no such file") from None
        if not stat.S_ISREG(st.st_mode):
            raise ConfigurationError(
                f"cannot upload {src}: not a regular file (use upload_project for a directory)"
            )
        with self._staging_dir() as work:
            # A private copy: its bytes cannot change between hashing and storing, and its name,
            # mode and mtime are fixed, so equal content always makes the identical tree.
            staged = os.path.join(work, CONTENT_NAME)
            digest = _copy_and_hash(src, staged)
            os.chmod(staged, _STAGED_MODE)
            os.utime(staged, ns=(0, 0))
            execution_id = FILE_ID_PREFIX + digest
            labels = {"aiflow.kind": "file"}
            _add_label(labels, "aiflow.name", name)
            try:
                snap = self.store.snapshot(staged, execution_id, labels=labels, use_files_cache=False)
            except AlreadyExists:
                # Written by another version of this code with a different tree: same bytes or bust.
                entry = self.store.entry(execution_id, CONTENT_NAME)
                if entry is None or entry.digest != digest:
                    raise IntegrityError(
                        f"execution {execution_id} does not hold the content its name says"
                    ) from None
                snap = self.store.get(execution_id)
        self.last_snapshot = snap
        uri = f"{self._uri_prefix}{execution_id}/{name}"
        self._log.info("uploaded %s as %s (%d new bytes)", src, uri, snap.new_bytes)
        return uri

    def download(self, remote_file_path: str, local_dir: str | None = None) -> str:
        """Fetch a URI issued by :meth:`upload` into ``local_dir``; return ``local_dir/<basename>``.

        The result appears under its final name only once complete and verified. If that path
        already holds the same bytes it is returned without fetching. Concurrent calls for one
        URI and directory on one host fetch once. A ``project-`` (or any tree) URI is restored as
        a directory. ``local_dir`` defaults to a directory under ``cache_directory``.
        Raises :class:`ConfigurationError` for a URI not under this manager's root.
        """
        ref = self.parse_uri(remote_file_path)
        if local_dir is None:
            local_dir = os.path.join(self._cache_dir, "downloads", ref.execution_id)
        local_dir = os.fspath(local_dir)
        os.makedirs(local_dir, exist_ok=True)
        final = os.path.join(local_dir, ref.name)
        tag = _name_tag(ref.name)
        with _exclusive_lock(local_dir):
            if self._is_complete(ref, final, os.path.join(local_dir, _DONE_PREFIX + tag)):
                self._log.debug("%s is already at %s", ref.uri, final)
                self.last_download_fetched = False
                return final
            self._fetch(ref, local_dir, final, os.path.join(local_dir, _DONE_PREFIX + tag))
            self.last_download_fetched = True
        self._log.info("downloaded %s to %s", ref.uri, final)
        return final

    # -- AIFlow 0.2 interface -----------------------------------------------------------------

    def upload_project(self, workflow_snapshot_id: str, project_path: str) -> str:
        """Snapshot the project directory as a tree; return ``<root>/cas/project-<id>/<dir name>``.

        Files equal to ones already stored (by any earlier project or execution) are not stored
        again. Reusing a workflow snapshot ID for a different tree raises :class:`AlreadyExists`;
        for an identical tree it returns the same URI.
        """
        execution_id = _project_id(workflow_snapshot_id)
        path = os.fspath(project_path)
        if not os.path.isdir(path):
            raise ConfigurationError(f"cannot upload project {path}: not a directory")
        name = _check_name(os.path.basename(os.path.abspath(path)), path)
        labels = {"aiflow.kind": "project"}
        _add_label(labels, "aiflow.workflow_snapshot_id", str(workflow_snapshot_id))
        _add_label(labels, "aiflow.name", name)
        snap = self.store.snapshot(path, execution_id, labels=labels)
        self.last_snapshot = snap
        uri = f"{self._uri_prefix}{execution_id}/{name}"
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
        if ref.execution_id != _project_id(wsid):
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
        if not isinstance(uri, str) or not uri.startswith(self._uri_prefix):
            raise ConfigurationError(
                f"refusing {uri!r}: {type(self).__name__} only reads URIs under {self._uri_prefix} "
                "(the ones its upload returns)"
            )
        parts = uri[len(self._uri_prefix) :].split("/")
        if len(parts) != 2:
            raise ConfigurationError(
                f"refusing {uri!r}: expected {self._uri_prefix}<execution id>/<file name>"
            )
        execution_id, name = parts
        check_execution_id(execution_id)
        _check_name(name, uri)
        ref = BlobRef(uri, execution_id, name)
        if execution_id.startswith(FILE_ID_PREFIX) and not is_digest(ref.digest):
            raise ConfigurationError(f"refusing {uri!r}: {execution_id} is not file-<64 hex digits>")
        return ref

    # -- internals ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def _staging_dir(self) -> Iterator[str]:
        parent = os.path.join(self._cache_dir, "staging")
        os.makedirs(parent, mode=0o700, exist_ok=True)
        work = tempfile.mkdtemp(prefix="upload-", dir=parent)
        try:
            yield work
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def _is_complete(self, ref: BlobRef, final: str, marker: str) -> bool:
        digest = ref.digest
        if digest is not None:
            if not os.path.isfile(final) or os.path.islink(final):
                return False
            return _hash_file(final) == digest
        # A directory only ever gets its final name by a rename after a complete restore, and the
        # marker says which execution it was.
        if not os.path.isdir(final) or os.path.islink(final):
            return False
        try:
            with open(marker, encoding="utf-8") as f:
                return f.read() == ref.execution_id
        except FileNotFoundError:
            return False

    def _fetch(self, ref: BlobRef, local_dir: str, final: str, marker: str) -> None:
        store = self.store
        try:
            store.get(ref.execution_id)
        except NotFound:
            raise NotFound(f"{ref.uri}: nothing is stored under this URI (execution {ref.execution_id})") from None
        tmp = tempfile.mkdtemp(prefix=_DOWNLOAD_PREFIX, dir=local_dir)
        try:
            if ref.digest is not None:
                store.restore(ref.execution_id, tmp, path=CONTENT_NAME)
                produced = os.path.join(tmp, CONTENT_NAME)
                if not os.path.isfile(produced) or os.path.islink(produced):
                    raise IntegrityError(
                        f"{ref.uri}: execution {ref.execution_id} holds no file {CONTENT_NAME}"
                    )
                if _hash_file(produced, fsync=True) != ref.digest:
                    raise IntegrityError(f"{ref.uri}: restored bytes do not match the digest the URI names")
                os.utime(produced)  # the stored copy carries a fixed mtime; the download is new
                os.replace(produced, final)
            else:
                produced = os.path.join(tmp, "tree")
                store.restore(ref.execution_id, produced)
                if os.path.lexists(final):
                    if not os.path.isdir(final) or os.path.islink(final) or os.listdir(final):
                        raise AlreadyExists(
                            f"{final} exists and is not a download of {ref.uri}; remove it first"
                        )
                    os.rmdir(final)
                os.rename(produced, final)
                _write_marker(marker, ref.execution_id)
            fsync_directory(local_dir)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


class LocalBlobManager(CasBlobManager):
    """Drop-in for AIFlow's ``LocalBlobManager``: ``root_directory`` (required), a local path.

    The repository is ``<root_directory>/cas``; URIs are ``<root_directory>/cas/<id>/<basename>``.
    Also takes ``index_url`` and ``cache_directory``.
    """

    required_keys = ("root_directory",)

    def _location(self, config: dict[str, Any]) -> _Location:
        root = str(config["root_directory"])
        path = os.path.join(os.path.abspath(os.path.expanduser(root)), REPO_DIR)
        return _Location(path, {}, root.rstrip("/"))


class OssBlobManager(CasBlobManager):
    """Drop-in for AIFlow's ``OssBlobManager``.

    Keys: ``bucket`` and ``root_directory`` (required); ``access_key_id``, ``access_key_secret``
    and ``endpoint`` (required unless ``OSS_ACCESS_KEY_ID``, ``OSS_ACCESS_KEY_SECRET``,
    ``OSS_ENDPOINT`` are set); optional ``index_url``, ``cache_directory`` and the OSS backend's
    ``part_size``, ``multipart_threshold``, ``connect_timeout``, ``read_timeout``. The repository
    is ``oss://<bucket>/<root_directory>/cas``; URIs start with ``oss://<bucket>/<root_directory>``.
    """

    required_keys = ("bucket", "root_directory")
    _env_fallbacks: ClassVar[dict[str, str]] = {
        "access_key_id": "OSS_ACCESS_KEY_ID",
        "access_key_secret": "OSS_ACCESS_KEY_SECRET",
        "endpoint": "OSS_ENDPOINT",
    }
    _passed_through = ("part_size", "multipart_threshold", "connect_timeout", "read_timeout")

    def _location(self, config: dict[str, Any]) -> _Location:
        name = type(self).__name__
        options: dict[str, Any] = {}
        for key, env in self._env_fallbacks.items():
            value = config.get(key)
            if value is None or value == "":
                if not os.environ.get(env):
                    raise ConfigurationError(
                        f"{name}: blob_manager_config is missing the required key {key!r} (or set ${env})"
                    )
                continue  # the backend reads the environment itself
            options[key] = str(value)
        for key in self._passed_through:
            if config.get(key) is not None:
                options[key] = config[key]
        bucket = str(config["bucket"])
        prefix = str(config["root_directory"]).strip("/")
        base = f"oss://{bucket}/{prefix}" if prefix else f"oss://{bucket}"
        return _Location(f"{base}/{REPO_DIR}", options, base)


class HDFSBlobManager(CasBlobManager):
    """Drop-in for AIFlow's ``HDFSBlobManager``.

    Keys: ``hdfs_url`` (required; the WebHDFS address, e.g. ``http://namenode:50070``),
    ``root_directory`` (required; an absolute HDFS path), ``hdfs_user`` (default: the local user
    name), optional ``index_url`` and ``cache_directory``. The repository is
    ``<root_directory>/cas`` on HDFS; URIs are ``<root_directory>/cas/<id>/<basename>``.
    """

    required_keys = ("hdfs_url", "root_directory")

    def _location(self, config: dict[str, Any]) -> _Location:
        root = str(config["root_directory"])
        options: dict[str, Any] = {"hdfs_url": str(config["hdfs_url"])}
        user = _optional_str(config, "hdfs_user", type(self).__name__)
        if user:
            options["hdfs_user"] = user
        path = "/" + "/".join(p for p in root.split("/") if p)
        repo = f"hdfs://{path.rstrip('/')}/{REPO_DIR}"
        return _Location(repo, options, root.rstrip("/"))


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

    required_keys = ("bucket_name",)
    _credentials = ("endpoint_url", "region_name", "access_key_id", "secret_access_key", "session_token")
    _botocore: ClassVar[frozenset[str]] = frozenset(
        {"connect_timeout", "read_timeout", "max_pool_connections", "s3"}
    )

    def _location(self, config: dict[str, Any]) -> _Location:
        name = type(self).__name__
        options: dict[str, Any] = {}
        for key in self._credentials:
            value = _optional_str(config, key, name)
            if value:
                options[key] = value
        service = config.get("service_name")
        if service not in (None, "s3"):
            raise ConfigurationError(f"{name}: service_name must be 's3', got {service!r}")
        if config.get("use_ssl") is False and not str(options.get("endpoint_url", "")).startswith("http://"):
            raise ConfigurationError(
                f"{name}: use_ssl: false is not supported; give an http:// endpoint_url instead"
            )
        if config.get("verify") not in (None, True):
            raise ConfigurationError(
                f"{name}: verify={config.get('verify')!r} is not supported by cas's S3 backend; remove the key"
            )
        options.update(self._botocore_options(config.get("config")))
        bucket = str(config["bucket_name"])
        prefix = str(config.get("root_directory") or "").strip("/")
        base = f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"
        return _Location(f"{base}/{REPO_DIR}", options, base)

    def _botocore_options(self, botocore: object) -> dict[str, Any]:
        name = type(self).__name__
        if botocore is None:
            return {}
        if not isinstance(botocore, Mapping):
            raise ConfigurationError(f"{name}: config must be a mapping of botocore Config arguments")
        unknown = sorted(set(botocore) - self._botocore)
        if unknown:
            raise ConfigurationError(
                f"{name}: config key(s) {', '.join(unknown)} are not supported; "
                f"supported: {', '.join(sorted(self._botocore))}"
            )
        options: dict[str, Any] = {
            k: botocore[k]
            for k in ("connect_timeout", "read_timeout", "max_pool_connections")
            if k in botocore
        }
        s3 = botocore.get("s3") or {}
        if not isinstance(s3, Mapping) or set(s3) - {"addressing_style"}:
            raise ConfigurationError(f"{name}: config.s3 supports only addressing_style")
        if "addressing_style" in s3:
            options["addressing_style"] = s3["addressing_style"]
        return options


# -- helpers ----------------------------------------------------------------------------------


def _required(config: Mapping[str, Any], key: str, owner: str) -> None:
    value = config.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise ConfigurationError(f"{owner}: blob_manager_config is missing the required key {key!r}")
    if not isinstance(value, (str, Backend)):
        raise ConfigurationError(f"{owner}: {key} must be a string, got {type(value).__name__}")


def _optional_str(config: Mapping[str, Any], key: str, owner: str) -> str | None:
    value = config.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ConfigurationError(f"{owner}: {key} must be a string, got {type(value).__name__}")
    return value


def _check_name(name: str, context: str) -> str:
    if name in ("", ".", "..") or "/" in name or "\x00" in name or len(os.fsencode(name)) > 255:
        raise ConfigurationError(f"{context!r} does not end in a usable file name")
    return name


def _project_id(workflow_snapshot_id: object) -> str:
    return check_execution_id(PROJECT_ID_PREFIX + str(workflow_snapshot_id))


def _add_label(labels: dict[str, str], key: str, value: str) -> None:
    """Labels are informational; a value the engine would refuse is left out rather than failing."""
    try:
        labels.update(check_labels({key: value}))
    except ConfigurationError:
        pass


def _name_tag(name: str) -> str:
    """A short fixed-length stand-in for a basename, for lock and marker file names."""
    return hashlib.sha256(os.fsencode(name)).hexdigest()[:32]


def _copy_and_hash(src: str, dst: str) -> str:
    hasher = new_hasher()
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    with open(src, "rb") as fin, os.fdopen(os.open(dst, flags, 0o600), "wb") as fout:
        while block := fin.read(_COPY_BLOCK):
            hasher.update(block)
            fout.write(block)
    return str(hasher.hexdigest())


def _hash_file(path: str, *, fsync: bool = False) -> str:
    hasher = new_hasher()
    with open(path, "rb") as f:
        while block := f.read(_COPY_BLOCK):
            hasher.update(block)
        if fsync:
            os.fsync(f.fileno())
    return str(hasher.hexdigest())


def _write_marker(path: str, execution_id: str) -> None:
    tmp = f"{path}.tmp-{os.getpid()}-{threading.get_ident()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(execution_id)
    os.replace(tmp, path)


@contextlib.contextmanager
def _exclusive_lock(directory: str) -> Iterator[None]:
    """Hold an exclusive ``flock`` on the directory ``directory`` itself.

    Locking the directory, not a lock file in it, leaves nothing in ``local_dir`` but the result
    (downloads into one directory are serialised, whatever their names). Each call opens its own
    file description, so threads of one process exclude each other as processes do. Waiting
    blocks in the kernel; the lock dies with its holder.
    """
    import fcntl  # POSIX only, like AIFlow's own managers

    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(directory, flags)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


__all__ = [
    "BlobRef",
    "CasBlobManager",
    "HDFSBlobManager",
    "LocalBlobManager",
    "OssBlobManager",
    "S3BlobManager",
]
