"""Walking what snapshots reference: the roots (index rows and snapshot objects) and their trees."""

from __future__ import annotations

from dataclasses import dataclass

from cas.errors import CasError
from cas.format.keys import SNAPSHOT_PREFIX
from cas.format.records import SnapshotRecord
from cas.format.trees import DIR, FILE
from cas.repo.repository import Repository


@dataclass(frozen=True)
class Root:
    execution_id: str
    tree: str
    damaged: bool
    in_index: bool
    on_backend: bool


def snapshot_roots(repo: Repository) -> tuple[list[Root], list[tuple[str, str]]]:
    """Every snapshot named by an index row or a snapshot object, and records that could not be read.

    Objects count as roots even when the index lacks them (a writer that crashed between claiming
    its ID and inserting its row, or another host's index), so GC never frees what they use.
    """
    rows = {r.execution_id: r for r in repo.index.snapshots()}
    objects = {info.key[len(SNAPSHOT_PREFIX):] for info in repo.backend.list(SNAPSHOT_PREFIX)}
    roots: list[Root] = []
    unreadable: list[tuple[str, str]] = []
    for execution_id in sorted(set(rows) | objects):
        row = rows.get(execution_id)
        if row is not None:
            roots.append(Root(execution_id, row.root_tree, row.damaged, True, execution_id in objects))
            continue
        try:
            record = SnapshotRecord.from_json(repo.backend.get(SNAPSHOT_PREFIX + execution_id))
        except FileNotFoundError:
            continue  # forgotten between the listing and the read
        except CasError as exc:
            unreadable.append((execution_id, str(exc)))
            continue
        if record.execution_id != execution_id:
            unreadable.append((execution_id, f"the record names execution {record.execution_id}"))
            continue
        roots.append(Root(execution_id, record.root, False, False, True))
    return roots, unreadable


def collect_blobs(
    repo: Repository, tree: str, into: set[str], seen_trees: set[str]
) -> list[str]:
    """Add every blob reachable from ``tree`` (tree nodes, their parts, chunks) to ``into``, walking
    each tree of ``seen_trees`` once; returns ``"path: error"`` for each tree that could not be read.
    Iterative, so a tree of any depth the writer accepted is walked."""
    broken: list[str] = []
    stack = [(tree, "")]
    while stack:
        tree, prefix = stack.pop()
        if tree in seen_trees:
            continue
        seen_trees.add(tree)
        into.add(tree)
        try:
            entries, parts = repo.read_directory(tree)
        except CasError as exc:
            broken.append(f"{prefix or '/'}: {exc}")
            continue
        into.update(parts)
        for entry in entries:
            if entry.type == FILE:
                into.update(entry.chunks)
            elif entry.type == DIR:
                stack.append((entry.tree, prefix + entry.name + "/"))
    return broken


def reachable_blobs(repo: Repository, roots: list[Root]) -> tuple[set[str], list[tuple[str, str]]]:
    """Blob IDs reachable from ``roots`` (trees once each) and ``(execution id, path)`` of unreadable trees."""
    seen_trees: set[str] = set()
    reachable: set[str] = set()
    broken: list[tuple[str, str]] = []
    for root in roots:
        broken.extend((root.execution_id, where) for where in collect_blobs(repo, root.tree, reachable, seen_trees))
    return reachable, broken
