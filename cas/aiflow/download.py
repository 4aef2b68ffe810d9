"""The verified download: one fetch per URI and directory on a host, renamed into place only when
complete and checked against the URI.

Protocol, for ``ref`` into ``local_dir`` (final path ``local_dir/<ref.name>``):

1. Take the download lock of ``(local_dir, ref.name)`` (:func:`download_lock`): an exclusive
   ``fcntl.flock`` on ``$CAS_HOME/locks/download-<hash of the directory's real path and the
   name>.lock``. Threads and processes of one host downloading one name into one directory are
   serialised (other names proceed); nothing is ever created in ``local_dir`` for the lock, and the
   lock file is removed by its holder (:mod:`cas.repo.locks`).
2. If the final path already holds the result (:func:`is_complete`), return without fetching: for
   a ``file-`` URI a regular file whose BLAKE3 is the URI's digest; for a tree, a directory next
   to a ``.cas-done-<tag>`` marker naming the execution.
3. Otherwise restore into a private ``.cas-download-*`` directory inside ``local_dir``, check a
   file against the URI's digest (the engine has checked every chunk and the whole file against
   the tree already; this catches an execution whose content is not what its ID says), and rename
   it to the final path, then fsync ``local_dir``. Any failure raises and leaves nothing under the
   final name; the temporary directory is always removed.
4. A tree whose final path holds an earlier download (its marker names another execution, or an
   update that did not finish) is updated in place instead, by the incremental restore: files that
   match are left, only what differs is fetched and written, what the new execution lacks is
   removed. The marker says ``updating`` meanwhile, so an interrupted update is never taken as
   complete, and is finished by the next download.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from backends.local import fsync_directory
from cas.aiflow.staging import COPY_BLOCK
from cas.aiflow.uris import CONTENT_NAME, BlobRef
from cas.errors import AlreadyExists, IntegrityError, NotFound
from cas.format.hashing import new_hasher
from cas.repo.locks import exclusive
from cas.repo.repository import default_home

DOWNLOAD_PREFIX = ".cas-download-"
DONE_PREFIX = ".cas-done-"
UPDATING = "updating "
"""Marker text while an earlier download is updated in place (no execution ID contains a space)."""


class RestoringStore(Protocol):
    """What a download needs of :class:`cas.store.Store`."""

    def get(self, execution_id: str) -> Any: ...

    def restore(
        self, execution_id: str, dest: str, *, path: str | None = None, overwrite: bool = False, delete: bool = False
    ) -> Any: ...


def download(ref: BlobRef, local_dir: str, store: Callable[[], RestoringStore]) -> tuple[str, bool]:
    """Make ``local_dir/<ref.name>`` hold what ``ref`` names; return (that path, whether it was
    fetched). ``local_dir`` must exist. ``store`` is called only when a fetch is needed.

    Raises :class:`NotFound` when nothing is stored under the URI, :class:`IntegrityError` when
    what is stored is not what the URI names, :class:`AlreadyExists` when a tree's final path is
    taken by something else (a non-empty directory or a file).
    """
    final = os.path.join(local_dir, ref.name)
    marker = os.path.join(local_dir, DONE_PREFIX + name_tag(ref.name))
    with download_lock(local_dir, ref.name):
        if is_complete(ref, final, marker):
            return final, False
        fetch(store(), ref, local_dir, final, marker)
        return final, True


def is_complete(ref: BlobRef, final: str, marker: str) -> bool:
    """Whether ``final`` already holds what ``ref`` names (step 2 of the protocol)."""
    digest = ref.digest
    if digest is not None:
        if not os.path.isfile(final) or os.path.islink(final):
            return False
        return hash_file(final) == digest
    # A directory only ever gets its final name by a rename after a complete restore, and the
    # marker says which execution it was.
    if not os.path.isdir(final) or os.path.islink(final):
        return False
    try:
        with open(marker, encoding="utf-8") as f:
            return f.read() == ref.execution_id
    except FileNotFoundError:
        return False


def fetch(store: RestoringStore, ref: BlobRef, local_dir: str, final: str, marker: str) -> None:
    """Restore, verify and rename into place (step 3 of the protocol). Call under the lock."""
    try:
        store.get(ref.execution_id)
    except NotFound:
        raise NotFound(f"{ref.uri}: nothing is stored under this URI (execution {ref.execution_id})") from None
    if ref.digest is None and _holds_earlier_download(final, marker):
        _write_marker(marker, UPDATING + ref.execution_id)
        store.restore(ref.execution_id, final, overwrite=True, delete=True)
        _write_marker(marker, ref.execution_id)
        fsync_directory(local_dir)
        return
    tmp = tempfile.mkdtemp(prefix=DOWNLOAD_PREFIX, dir=local_dir)
    try:
        if ref.digest is not None:
            store.restore(ref.execution_id, tmp, path=CONTENT_NAME)
            produced = os.path.join(tmp, CONTENT_NAME)
            if not os.path.isfile(produced) or os.path.islink(produced):
                raise IntegrityError(
                    f"{ref.uri}: execution {ref.execution_id} holds no file {CONTENT_NAME}"
                )
            if hash_file(produced, fsync=True) != ref.digest:
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


def _holds_earlier_download(final: str, marker: str) -> bool:
    """Whether ``final`` is a directory a download put there (step 4): its marker exists."""
    return os.path.isdir(final) and not os.path.islink(final) and os.path.isfile(marker)


def name_tag(name: str) -> str:
    """A short fixed-length stand-in for a basename, for marker file names."""
    return hashlib.sha256(os.fsencode(name)).hexdigest()[:32]


def hash_file(path: str, *, fsync: bool = False) -> str:
    """The BLAKE3 of the file at ``path``; with ``fsync``, its data is flushed to disk too."""
    hasher = new_hasher()
    with open(path, "rb") as f:
        while block := f.read(COPY_BLOCK):
            hasher.update(block)
        if fsync:
            os.fsync(f.fileno())
    return str(hasher.hexdigest())


def _write_marker(path: str, execution_id: str) -> None:
    tmp = f"{path}.tmp-{os.getpid()}-{threading.get_ident()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(execution_id)
    os.replace(tmp, path)


LOCK_DIR = "locks"
"""Subdirectory of ``$CAS_HOME`` holding download locks while they are held."""


@contextlib.contextmanager
def download_lock(local_dir: str, name: str) -> Iterator[None]:
    """Hold the lock for downloads of ``name`` into ``local_dir`` on this host.

    The lock lives under ``$CAS_HOME/locks``, never in ``local_dir``: a caller's directory holds
    only results. It is named by a hash of the directory's real path (so two paths to one
    directory share it) and the name. Waiting blocks in the kernel; the lock dies with its holder.
    Processes must share ``$CAS_HOME`` to exclude each other (the default, ``~/.cas``, is per user).
    """
    where = os.fsencode(os.path.realpath(local_dir)) + b"\0" + os.fsencode(name)
    locks = os.path.join(default_home(), LOCK_DIR)
    os.makedirs(locks, mode=0o700, exist_ok=True)
    with exclusive(os.path.join(locks, f"download-{hashlib.sha256(where).hexdigest()[:32]}.lock")):
        yield
