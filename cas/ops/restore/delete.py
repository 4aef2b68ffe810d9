"""Removing what a restore's destination holds and the tree lacks (``delete``), never following a
symlink and never outside the destination.

A directory's subtree is walked by one thread, each directory opened relative to its parent with
``O_NOFOLLOW``; the unlinks and ``rmdir`` calls it finds are handed to a small pool of threads.
:meth:`Remover.submit` runs the walk itself on a thread of the remover's own (a restore goes on
walking its tree meanwhile, and its file workers are not held up by removals). On
file systems where such calls mostly wait (for the journal), the waits of many threads overlap: a
deleted package of a few thousand files goes many times faster than one call after another. A
directory is removed only after its files and subdirectories, and its descriptor is closed only
after every call made through it has returned. Temporaries of live restores are left, and so are
the directories holding them.
"""

from __future__ import annotations

import errno
import os
import stat
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from cas.ops.restore.temps import TMP_PREFIX, is_abandoned

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
#: Threads making the calls; names unlinked per call to the pool.
THREADS = 8
#: Threads walking the subtrees given to :meth:`Remover.submit`.
WALKERS = 2
_BATCH = 16
#: Directories of one walk open at once (beyond those on the walk's path), bounding descriptors.
_OPEN = 128


def unlink_names(dir_fd: int, names: list[str]) -> int:
    """Unlink ``names`` (none of them a directory) from the directory; how many were there. An
    error is raised after trying the others."""
    removed = 0
    error: OSError | None = None
    for name in names:
        try:
            os.unlink(name, dir_fd=dir_fd)
            removed += 1
        except FileNotFoundError:
            pass
        except OSError as exc:
            error = error or exc
    if error is not None:
        raise error
    return removed


@dataclass(eq=False)
class _Dir:
    fd: int
    name: str
    parent_fd: int
    parent: _Dir | None
    calls: list[Future[int]] = field(default_factory=list)
    """Unlinks in this directory and removals of its subdirectories: all awaited before its fd closes."""


class Remover:
    """Removes entries from directories given by descriptor; shared by a restore's threads."""

    def __init__(self, threads: int = THREADS) -> None:
        self._threads = threads
        self._pool: ThreadPoolExecutor | None = None
        self._walkers: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def close(self) -> None:
        """Wait for every removal submitted, then stop the threads."""
        if self._walkers is not None:
            self._walkers.shutdown(wait=True)
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    def submit(self, dir_fd: int, name: str) -> Future[int]:
        """:meth:`remove` on one of the remover's walker threads; ``dir_fd`` must stay open until
        the future is done."""
        with self._lock:
            if self._walkers is None:
                self._walkers = ThreadPoolExecutor(WALKERS, thread_name_prefix="cas-restore-delete-walk")
        return self._walkers.submit(self.remove, dir_fd, name)

    def remove(self, dir_fd: int, name: str) -> int:
        """Remove ``name`` from the directory, a whole subtree if it is a directory. Returns how many
        entries were removed. Must not be called from the pool's own threads."""
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return 0
        if not stat.S_ISDIR(st.st_mode):
            return unlink_names(dir_fd, [name])
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix="cas-restore-delete")
        return _remove_tree(self._pool, dir_fd, name)


def _remove_tree(pool: ThreadPoolExecutor, dir_fd: int, name: str) -> int:
    """Depth first without recursion. Every call goes to ``pool`` in the order the walk finds it,
    and a directory's removal waits only on calls submitted before it: the pool takes tasks in
    submission order, so whatever a task waits on is running or done, and no wait is circular."""
    root = _Dir(os.open(name, _DIR_FLAGS, dir_fd=dir_fd), name, dir_fd, None)
    entered: dict[int, _Dir] = {id(root): root}  # open, their removal not yet submitted
    finishing: deque[Future[int]] = deque()  # submitted removals, oldest first (to bound open fds)
    # ("enter", name, parent) for a subdirectory to enter; ("exit", node) once all below it is handed out.
    stack: list[tuple[str, str, _Dir] | tuple[str, _Dir]] = []
    root_future: Future[int] | None = None
    try:
        _enter(pool, root, stack)
        while stack:
            step = stack.pop()
            if step[0] == "enter":
                _, child, parent = step  # type: ignore[misc]
                while finishing and (finishing[0].done() or len(finishing) > _OPEN):
                    # Waited on, not raised here: a failed removal reaches its parent's through
                    # ``calls`` and the root's result, and the walk goes on removing the rest.
                    finishing.popleft().exception()
                try:
                    node = _Dir(os.open(child, _DIR_FLAGS, dir_fd=parent.fd), child, parent.fd, parent)
                except FileNotFoundError:
                    continue
                entered[id(node)] = node
                _enter(pool, node, stack)
                continue
            node = step[1]  # type: ignore[assignment]
            future = pool.submit(_finish, node)
            del entered[id(node)]
            finishing.append(future)
            if node.parent is None:
                root_future = future
            else:
                node.parent.calls.append(future)
    except BaseException:
        for node in reversed(list(entered.values())):
            try:
                _settle(node.calls)
            except BaseException:  # noqa: BLE001, S110 - the walk's own error is raised
                pass
            os.close(node.fd)
        raise
    assert root_future is not None
    return root_future.result()


def _enter(pool: ThreadPoolExecutor, node: _Dir, stack: list) -> None:  # type: ignore[type-arg]
    """List a directory: its files go to the pool in batches, its subdirectories onto the stack."""
    files: list[str] = []
    stack.append(("exit", node))
    for child in os.scandir(node.fd):
        try:
            if child.name.startswith(TMP_PREFIX) and not is_abandoned(child.name, child.stat(follow_symlinks=False)):
                continue  # a live restore's: left, and so is this directory
            is_dir = child.is_dir(follow_symlinks=False)
        except FileNotFoundError:
            continue
        if is_dir:
            stack.append(("enter", child.name, node))
        else:
            files.append(child.name)
    for i in range(0, len(files), _BATCH):
        node.calls.append(pool.submit(unlink_names, node.fd, files[i:i + _BATCH]))


def _finish(node: _Dir) -> int:
    """Once every call in the directory has returned: close it and remove it (if it is empty: a
    live restore's temporary may remain). The entries removed below it and itself."""
    try:
        removed = _settle(node.calls)
    finally:
        os.close(node.fd)
    try:
        os.rmdir(node.name, dir_fd=node.parent_fd)
        return removed + 1
    except OSError as exc:
        if exc.errno not in (errno.ENOENT, errno.ENOTEMPTY, errno.EEXIST):
            raise
        return removed


def _settle(calls: list[Future[int]]) -> int:
    """Wait for every call; their sum, or the first error once all have returned."""
    removed = 0
    error: BaseException | None = None
    for call in calls:
        try:
            removed += call.result()
        except BaseException as exc:  # noqa: BLE001 - raised once all are done
            error = error or exc
    if error is not None:
        raise error
    return removed
