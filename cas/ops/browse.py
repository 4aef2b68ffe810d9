"""Browsing a stored tree without restoring it: look up a path, list, diff two snapshots, open a file.

Every walk is iterative: a stored tree may be of any depth.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO, Protocol

from cas.errors import ConfigurationError, NotFound
from cas.format.trees import DIR, Entry
from cas.repo.reader import FileStream
from cas.repo.repository import Repository


class TreeSource(Protocol):
    """What browsing needs of a repository: directories by tree ID."""

    def read_tree(self, tree_id: str) -> list[Entry]: ...


@dataclass(frozen=True)
class Change:
    path: str
    kind: str  # "added", "removed" or "changed"


def split_path(path: str) -> list[str]:
    """The components of a path inside a snapshot; '' and '.' are the root; '..' is refused."""
    parts = [p for p in path.strip("/").split("/") if p and p != "."]
    if ".." in parts:
        raise ConfigurationError(f"path {path!r} may not contain '..'")
    return parts


def find_entry(repo: TreeSource, root: str, path: str, execution_id: str) -> Entry | None:
    """The tree entry at ``path`` under the tree ``root`` ('' is the root itself, returned as None)."""
    parts = split_path(path)
    if not parts:
        return None
    entries = repo.read_tree(root)
    found: Entry | None = None
    for depth, name in enumerate(parts):
        found = next((e for e in entries if e.name == name), None)
        if found is None or (depth < len(parts) - 1 and found.type != DIR):
            raise NotFound(f"{path} is not in execution {execution_id}")
        if depth < len(parts) - 1:
            entries = repo.read_tree(found.tree)
    return found


def walk(repo: TreeSource, tree: str, prefix: str, recursive: bool) -> Iterator[tuple[str, Entry]]:
    """``(path, entry)`` depth first, in name order."""
    stack = [(iter(repo.read_tree(tree)), prefix)]
    while stack:
        entries, where = stack[-1]
        e = next(entries, None)
        if e is None:
            stack.pop()
            continue
        yield where + e.name, e
        if recursive and e.type == DIR:
            stack.append((iter(repo.read_tree(e.tree)), where + e.name + "/"))


def open_file(repo: Repository, entry: Entry, path: str) -> BinaryIO:
    """A readable stream of one stored file; reading corrupt data raises IntegrityError."""
    return io.BufferedReader(FileStream(repo, entry, path), buffer_size=1 << 20)  # type: ignore[return-value]


def diff_trees(repo: TreeSource, old_root: str, new_root: str) -> list[Change]:
    """Changes in path order: a directory's own change after those inside it, an added or removed
    directory before its contents; unchanged subtrees (equal IDs) are skipped."""
    out: list[Change] = []
    # Work items, last first: a pair of trees to compare under a prefix, or a change to emit.
    stack: list[tuple[str | None, str | None, str] | Change] = [(old_root, new_root, "")]
    while stack:
        item = stack.pop()
        if isinstance(item, Change):
            out.append(item)
            continue
        old, new, prefix = item
        if old == new:
            continue
        a = {e.name: e for e in repo.read_tree(old)} if old else {}
        b = {e.name: e for e in repo.read_tree(new)} if new else {}
        todo: list[tuple[str | None, str | None, str] | Change] = []
        for name in sorted(set(a) | set(b), key=os.fsencode):
            path = prefix + name
            ea, eb = a.get(name), b.get(name)
            if ea is not None and eb is not None and ea.type == DIR and eb.type == DIR:
                todo.append((ea.tree, eb.tree, path + "/"))
                if (ea.mode, ea.mtime_ns) != (eb.mode, eb.mtime_ns) and ea.tree == eb.tree:
                    todo.append(Change(path + "/", "changed"))
                continue
            if ea is None:
                todo.append(Change(path, "added"))
                if eb is not None and eb.type == DIR:
                    todo.append((None, eb.tree, path + "/"))
            elif eb is None:
                todo.append(Change(path, "removed"))
                if ea.type == DIR:
                    todo.append((ea.tree, None, path + "/"))
            elif ea != eb:
                todo.append(Change(path, "changed"))
        stack.extend(reversed(todo))
    return out
