"""The names the AIFlow managers issue: ``<root>/cas/<execution id>/<basename>``, and their checks.

``<root>`` is a manager's configured location (see :mod:`cas.aiflow.config`). The execution ID
says what is stored: ``file-<BLAKE3 of the bytes>`` for one file (a snapshot holding the single
entry :data:`CONTENT_NAME`, so equal bytes share one execution whatever their basename), or
``project-<workflow snapshot id>`` for a project tree. A URI is a name only the managers resolve,
not a path that exists on the backend. This module is pure: no I/O, no store.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from cas.errors import ConfigurationError
from cas.format.hashing import is_digest
from cas.format.records import check_execution_id

URI_MARKER = "cas"
"""The path segment between the root and the execution ID in every URI these classes issue."""
FILE_ID_PREFIX = "file-"
PROJECT_ID_PREFIX = "project-"
CONTENT_NAME = "content"
"""The single entry of a ``file-`` snapshot; the basename lives in the URI, so equal bytes share it."""


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


def uri_prefix(uri_root: str) -> str:
    """What every URI under ``uri_root`` starts with: ``<uri_root>/cas/``."""
    return f"{uri_root}/{URI_MARKER}/"


def check_name(name: str, context: str) -> str:
    """``name`` if it can be one file name in a directory; else :class:`ConfigurationError`
    mentioning ``context`` (the path or URI it came from)."""
    if name in ("", ".", "..") or "/" in name or "\x00" in name or len(os.fsencode(name)) > 255:
        raise ConfigurationError(f"{context!r} does not end in a usable file name")
    return name


def file_id(digest: str) -> str:
    """The execution ID of a file whose bytes have BLAKE3 ``digest``."""
    return FILE_ID_PREFIX + digest


def project_id(workflow_snapshot_id: object) -> str:
    """The execution ID of a project uploaded for ``workflow_snapshot_id``; checked like any ID."""
    return check_execution_id(PROJECT_ID_PREFIX + str(workflow_snapshot_id))


def parse_uri(uri: object, prefix: str, owner: str) -> BlobRef:
    """The execution and basename ``uri`` names, if it is ``<prefix><execution id>/<file name>``.

    Raises :class:`ConfigurationError` (naming ``owner``, the manager class) for anything else: a
    URI under another root, extra or missing segments, an invalid execution ID or file name, or a
    ``file-`` ID that is not ``file-<64 hex digits>``.
    """
    if not isinstance(uri, str) or not uri.startswith(prefix):
        raise ConfigurationError(
            f"refusing {uri!r}: {owner} only reads URIs under {prefix} (the ones its upload returns)"
        )
    parts = uri[len(prefix) :].split("/")
    if len(parts) != 2:
        raise ConfigurationError(f"refusing {uri!r}: expected {prefix}<execution id>/<file name>")
    execution_id, name = parts
    check_execution_id(execution_id)
    check_name(name, uri)
    ref = BlobRef(uri, execution_id, name)
    if execution_id.startswith(FILE_ID_PREFIX) and not is_digest(ref.digest):
        raise ConfigurationError(f"refusing {uri!r}: {execution_id} is not file-<64 hex digits>")
    return ref


def make_uri(prefix: str, execution_id: str, name: str) -> str:
    """The URI of ``name`` stored as ``execution_id`` under ``prefix`` (see :func:`uri_prefix`)."""
    return f"{prefix}{execution_id}/{name}"
