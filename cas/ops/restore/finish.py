"""Finishing the directories of a restore: their files awaited and recorded in the report, then
their mode and mtime applied, and their descriptors closed.

A directory is finished once its subdirectories are done and it is among the oldest queued (the
walk keeps a bounded number waiting); one whose removals still run is set aside and finished after
them, so that its mtime is set last. A descriptor is closed only after every file written through it
is done (a worker must never use a closed, possibly reused, descriptor); an ancestor far up the
walk's path is released so and reopened through ``..`` later. Failures of single entries are
recorded; the first fatal error is raised once every file of the directory is done.
"""

from __future__ import annotations

import os
import stat

from cas.errors import CasError, Unavailable
from cas.ops.restore.records import DirectoryRecords
from cas.ops.restore.report import Done
from cas.ops.restore.state import DIR_FLAGS, DirJob

#: Directories kept open past their turn to be finished because removals in them still run.
_OPEN_REMOVING = 64
#: Files of the directories queued to be finished, at most (but the newest directory's): each
#: holds its path and its outcome until finished, and 64 directories of 1,000 small files held
#: 25 MiB of them.
_QUEUED_FILES = 8192


class DirectoryFinishing(DirectoryRecords):
    """Directories of the walk finished: files awaited and counted, mode and mtime set, closed."""

    def _release(self, job: DirJob) -> None:
        """Close an ancestor's descriptor to bound how many are open, after its files are written
        (a worker must never use a closed, possibly reused, descriptor)."""
        if not job.owned or job.fd is None:
            return
        fatal = self._settle(job)
        os.close(job.fd)
        job.fd = None
        if fatal is not None:
            raise fatal

    def _reopen(self, job: DirJob, child: DirJob) -> None:
        """Reopen a released directory through its child's ``..``, refusing another directory."""
        assert child.fd is not None
        fd = os.open("..", DIR_FLAGS, dir_fd=child.fd)
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != job.ident:
            os.close(fd)
            raise Unavailable("restore stopped: a directory of the destination was moved during the restore")
        job.fd = fd

    def _queue(self, job: DirJob) -> None:
        """Queue a directory whose subdirectories are done, to be finished by :meth:`_drain`."""
        job.files = sum(len(paths) for paths, _ in job.pending)
        self._queued_files += job.files
        self._jobs.append(job)

    def _drain(self, keep: int) -> None:
        """Finish queued directories until ``keep`` are left (0: all) and, but the newest, they
        hold no more than :data:`_QUEUED_FILES` files. A directory whose removals
        still run is set aside instead, and finished once they are done (its mode and mtime then
        set after them), so that the walk goes on while a large subtree is deleted; at most
        :data:`_OPEN_REMOVING` wait so."""
        while len(self._jobs) > keep or (len(self._jobs) > 1 and self._queued_files > _QUEUED_FILES):
            job = self._jobs.popleft()
            self._queued_files -= job.files
            if keep and any(not removal.done() for _, removal in job.removals):
                self._removing.append(job)
            else:
                self._finish(job)
        waiting = len(self._removing)
        for _ in range(waiting):
            job = self._removing.popleft()
            if not keep or waiting > _OPEN_REMOVING or all(removal.done() for _, removal in job.removals):
                self._finish(job)
                waiting -= 1
            else:
                self._removing.append(job)

    def _drop_queued(self) -> None:
        """On the way out after a fatal error or a Ctrl-C: the file tasks no thread has started are
        cancelled (their files are not written; those being written finish), so that stopping waits
        for what is running, not for everything the walk handed out (with a slow repository, more
        than the command's grace after a Ctrl-C). A task waits only on tasks submitted before it,
        which a thread took first (see ``LocalChunks``): no running task waits on a cancelled one."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._whole_pool.shutdown(wait=False, cancel_futures=True)

    def _abandon(self) -> None:
        """After a fatal error: drop the queued file tasks, wait for whatever is still being written,
        close every descriptor."""
        self._drop_queued()
        while self._jobs or self._removing:
            self._finish((self._jobs or self._removing).popleft(), quiet=True)
        self._queued_files = 0

    def _finish(self, job: DirJob, *, quiet: bool = False) -> None:
        """Wait for *every* file of the directory before closing its descriptor (a worker must never
        use a closed, possibly reused, descriptor); a fatal error is raised after, unless ``quiet``."""
        fatal: BaseException | None = None
        try:
            fatal = self._settle(job)
            if fatal is None and not quiet:
                if job.meta is not None and job.fd is not None:
                    try:
                        self._apply_dir_meta(job.fd, *job.meta)
                    except OSError as exc:
                        self._fail("(directory)", exc)
                if job.owned:  # the destination itself is recorded once its mode and mtime are set
                    self._record_directory(job)
        finally:
            if job.owned and job.fd is not None:
                os.close(job.fd)
                job.fd = None
        if fatal is not None and not quiet:
            raise fatal

    def _settle(self, job: DirJob) -> BaseException | None:
        """Wait for the directory's files and record them; the first fatal error is returned."""
        fatal: BaseException | None = None
        removals, job.removals = job.removals, []
        for path, removal in removals:
            try:
                removed = removal.result()
                with self._lock:  # file workers count the directories they remove in the way too
                    self.report.deleted += removed
            except BaseException as exc:  # noqa: BLE001 - a fatal one is re-raised once all files are done
                fatal = self._absorb(path, exc, fatal)
        pending, job.pending = job.pending, []
        for paths, future in pending:
            try:
                results = future.result()
            except BaseException as exc:  # noqa: BLE001 - recorded for each of its files below
                results = [exc] * len(paths)
            for path, done in zip(paths, results):
                fatal = self._record(path, done, fatal)
        return fatal

    def _record(self, path: str, done: Done | BaseException, fatal: BaseException | None) -> BaseException | None:
        """Count a file's outcome in the report; returns the first fatal error so far."""
        try:
            if isinstance(done, BaseException):
                raise done
            self.report.bytes += done.size
            self.report.files += 1
            if done.written:
                self.report.written += 1
                self.report.written_bytes += done.size if done.patched < 0 else done.patched
                self.report.reused_bytes += done.reused
            else:
                self.report.unchanged += 1
                self.report.meta_fixed += done.meta_fixed
            if self.progress:
                self.progress(self.report.files, self.report.bytes)
        except BaseException as exc:  # noqa: BLE001 - a fatal one is re-raised once all files are done
            fatal = self._absorb(path, exc, fatal)
        return fatal

    def _absorb(self, path: str, exc: BaseException, fatal: BaseException | None) -> BaseException | None:
        """An entry's failure: a cas or OS error is recorded against ``path`` (an unavailable
        repository stops the restore); anything else is fatal. Returns the first fatal error so far."""
        if isinstance(exc, (CasError, OSError)):
            try:
                self._fail(path, exc)
            except Unavailable as stop:
                return fatal or stop
            return fatal
        return fatal or exc

    def _apply_dir_meta(self, fd: int, mode: int, mtime_ns: int) -> None:
        st = os.fstat(fd)  # cheaper than setting what is already so (an unchanged directory)
        if stat.S_IMODE(st.st_mode) != self._mode(mode):
            os.fchmod(fd, self._mode(mode))
        if st.st_mtime_ns != mtime_ns:
            os.utime(fd, ns=(mtime_ns, mtime_ns))
