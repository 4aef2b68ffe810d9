"""The ``cas`` fsspec filesystem: read stored executions from pandas, pyarrow, numpy, PyTorch...

    import fsspec
    fs = fsspec.filesystem("cas", repo="s3://bucket/cas", index="postgresql://...")
    fs.ls("run-42/metrics")
    with fsspec.open("cas://run-42/src/train.py", repo="s3://bucket/cas") as f: ...

Registered under the ``fsspec.specs`` entry point (``pip install 'cas-store[fsspec]'``); ``repo``
and ``index`` default to ``CAS_REPO`` and ``CAS_INDEX`` as on the command line. Paths are
``EXECUTION_ID/path/in/tree`` and the top level lists the executions (:mod:`cas.ops.view`).

Read-only: every write raises :class:`ReadOnlyError`. A file opened for reading fetches only the
chunks covering each read (:class:`cas.repo.ranges.RangeReader`, read-ahead for sequential reads);
a chunk that fails verification raises :class:`cas.errors.ReadError` (an ``OSError``, EIO) naming
the file. ``checksum`` and ``ukey`` are the file's BLAKE3 (a tree's ID for a directory).

fsspec is imported here and nowhere else in cas.
"""

from __future__ import annotations

import errno
from typing import Any

from backends.base import Backend
from cas import passphrase
from cas.errors import MissingDependency
from cas.format.trees import DIR, FILE, SYMLINK
from cas.ops.view import SMALL_FILE, Node, SnapshotView
from cas.store import Store

try:
    from fsspec import AbstractFileSystem
    from fsspec.spec import AbstractBufferedFile
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise MissingDependency("the cas fsspec filesystem needs fsspec: pip install 'cas-store[fsspec]'") from exc

_TYPES = {FILE: "file", DIR: "directory", SYMLINK: "other"}


class ReadOnlyError(NotImplementedError, PermissionError):
    """A write to the cas filesystem. A NotImplementedError, as fsspec's read-only filesystems raise,
    and a PermissionError with errno EROFS, as a read-only file system answers."""

    def __init__(self, what: str) -> None:
        message = f"the cas filesystem is read-only: cannot {what} (store with 'cas snapshot')"
        super().__init__(message)
        self.errno = errno.EROFS
        self.strerror = message

    def __str__(self) -> str:
        return str(self.strerror)


class CasFileSystem(AbstractFileSystem):  # type: ignore[misc]
    """Stored executions as a read-only filesystem; see the module's documentation."""

    protocol = "cas"
    root_marker = ""

    def __init__(
        self,
        repo: str | Backend | None = None,
        index: str | None = None,
        executions: list[str] | None = None,
        chunk_cache: str | bool | None = None,
        password_file: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        # An encrypted repository's passphrase: the first line of password_file, else $CAS_PASSWORD.
        password = passphrase.source(password_file, terminal=False)
        self.store = Store.open(repo, index=index, create=False, chunk_cache=chunk_cache, password=password)
        self.view: SnapshotView = self.store.view(executions)

    def close(self) -> None:
        """Close the repository and its index."""
        self.store.close()

    @classmethod
    def _strip_protocol(cls, path: Any) -> str:
        if isinstance(path, list):
            return [cls._strip_protocol(p) for p in path]  # type: ignore[return-value]
        return str(path).removeprefix("cas://").strip("/")

    @staticmethod
    def _get_kwargs_from_urls(path: str) -> dict[str, Any]:
        return {}

    # -- reading ------------------------------------------------------------------------------

    def _details(self, node: Node) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": node.path,
            "size": node.size,
            "type": _TYPES[node.type],
            "mode": node.mode,
            "mtime": node.mtime_ns / 1e9,
            "islink": node.type == SYMLINK,
        }
        if node.type == FILE:
            out["digest"] = node.digest
        elif node.type == SYMLINK:
            out["destination"] = node.target
        else:
            out["tree"] = node.tree
        return out

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> list[Any]:
        node = self.view.lookup(self._strip_protocol(path))
        nodes = self.view.children(node) if node.type == DIR else [node]
        if detail:
            return [self._details(n) for n in nodes]
        return [n.path for n in nodes]

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        return self._details(self.view.lookup(self._strip_protocol(path)))

    def exists(self, path: str, **kwargs: Any) -> bool:
        try:
            self.view.lookup(self._strip_protocol(path))
        except FileNotFoundError:
            return False
        return True

    def checksum(self, path: str) -> int:
        """The content's BLAKE3 (a directory's tree ID) as an integer: equal content, equal checksum."""
        return int(self.ukey(path), 16)

    def ukey(self, path: str) -> str:
        node = self.view.lookup(self._strip_protocol(path))
        if node.type == FILE:
            return node.digest
        if node.type == DIR:
            return node.tree or "top"
        from cas.format.hashing import hexdigest

        return hexdigest(node.target.encode("utf-8", "surrogateescape"))

    def modified(self, path: str) -> Any:
        import datetime as dt

        node = self.view.lookup(self._strip_protocol(path))
        return dt.datetime.fromtimestamp(node.mtime_ns / 1e9, dt.timezone.utc)

    def cat_file(self, path: str, start: int | None = None, end: int | None = None, **kwargs: Any) -> bytes:
        node = self.view.lookup(self._strip_protocol(path))
        if not start and end is None and node.type == FILE and node.size <= SMALL_FILE:
            return self.view.read_whole(node)  # checked whole too (size and digest)
        reader = self.view.open(node)
        begin = 0 if start is None else (start if start >= 0 else max(0, node.size + start))
        stop = node.size if end is None else (end if end >= 0 else max(0, node.size + end))
        return reader.read(begin, max(0, stop - begin))

    def _open(
        self,
        path: str,
        mode: str = "rb",
        block_size: int | None = None,
        autocommit: bool = True,
        cache_options: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> CasFile:
        if mode != "rb":
            raise ReadOnlyError(f"open {path!r} with mode {mode!r}")
        node = self.view.lookup(self._strip_protocol(path))
        return CasFile(self, node, block_size=block_size, cache_options=cache_options, **kwargs)

    # -- writing: refused ---------------------------------------------------------------------

    def mkdir(self, path: str, create_parents: bool = True, **kwargs: Any) -> None:
        raise ReadOnlyError(f"make directory {path!r}")

    def makedirs(self, path: str, exist_ok: bool = False) -> None:
        raise ReadOnlyError(f"make directory {path!r}")

    def rmdir(self, path: str) -> None:
        raise ReadOnlyError(f"remove {path!r}")

    def rm_file(self, path: str) -> None:
        raise ReadOnlyError(f"remove {path!r}")

    def _rm(self, path: str) -> None:
        raise ReadOnlyError(f"remove {path!r}")

    def rm(self, path: str, recursive: bool = False, maxdepth: int | None = None) -> None:
        raise ReadOnlyError(f"remove {path!r}")

    def cp_file(self, path1: str, path2: str, **kwargs: Any) -> None:
        raise ReadOnlyError(f"copy to {path2!r}")

    def mv(self, path1: str, path2: str, *args: Any, **kwargs: Any) -> None:
        raise ReadOnlyError(f"move {path1!r}")

    def pipe_file(self, path: str, value: bytes, mode: str = "overwrite", **kwargs: Any) -> None:
        raise ReadOnlyError(f"write {path!r}")

    def put_file(self, lpath: str, rpath: str, *args: Any, **kwargs: Any) -> None:
        raise ReadOnlyError(f"write {rpath!r}")

    def touch(self, path: str, truncate: bool = True, **kwargs: Any) -> None:
        raise ReadOnlyError(f"touch {path!r}")

    def setxattrs(self, path: str, **kwargs: Any) -> None:
        raise ReadOnlyError(f"set attributes of {path!r}")


class CasFile(AbstractBufferedFile):  # type: ignore[misc]
    """A seekable read-only file of a stored execution. Without a ``cache_type`` of the caller's,
    reads go straight to the range reader, which fetches only the chunks each read needs (and reads
    ahead when reads are sequential); fsspec's own caches would fetch whole blocks around them."""

    def __init__(self, fs: CasFileSystem, node: Node, **kwargs: Any) -> None:
        self._reader = fs.view.open(node)
        kwargs.setdefault("cache_type", "none")
        if kwargs.get("block_size") is None:
            kwargs["block_size"] = "default"
        if kwargs.get("cache_options") is None:
            kwargs.pop("cache_options", None)
        super().__init__(fs, node.path, mode="rb", size=node.size, **kwargs)
        self.details = fs._details(node)

    def _fetch_range(self, start: int, end: int) -> bytes:
        return self._reader.read(start, end - start)
