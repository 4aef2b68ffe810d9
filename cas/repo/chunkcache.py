"""A local cache of verified chunks, shared by every process on a host.

Restoring many executions that share dependencies from a remote backend then downloads each chunk
once. Entries are raw chunk bytes under ``<root>/<id[:2]>/<id>``, written to a temporary name and
renamed, so a reader never sees a partial entry; every read is re-hashed, and an entry that does not
match its name is deleted and treated as a miss. The cache is never the only copy of anything.
"""

from __future__ import annotations

import os
import secrets

from cas.format.hashing import hexdigest, is_digest


class ChunkCache:
    def __init__(self, root: str) -> None:
        self.root = root
        os.makedirs(root, mode=0o700, exist_ok=True)

    def _path(self, chunk_id: str) -> str:
        if not is_digest(chunk_id):
            raise ValueError(f"not a chunk id: {chunk_id!r}")
        return os.path.join(self.root, chunk_id[:2], chunk_id)

    def __contains__(self, chunk_id: str) -> bool:
        return os.path.exists(self._path(chunk_id))

    def get(self, chunk_id: str) -> bytes | None:
        path = self._path(chunk_id)
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError:
            return None
        if hexdigest(data) != chunk_id:
            try:
                os.unlink(path)
            except OSError:
                pass
            return None
        return data

    def put(self, chunk_id: str, data: bytes) -> None:
        """Best effort: a full disk or a race with another process is not an error."""
        path = self._path(chunk_id)
        if os.path.exists(path):
            return
        tmp = f"{path}.tmp-{secrets.token_hex(6)}"
        try:
            os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except OSError:
            try:
                os.unlink(tmp)
            except OSError:
                pass
