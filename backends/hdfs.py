"""HDFS backend over WebHDFS: one HDFS file per key under a root directory.

HdfsCLI (the ``hdfs`` package) is imported here and nowhere else, and only when a backend is
built. The URL's host:port is the NameNode's WebHDFS HTTP address (``hdfs://nn:9870/user/ml/cas``;
``webhdfs://`` is the same); the NameNode redirects every read and write to a DataNode, which must
be reachable from the client under the name it registered with.

Behaviour worth knowing:

* A put streams its payload into ``<dir>/.cas-tmp-<random>`` beside the final name, then renames
  it into place, so nothing partial is ever visible under a key. The rename is the commit point
  and is decided by the NameNode alone, see :meth:`HdfsBackend.put`.
* Temporary names start with :data:`TMP_PREFIX`; ``list`` never shows them. A client killed
  between upload and rename leaves one behind, which a sweep may delete by that prefix and age.
* Directories are not objects: ``stat``, ``get`` and ``delete`` of a directory say
  :class:`NotFound`.
* Every failure of the SDK, of HTTP or of the NameNode goes through one table (:func:`_translate`)
  to the fixed error set, raised ``from`` the original.
"""

from __future__ import annotations

import logging
import posixpath
import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, BinaryIO, TypeVar

from backends import hdfs_config
from backends.base import Backend, Capabilities, ObjectInfo, check_key
from backends.errors import (
    AlreadyExists,
    CasError,
    ConfigurationError,
    MissingDependency,
    NotFound,
    PermissionDenied,
    Unavailable,
)
from backends.redact import scrub_tokens

if TYPE_CHECKING:  # pragma: no cover - typing only
    import requests
    from hdfs.client import Client

_log = logging.getLogger(__name__)

#: Names of in-flight uploads. Never a valid result of ``list``.
TMP_PREFIX = ".cas-tmp-"
#: Slice size when a memoryview or bytearray payload is sent as a chunked stream.
_SEND_BLOCK = 1024 * 1024
_READ_BLOCK = 1024 * 1024

_T = TypeVar("_T")

# RemoteException class name (WebHDFS error body) -> domain error. Names not listed are
# Unavailable: an unexpected server failure is worth one more try by the retry wrapper.
_REMOTE_EXCEPTIONS: Mapping[str, type[CasError]] = {
    "FileNotFoundException": NotFound,
    "FileAlreadyExistsException": AlreadyExists,
    # A name on the key's path is an object, so the key cannot be a directory entry below it.
    "ParentNotDirectoryException": AlreadyExists,
    "AccessControlException": PermissionDenied,
    "SecurityException": PermissionDenied,
    "AuthorizationException": PermissionDenied,
    "InvalidToken": PermissionDenied,
    "StandbyException": Unavailable,
    "RetriableException": Unavailable,
    "SafeModeException": Unavailable,
    "ConnectException": Unavailable,
    "SocketTimeoutException": Unavailable,
    "InvalidPathException": ConfigurationError,
    "IllegalArgumentException": ConfigurationError,
    "HadoopIllegalArgumentException": ConfigurationError,
}
#: Unavailable, but not temporary: a retry meets the same quota until someone raises or frees it.
_PERMANENT_REMOTE_EXCEPTIONS = frozenset(
    {"DSQuotaExceededException", "NSQuotaExceededException", "QuotaExceededException"}
)


def _translate(exc: BaseException, what: str) -> CasError:
    """The domain error for a failure of an operation on ``what`` (a key or a path)."""
    error = _translate_raw(exc, what)
    if not isinstance(exc, CasError):
        error.args = tuple(scrub_tokens(str(a)) for a in error.args)
    return error


def _translate_raw(exc: BaseException, what: str) -> CasError:
    if isinstance(exc, CasError):
        return exc
    from hdfs.util import HdfsError
    from requests.exceptions import RequestException
    from urllib3.exceptions import HTTPError as Urllib3Error

    if isinstance(exc, HdfsError):
        name = getattr(exc, "exception", None)
        message = str(exc).split("\n", 1)[0]
        if name is None and message.startswith("Authentication failure"):
            return PermissionDenied(f"HDFS refused the credentials for {what}: {message}")
        error = _REMOTE_EXCEPTIONS.get(name or "", Unavailable)
        if error is NotFound:
            return NotFound(f"object not found: {what}")
        if name in _PERMANENT_REMOTE_EXCEPTIONS:
            return Unavailable(f"HDFS {name} on {what}: {message}", temporary=False)
        return error(f"HDFS {name or 'error'} on {what}: {message}")
    if isinstance(exc, (RequestException, Urllib3Error, ConnectionError, TimeoutError)):
        return Unavailable(f"HDFS unreachable for {what}: {type(exc).__name__}: {exc}")
    return Unavailable(f"HDFS failure on {what}: {type(exc).__name__}: {exc}")


def _remote_name(exc: BaseException) -> str | None:
    from hdfs.util import HdfsError

    return getattr(exc, "exception", None) if isinstance(exc, HdfsError) else None


class HdfsBackend(Backend):
    """Objects under ``root`` on an HDFS reached through ``client`` (an HdfsCLI client)."""

    capabilities = Capabilities(remote=True, put_if_absent=True)

    def __init__(self, client: Client, root: str, *, location: str, session: requests.Session) -> None:
        """``session`` is the one ``client`` was built with; :meth:`close` closes it."""
        root = posixpath.normpath("/" + root.strip("/"))
        self._client = client
        self._session = session
        self.root = root
        self._location = location

    def describe(self) -> str:
        return self._location

    def close(self) -> None:
        self._session.close()

    # Paths

    def _path(self, key: str) -> str:
        check_key(key)
        if "#LATEST" in key:
            # HdfsCLI expands this marker in every path it is given.
            raise ConfigurationError(f"invalid object key {key!r}: HDFS keys may not contain '#LATEST'")
        return posixpath.join(self.root, key)

    def _call(self, what: str, fn: Callable[[], _T]) -> _T:
        try:
            return fn()
        except Exception as exc:
            raise _translate(exc, what) from exc

    # Operations

    def put(self, key: str, data: bytes | memoryview | BinaryIO, *, overwrite: bool = True) -> None:
        """Upload to a temporary name in the key's directory, then rename it onto the key.

        The rename is WebHDFS ``RENAME`` with ``renameoptions`` set, which the NameNode runs as
        ``rename2``, one atomic namespace operation:

        * ``overwrite=False`` uses ``renameoptions=NONE``: the NameNode refuses an existing
          destination with ``FileAlreadyExistsException`` (-> :class:`AlreadyExists`) and changes
          nothing, so of several racing writers exactly one wins and the loser's bytes are never
          visible. This is the put-if-absent. The plain ``RENAME`` (no options) would also refuse
          an existing *file*, answering ``{"boolean": false}``, but that false is ambiguous (it is
          also the answer for a vanished source) and, worse, when the destination is a directory
          the plain rename moves the file *into* it and answers true; ``rename2`` refuses both.
        * ``overwrite=True`` uses ``renameoptions=OVERWRITE``: the destination file is replaced in
          the same step, so a reader sees the old or the new object, never neither.

        The payload is streamed from a file object (or sent as is for bytes) and never copied
        whole. A failed put removes its temporary file when the server can still be reached.
        """
        path = self._path(key)
        tmp = posixpath.join(posixpath.dirname(path), f"{TMP_PREFIX}{uuid.uuid4().hex}")
        client = self._client
        try:
            client.write(tmp, data=_request_body(data), overwrite=False)
            # Private API, unavoidably: HdfsCLI's public rename() sends no renameoptions, so it is the
            # plain RENAME whose answers are ambiguous (see above). _rename is its own request
            # machinery (hosts, session, authentication, error parsing) with the options added.
            client._rename(tmp, destination=path, renameoptions="OVERWRITE" if overwrite else "NONE")
        except Exception as exc:
            self._discard(tmp)
            if _remote_name(exc) == "IOException" and self._is_directory(path):
                raise AlreadyExists(f"cannot put {key}: it is a directory of other keys") from exc
            if isinstance(exc, CasError):
                raise
            raise _translate(exc, key) from exc

    def _discard(self, tmp: str) -> None:
        try:
            self._client.delete(tmp)
        except Exception as exc:  # noqa: BLE001 - the put's own failure matters more than a leftover
            _log.warning("could not remove temporary HDFS file %s: %s", tmp, exc)

    def _is_directory(self, path: str) -> bool:
        try:
            status = self._client.status(path)
        except Exception:  # noqa: BLE001 - only asked to explain another failure, which is raised
            return False
        return bool(status.get("type") == "DIRECTORY")

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        path = self._path(key)
        if length is not None and length < 0:
            raise ConfigurationError(f"negative length {length} reading {key}")
        if offset < 0:
            offset = max(0, self.stat(key).size + offset)
        try:
            with self._client.read(path, offset=offset, length=length, chunk_size=_READ_BLOCK) as chunks:
                return b"".join(chunks)
        except Exception as exc:
            # WebHDFS answers an offset at or past the end with a bare IOException, where the
            # contract wants the (empty) rest of the object.
            if offset > 0 and _remote_name(exc) == "IOException" and self.stat(key).size <= offset:
                return b""
            raise _translate(exc, key) from exc

    def stat(self, key: str) -> ObjectInfo:
        path = self._path(key)
        status = self._call(key, lambda: self._client.status(path))
        if status.get("type") != "FILE":
            raise NotFound(f"object not found: {key} (a directory)")
        return ObjectInfo(key, int(status["length"]))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        # Walk only the directory the prefix is in, and below it only the subdirectories that can
        # hold keys starting with the prefix.
        base = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        if base:
            check_key(base)
        pending = [base]
        while pending:
            rel_dir = pending.pop()
            directory = posixpath.join(self.root, rel_dir) if rel_dir else self.root
            for status in self._list_directory(directory):
                name = status["pathSuffix"]
                if name.startswith(TMP_PREFIX):
                    continue
                rel = f"{rel_dir}/{name}" if rel_dir else name
                if status.get("type") == "DIRECTORY":
                    below = rel + "/"
                    if below.startswith(prefix) or prefix.startswith(below):
                        pending.append(rel)
                elif status.get("type") == "FILE" and rel.startswith(prefix):
                    yield ObjectInfo(rel, int(status["length"]))

    def _list_directory(self, directory: str) -> Iterator[dict[str, Any]]:
        """Entries of one directory, a page at a time (LISTSTATUS_BATCH); none if it is absent.

        A NameNode older than Hadoop 2.8 does not know LISTSTATUS_BATCH and answers
        IllegalArgumentException; then the whole directory comes in one LISTSTATUS.
        """
        start_after: str | None = None
        while True:
            params = {"startAfter": start_after} if start_after is not None else {}
            try:
                body = _list_status_batch(self._client, directory, **params).json()
            except Exception as exc:
                name = _remote_name(exc)
                if name == "FileNotFoundException":
                    return
                if name == "IllegalArgumentException" and start_after is None:
                    yield from self._list_directory_whole(directory)
                    return
                raise _translate(exc, directory) from exc
            listing = body["DirectoryListing"]
            entries = listing["partialListing"]["FileStatuses"]["FileStatus"]
            if len(entries) == 1 and entries[0].get("pathSuffix") == "":
                return  # the path is a file, which holds no keys below it
            yield from entries
            if not entries or not listing.get("remainingEntries"):
                return
            start_after = entries[-1]["pathSuffix"]

    def _list_directory_whole(self, directory: str) -> Iterator[dict[str, Any]]:
        try:
            # Private API: the public list() raises for a path that is a file (and asks for its
            # status again), where this fallback needs the raw LISTSTATUS answer.
            body = self._client._list_status(directory).json()
        except Exception as exc:
            if _remote_name(exc) == "FileNotFoundException":
                return
            raise _translate(exc, directory) from exc
        entries = body["FileStatuses"]["FileStatus"]
        if not (len(entries) == 1 and entries[0].get("pathSuffix") == ""):
            yield from entries

    def delete(self, key: str) -> None:
        path = self._path(key)
        self.stat(key)  # a directory is not an object: never remove one, say NotFound
        if not self._call(key, lambda: self._client.delete(path)):
            raise NotFound(f"object not found: {key}")


def _request_body(data: bytes | memoryview | BinaryIO) -> bytes | BinaryIO | Iterator[bytes]:
    """The payload in a form requests streams without copying it whole.

    Bytes and file objects go as they are (a file with a known size gets a Content-Length, any
    other is sent chunked). requests would iterate a memoryview or bytearray element by element, so
    those are sent as a stream of slices.
    """
    if isinstance(data, bytes):
        return data
    if isinstance(data, (bytearray, memoryview)):
        view = memoryview(data).cast("B")
        return (bytes(view[i : i + _SEND_BLOCK]) for i in range(0, len(view), _SEND_BLOCK))
    return data


_list_status_batch_handler: Callable[..., Any] | None = None


def _list_status_batch(client: Client, path: str, **params: Any) -> Any:
    """WebHDFS LISTSTATUS_BATCH, which HdfsCLI has no method for, through its request machinery
    (same hosts, session, authentication and error handling as its own methods). Private API,
    unavoidably: writing our own would duplicate HdfsCLI's HA failover and Kerberos handling."""
    global _list_status_batch_handler
    if _list_status_batch_handler is None:
        from hdfs.client import _Request

        _list_status_batch_handler = _Request("GET").to_method("LISTSTATUS_BATCH")
    return _list_status_batch_handler(client, path, **params)


# Construction


def from_url(url: str, **options: object) -> HdfsBackend:
    """Open ``hdfs://host:port/path`` or ``webhdfs://host:port/path`` (host:port = WebHDFS HTTP); the
    options are those of :func:`backends.hdfs_config.parse`."""
    config = hdfs_config.parse(url, options)
    client, session = _make_client(
        config.endpoint, user=config.user, token=config.token, kerberos=config.kerberos,
        mutual_auth=config.mutual_auth, timeout=config.timeout,
    )
    return HdfsBackend(client, config.root, location=config.location, session=session)


def _make_client(
    endpoint: str,
    *,
    user: str | None,
    token: str | None,
    kerberos: bool,
    mutual_auth: str,
    timeout: float | tuple[float, float],
) -> tuple[Client, requests.Session]:
    """The HdfsCLI client for the chosen authentication, and the HTTP session it runs on (ours, so
    :meth:`HdfsBackend.close` can close it)."""
    try:
        import hdfs  # noqa: F401 - fail here, with the install hint, if HdfsCLI is missing
    except ImportError as exc:
        raise MissingDependency(
            f"the hdfs:// backend needs the 'hdfs' package ({exc.name} is missing): "
            "pip install 'cas-store[hdfs]'"
        ) from exc
    import requests
    from hdfs.client import InsecureClient, TokenClient

    session = requests.Session()

    if kerberos:
        try:
            from hdfs.ext.kerberos import KerberosClient
        except ImportError as exc:
            raise MissingDependency(
                f"kerberos=true needs {exc.name or 'requests-kerberos'}: pip install requests-kerberos"
            ) from exc
        client: Client = KerberosClient(endpoint, mutual_auth=mutual_auth, timeout=timeout, session=session)
    elif token:
        client = TokenClient(endpoint, token, timeout=timeout, session=session)
    else:
        client = InsecureClient(endpoint, user=user, timeout=timeout, session=session)
    return client, session
