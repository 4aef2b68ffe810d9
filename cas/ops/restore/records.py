"""Directory records: what a restore knows of each directory it finished, so that a later restore
into the same place takes the directory's files as matching from one listing, unread.

When a restore finishes a directory whose every file entry it knows to hold the entry's content,
mode and mtime, it records in the files cache (see :meth:`~cas.repo.filescache.FilesRecorder.add_directory`)
the directory's path, device and inode, its tree ID, and a digest of its files' identities (name,
inode, ctime, mtime, size, mode). A later restore of the same tree there (``overwrite``) lists the
directory as it does anyway; if the directory is the same one and the identities of the tree's
files digest to what was recorded, every file matches: none is read, hashed or looked up alone.
Anything else (another tree, a file changed, replaced, renamed, added or gone) and the directory is
compared file by file as without a record.

Why an identity stands for content: any write to a file, through a descriptor or a mapping, and
any change of its mode, times, owner or links, sets its ctime to the current time, which cannot be
set back. A file's identity is known to hold its entry when the restore

* wrote it: it created the file (no mapping from before can write to it unnoticed) and gave it the
  entry's mtime, taken once it was named (:meth:`~cas.ops.restore.state.RestoreState._record_written`);
  an entry's mtime within the racy window of now is not trusted so (a later write in the same
  clock tick would leave it), as the files cache does not;
* compared it and found it matching by content (hashed after the identity was taken: by the
  walk against the listing, or by a file worker against its ``fstat``) and its ctime had
  *settled* (see :mod:`cas.ops.restore.settled`): no write from before can be pending;
* took it as matching by the files cache or by this directory's record: known already.

A file found matching only by its size and mtime (``trust_mtime``), patched in place, or given its
mode or mtime is not known so, and its directory is not recorded this time. Only a restore with
``overwrite`` records (one into an empty destination without it is a first restore, and recording
cost it 3-9%: the identity of every file it writes), and none with a selection (a directory is
then not restored whole) or told not to use the files cache.

Subtree records. A directory record spares reading a directory's files, but the walk still reads
the directory's tree, lists it and handles each entry in Python: most of an incremental restore's
time when most of the tree is unchanged (the previous execution's directories are mostly the new
one's, tree for tree). So a directory that holds nothing but files and directories, whose files
are all known (as above) and whose subdirectories all got a subtree digest in the same restore,
gets one too: the :func:`~cas.repo.filescache.subtree_digest` of its entries' identities (a
subdirectory's with its own digest), recorded with the directory. A later restore that finds, in
a directory it enters, a subdirectory whose entry names the recorded tree, with the entry's mode
and mtime, walks it with the compiled helper (``subtree_digest``: one call, listing and
``lstat`` only, no tree read and no Python per entry) and if the digest is the recorded one,
every entry below is the one that restore knew to hold its tree entry (by the argument above,
applied to every file; a directory's entries are all in its digest): the subdirectory is counted
as unchanged and not entered. Anything else below it (a file written, replaced or added, a
temporary of another restore, a directory renamed or its mode changed, a symlink) gives another
digest, and the subdirectory is walked as usual. The digest also holds whether set-user-ID and
set-group-ID bits were kept (``same_permissions``): a restore that decides otherwise walks it.
A subtree found whole is not read for chunks another file could reuse (see ``LocalChunks``):
those are fetched.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Iterable

from cas.format.trees import Entry
from cas.native.files import subtree_digest as walk_subtree
from cas.ops.restore import local as restore_local
from cas.ops.restore.state import DirJob, RestoreState
from cas.repo.filescache import DirRecord, listing_digest, subtree_digest

Identity = tuple[int, int, int, int, int]
"""A file's (inode, ctime, mtime, size, permission bits), as a directory record digests it."""


def identity(st: os.stat_result) -> Identity:
    return (st.st_ino, st.st_ctime_ns, st.st_mtime_ns, st.st_size, stat.S_IMODE(st.st_mode))


def dir_identity(st: os.stat_result) -> Identity:
    """A directory's identity in a subtree digest: its size (which file systems count differently)
    left out."""
    return (st.st_ino, st.st_ctime_ns, st.st_mtime_ns, 0, stat.S_IMODE(st.st_mode))


class DirectoryRecords(RestoreState):
    """The directory records a restore uses (:meth:`_match_record`) and writes (:meth:`_record_directory`)."""

    def _load_records(self) -> None:
        """Read the records of the destination and everything below it, and start recording (a
        restore of a whole directory with ``overwrite``, with the files cache): one query."""
        self._dir_records = {}
        self._subtrees = {}
        self._file_ids = None
        if self._recorder is None or self.select is not None or not self.overwrite:
            return
        self._file_ids = {}
        self._settled_before = time.time_ns() - restore_local.SETTLED_NS
        self._racy_from = time.time_ns() - self._recorder.racy_ns
        self._dir_records = self._recorder.directories(os.fsencode(self._dest))

    def _recorded_here(self, st: os.stat_result) -> bool:
        """Whether the destination (``st``) is the directory a restore recorded there, untouched
        since it finished (its ctime: any entry added, removed or renamed in it, or a new directory
        under an inode number reused, has another)."""
        record = self._dir_records.get(os.fsencode(self._dest))
        return record is not None and (record.dev, record.inode, record.ctime_ns) == (
            st.st_dev, st.st_ino, st.st_ctime_ns)

    def _match_record(
        self, job: DirJob, listing: list[tuple[str, os.stat_result | None]], matched: set[str],
    ) -> list[tuple[str, os.stat_result | None]]:
        """If the directory has a record of its tree and its files' identities in ``listing`` digest
        to it, every file entry matches: each is counted and added to ``matched`` (the record, kept
        in ``job``, stands for their identities). Returns what of the listing is left to survey
        (all of it when there is no match)."""
        if job.known is None or not self._dir_records:
            return listing
        record = self._dir_records.get(self._directory_path(job))
        if record is None or record.tree != job.tree or (record.dev, record.inode) != job.ident:
            return listing
        files = job.file_entries
        by_name = dict(listing)
        names: list[str] = []
        found: list[int] = []
        for entry in files:
            st = by_name.get(entry.name)
            # The mode this restore gives (a record made without set-ID bits by one that dropped them).
            if st is None or not stat.S_ISREG(st.st_mode) or stat.S_IMODE(st.st_mode) != self._mode(entry.mode):
                return listing
            names.append(entry.name)
            found += identity(st)
        if listing_digest(names, found) != record.listing:
            return listing
        known = job.known
        for i, entry in enumerate(files):
            matched.add(entry.name)
            known[entry.name] = tuple(found[5 * i : 5 * i + 5])  # type: ignore[assignment]
            self._count_match(entry, False)
        self.report.files_from_cache += len(files)
        job.recorded = record
        return [(name, st) for name, st in listing if name not in matched]

    def _know_compared(self, job: DirJob, entries: Iterable[Entry], listed: dict[str, os.stat_result]) -> None:
        """Files found matching by their content (hashed, after ``listed`` was taken) are known by
        their listed identity if it shows the entry's size, mtime and mode and had settled."""
        if job.known is None:
            return
        for entry in entries:
            st = listed.get(entry.name)
            if (st is not None and entry.name not in job.known and st.st_ctime_ns <= self._settled_before
                    and stat.S_ISREG(st.st_mode) and st.st_size == entry.size and st.st_mtime_ns == entry.mtime_ns
                    and stat.S_IMODE(st.st_mode) == self._mode(entry.mode)):
                job.known[entry.name] = identity(st)

    def _directory_path(self, job: DirJob) -> bytes:
        if not job.where:
            job.where = os.fsencode(os.path.join(self._dest, job.prefix[:-1]) if job.prefix else self._dest)
        return job.where

    def _record_directory(self, job: DirJob) -> None:
        """Record a finished directory if every file entry's identity is known (see the module)."""
        if job.tree is None or job.known is None or self._file_ids is None:
            self._forget_subdirs(job)
            return
        ctime_ns = self._ctime(job) if not job.owned else 0  # only the destination's is asked for
        if job.recorded is not None:  # every file matched by the record: it holds as it was
            assert self._recorder is not None
            record = job.recorded._replace(ctime_ns=ctime_ns)
            known = job.known
            self._recorder.add_directory(self._directory_path(job), self._with_subtree(
                job, record, [(e.name, known[e.name]) for e in job.file_entries]))
            return
        names: list[str] = []
        found: list[int] = []
        whole = True
        known, file_ids, prefix = job.known, self._file_ids, job.prefix
        for entry in job.file_entries:
            ident = known.get(entry.name)
            if ident is None:  # written, or compared by a file worker (its identity kept until now)
                named = file_ids.pop(prefix + entry.name, None)
                if named is not None and entry.mtime_ns < self._racy_from:
                    ident = (named[0], named[1], entry.mtime_ns, entry.size, self._mode(entry.mode))
            if ident is None:
                whole = False
            elif whole:
                names.append(entry.name)
                found += ident
        if whole:
            assert self._recorder is not None
            dev, inode = job.ident
            record = DirRecord(dev, inode, ctime_ns, job.tree, listing_digest(names, found))
            self._recorder.add_directory(self._directory_path(job), self._with_subtree(
                job, record, [(name, tuple(found[5 * i : 5 * i + 5])) for i, name in enumerate(names)]))
        else:
            self._forget_subdirs(job)

    def _with_subtree(self, job: DirJob, record: DirRecord, files: list[tuple[str, Identity]]) -> DirRecord:
        """``record`` with the directory's subtree digest (and its ctime now) if it can have one:
        nothing but ``files`` (all known) and subdirectories that got one; kept for its parent."""
        dirs = self._forget_subdirs(job)
        if dirs is None or job.fd is None:
            return record._replace(subtree=b"")
        try:
            st = os.fstat(job.fd)
        except OSError:
            return record._replace(subtree=b"")
        digest = subtree_digest(self._policy(), [(os.fsencode(name), ident) for name, ident in files], dirs)
        self._subtrees[job.prefix] = (dir_identity(st), digest)
        return record._replace(ctime_ns=st.st_ctime_ns, subtree=digest)

    def _forget_subdirs(self, job: DirJob) -> list[tuple[bytes, Identity, bytes]] | None:
        """Take the subtree digests of the directory's subdirectories (name, identity, digest); None
        if it holds entries of other kinds or some subdirectory has none."""
        dirs: list[tuple[bytes, Identity, bytes]] | None = [] if job.only_files_and_dirs else None
        for name in job.subdirs:
            found = self._subtrees.pop(job.prefix + name + "/", None)
            if found is None or dirs is None:
                dirs = None
                continue
            dirs.append((os.fsencode(name), *found))
        return dirs

    def _policy(self) -> int:
        """What a subtree digest holds of how this restore restores (see the module)."""
        return 1 if self.same_permissions else 0

    def _match_subtree(self, dir_fd: int, entry: Entry, path: str, present: os.stat_result | None) -> bool:
        """Whether the subdirectory ``entry`` (``path``, ``present`` its lstat) is, with everything
        below it, as a restore of the same tree recorded it (see the module): it is then counted as
        unchanged, whole, and not to be entered."""
        if not self._dir_records or present is None or not stat.S_ISDIR(present.st_mode):
            return False
        where = os.fsencode(os.path.join(self._dest, path))
        record = self._dir_records.get(where)
        mode = self._mode(entry.mode)
        if (record is None or not record.subtree or record.tree != entry.tree
                or (record.dev, record.inode) != (present.st_dev, present.st_ino)
                or stat.S_IMODE(present.st_mode) != mode or present.st_mtime_ns != entry.mtime_ns):
            return False
        try:
            fd = os.open(entry.name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        except OSError:
            return False
        try:
            st = os.fstat(fd)
            if ((st.st_dev, st.st_ino) != (record.dev, record.inode) or stat.S_IMODE(st.st_mode) != mode
                    or st.st_mtime_ns != entry.mtime_ns):
                return False
            if not self._found_whole(fd, record, dirs_above=1):
                return False
        except OSError:
            return False
        finally:
            os.close(fd)
        self._subtrees[path + "/"] = (dir_identity(st), record.subtree)
        assert self._recorder is not None
        self._recorder.add_directory(where, record._replace(ctime_ns=st.st_ctime_ns))  # seen again
        return True

    def _match_destination(self, dest_fd: int, tree: str | None, meta: tuple[int, int]) -> bool:
        """Whether the whole destination is as a restore of ``tree`` recorded it, with the mode and
        mtime ``meta`` (see the module): everything in it is then counted as unchanged, and there
        is nothing else to do."""
        if not self._dir_records or tree is None:
            return False
        where = os.fsencode(self._dest)
        record = self._dir_records.get(where)
        st = os.fstat(dest_fd)
        if (record is None or not record.subtree or record.tree != tree
                or (record.dev, record.inode, record.ctime_ns) != (st.st_dev, st.st_ino, st.st_ctime_ns)
                or stat.S_IMODE(st.st_mode) != self._mode(meta[0]) or st.st_mtime_ns != meta[1]):
            return False
        if not self._found_whole(dest_fd, record, dirs_above=0):
            return False
        assert self._recorder is not None
        self._recorder.add_directory(where, record)  # seen again
        return True

    def _found_whole(self, fd: int, record: DirRecord, *, dirs_above: int) -> bool:
        """Whether everything below the directory ``fd`` digests to ``record``'s subtree digest (one
        walk of the compiled helper); if so it is counted as unchanged: its files and directories,
        and ``dirs_above`` more (the subdirectory itself, unless the destination)."""
        walked = walk_subtree(fd, self._policy())
        if walked is None or walked[0] != record.subtree:
            return False
        _digest, files, dirs, nbytes = walked
        report = self.report
        report.dirs += dirs + dirs_above
        report.unchanged += files + dirs + dirs_above
        report.files += files
        report.bytes += nbytes
        report.files_from_cache += files
        if self.progress:
            self.progress(report.files, report.bytes)
        return True

    @staticmethod
    def _ctime(job: DirJob) -> int:
        """The directory's ctime now (its mode and mtime set), or 0 if it cannot be had (recorded
        for the destination only: :meth:`_recorded_here` is all that asks)."""
        try:
            return os.fstat(job.fd).st_ctime_ns if job.fd is not None else 0
        except OSError:
            return 0
