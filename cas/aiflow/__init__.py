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
directory, by threads or processes of one host, are serialised by an ``fcntl.flock`` lock (a file
under ``$CAS_HOME/locks``, never in the caller's directory) so the first fetches and the others
find its verified result; every failure raises; a URI not under this manager's root is refused; a
missing required key raises at construction, naming the key.

Index. Without ``index_url`` the engine's default index is used: ``$CAS_INDEX`` if set, else a
per-host SQLite database under ``$CAS_HOME``. That index only knows what was uploaded on this host,
so when the client, the server and the workers run on different hosts they must share an index:
set ``index_url`` (e.g. ``postgresql://...``) in the same ``blob_manager_config``.

The package, one job a module, each importing only those above it in this list:

* :mod:`cas.aiflow.uris`: the URI format, its parsing and checks (pure);
* :mod:`cas.aiflow.config`: AIFlow's config keys -> repository URL, backend options, URI root;
* :mod:`cas.aiflow.staging`: the private copy an upload stores;
* :mod:`cas.aiflow.download`: locking and the verified download that fetches once;
* :mod:`cas.aiflow.managers`: the ``BlobManager`` classes (AIFlow's interface over a Store);
* :mod:`cas.aiflow.cli`: ``cas aiflow ...``, the managers as commands for ``cas-aiflow-bridge``.

The classes below are loaded from :mod:`cas.aiflow.managers` on first access (AIFlow's factory
does ``getattr(import_module("cas.aiflow"), name)``), so importing this package, as every ``cas``
command does for its ``aiflow`` subcommand, imports nothing of AIFlow's.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cas.aiflow.managers import (
        CasBlobManager,
        HDFSBlobManager,
        LocalBlobManager,
        OssBlobManager,
        S3BlobManager,
    )
    from cas.aiflow.uris import BlobRef

_EXPORTS = {
    "BlobRef": "cas.aiflow.uris",
    "CasBlobManager": "cas.aiflow.managers",
    "HDFSBlobManager": "cas.aiflow.managers",
    "LocalBlobManager": "cas.aiflow.managers",
    "OssBlobManager": "cas.aiflow.managers",
    "S3BlobManager": "cas.aiflow.managers",
}


def __getattr__(name: str) -> Any:
    """The public names, looked up in their module on every access (not cached here, so a
    ``importlib.reload`` of :mod:`cas.aiflow.managers` is what callers see)."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


__all__ = [
    "BlobRef",
    "CasBlobManager",
    "HDFSBlobManager",
    "LocalBlobManager",
    "OssBlobManager",
    "S3BlobManager",
]
