"""What a directory of the destination already holds against its tree entries (with ``overwrite``).

The walk lists each directory once (:meth:`DestinationSurvey._survey`): entries the tree lacks are
handed to the remover (``delete``), temporaries whose owner is gone are removed; the files of a
directory an earlier restore recorded with this tree, showing the identities it recorded, all match
at once (see :mod:`cas.ops.restore.records`); elsewhere small files in
place are compared with their entries there and then (or, when their content is not in memory, on
comparer threads of their own, their disk reads overlapping); with ``trust_mtime`` a file whose
lstat shows the entry's size, mtime and mode is taken as matching unread
(:meth:`DestinationSurvey._match_in_place`). Without it, what the child hashing ahead found
(:mod:`cas.ops.restore.hash_ahead`) spares reading a small file that is as it was then, and the
files cache spares reading a large one that an earlier restore created, or a snapshot read, and
that has kept its identity since (:meth:`DestinationSurvey._match_recorded`). A match is
counted here and never reaches a file worker. When a file matches is
:mod:`cas.ops.restore.local`'s to say (``match_whole``, ``examine_file``).
"""

from __future__ import annotations

import os
import stat
from concurrent.futures import ThreadPoolExecutor, wait

from cas.format.trees import FILE, Entry
from cas.native.files import hash_files, scan_dir
from cas.ops.restore import hash_ahead
from cas.ops.restore import local as restore_local
from cas.ops.restore.hash_ahead import judge
from cas.ops.restore.local import examine_file, match_whole
from cas.ops.restore.records import DirectoryRecords, identity
from cas.ops.restore.state import DirJob, is_file
from cas.ops.restore.temps import TMP_PREFIX, is_abandoned
from cas.repo.filescache import FilesCache

#: Files in place up to this size are compared with the tree by the walk itself as it lists their
#: directory, not by a worker: handing small files to other threads costs more than it overlaps
#: (each hand-off and each call that releases the GIL makes the threads wait for each other)...
_COMPARE_AT_ONCE = hash_ahead.SMALL
#: ...unless their content is not in memory: those are compared on this many threads of their own,
#: the disk's waits overlapping (see ``match_whole``'s ``nowait``).
_COLD_THREADS = 4
#: No file is too recently changed to be hashed here: the walk acts on what it finds at once.
_ANY_CTIME = 1 << 62


class DestinationSurvey(DirectoryRecords):
    """The walk's comparison of each directory it enters with what the destination holds there."""

    def _start_hash_ahead(self, dest_fd: int) -> None:
        """Start the child that hashes the destination's small files ahead of the walk (see
        :mod:`cas.ops.restore.hash_ahead`), when the walk will compare them: over a destination that
        holds something, without ``trust_mtime`` and for the whole tree (no selection)."""
        if not self.overwrite or self.trust_mtime or self.select is not None:
            return
        if self._recorded_here(os.fstat(dest_fd)):  # the records will spare most comparing
            hash_ahead.discard_early()
            return
        with os.scandir(dest_fd) as listing:
            if next(listing, None) is None:
                return
        self._hash_ahead = hash_ahead.start(dest_fd, restore_local.SETTLED_NS)

    def _survey(
        self, job: DirJob, entries: list[Entry], prefix: str
    ) -> tuple[dict[str, os.stat_result], set[str]]:
        """What the directory holds (lstat, by name), less the small files found matching their
        entries, and the names of those. Without ``trust_mtime`` a regular file in place of a file
        entry of at most :data:`_COMPARE_AT_ONCE` bytes is compared by what the child hashing ahead
        found, if that still holds, else with the directory's other such files once it is listed
        (:meth:`_compare_unhashed`), or one by one (see ``match_whole``: its ``fstat`` stands for
        the lstat if it differs); if its content is not in memory, after, on the comparer threads.
        Removes temporaries whose owner is gone and, with ``delete``, every entry the tree lacks
        here (live restores' temporaries excepted): on the pool, awaited with the directory's files."""
        dir_fd = job.fd
        assert dir_fd is not None
        wanted = {e.name: e for e in entries}
        present: dict[str, os.stat_result] = {}
        matched: set[str] = set()
        cold: list[Entry] = []
        unhashed: list[tuple[str, os.stat_result]] = []
        compare = not self.trust_mtime
        delete_here = self.delete and bool(prefix or self._delete_root)
        ahead = self._hash_ahead if compare else None
        found = ahead.take(job.ident) if ahead is not None else None
        at_ns, hashed = found if found is not None else (0, None)
        listed: dict[str, os.stat_result] | None = {} if job.known is not None else None
        for name, st in self._match_record(job, scan_dir(dir_fd), matched):
            entry = wanted.get(name)
            if entry is None and not name.startswith(TMP_PREFIX):
                if ahead is not None and st is not None and stat.S_ISDIR(st.st_mode):
                    ahead.skip(job.ident, name)  # not worth hashing
                if delete_here:  # the remover looks for itself
                    removal = self._removals.submit(dir_fd, name)
                    job.removals.append((prefix + name, removal))
                continue
            if st is None:  # the listing's lstat failed: again, to say why
                try:
                    st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                except FileNotFoundError:
                    continue
            if listed is not None:
                listed[name] = st
            if (compare and entry is not None and entry.type == FILE and entry.size <= _COMPARE_AT_ONCE
                    and stat.S_ISREG(st.st_mode)):
                if hashed is None or name not in hashed:
                    unhashed.append((name, st))  # hashed below, with the directory's others
                    continue
                # What the child found, if it still holds.
                matches = judge(hashed[name], at_ns, st, entry, self._mode(entry.mode), restore_local.SETTLED_NS)
                if matches is None and self._compare_in_memory(dir_fd, entry, present, matched, cold):
                    continue
                if matches:
                    matched.add(name)
                    self._count_match(entry, False)
                    continue
            if entry is not None:
                present[name] = st
            elif is_abandoned(name, st):
                self._remove(dir_fd, name, prefix + name, counted=False)
        if unhashed:
            self._compare_unhashed(dir_fd, unhashed, wanted, present, matched, cold)
        if cold:
            self._compare_cold(dir_fd, cold, present, matched)
        if listed:
            self._know_compared(job, (wanted[name] for name in matched), listed)
        return present, matched

    def _compare_in_memory(
        self, dir_fd: int, entry: Entry, present: dict[str, os.stat_result], matched: set[str], cold: list[Entry]
    ) -> bool:
        """Compare a small file in place with its entry if its content is in memory (``match_whole``,
        which fixes its mode and mtime if it matches): it is then in ``matched``, or in ``present``
        with its ``fstat``; if not in memory, in ``cold``. False when it could not be opened (the
        caller takes its lstat)."""
        try:
            matches, fixed, st = match_whole(dir_fd, entry, self._mode(entry.mode), nowait=True)
        except OSError:  # unreadable: left to a file worker, which tries again and reports it
            matches, fixed, st = False, False, None
        if matches is None:
            cold.append(entry)
        elif matches:
            matched.add(entry.name)
            self._count_match(entry, fixed)
        elif st is not None:
            present[entry.name] = st
        else:
            return False
        return True

    def _compare_unhashed(
        self, dir_fd: int, items: list[tuple[str, os.stat_result]], wanted: dict[str, Entry],
        present: dict[str, os.stat_result], matched: set[str], cold: list[Entry],
    ) -> None:
        """Small files in place that the child had not hashed (it started late, or is behind):
        opened, read and hashed by one call of the compiled helper, only what is in memory. One of
        the entry's size, content, mode and mtime matches; one whose size or content differs is
        in ``present``; one not hashed (not in memory, not a regular file any more) is compared on the
        comparer threads; one whose mode or mtime is to fix, by :meth:`_compare_in_memory`."""
        try:
            found = hash_files(dir_fd, [os.fsencode(name) for name, _ in items], _COMPARE_AT_ONCE, _ANY_CTIME, True)
        except OSError:  # reads that do not wait are refused here: all on the comparer threads
            found = [None] * len(items)
        for (name, st), record in zip(items, found):
            entry = wanted[name]
            if record is not None and (record[1] != entry.size or record[4] != entry.digest):
                present[name] = st
                continue
            if record is None:
                cold.append(entry)  # not in memory (or not a regular file any more): on the comparer threads
            elif record[5] == self._mode(entry.mode) and record[2] == entry.mtime_ns:
                matched.add(entry.name)
                self._count_match(entry, False)
            elif not self._compare_in_memory(dir_fd, entry, present, matched, cold):  # its metadata to fix
                present[name] = st

    def _compare_cold(
        self, dir_fd: int, entries: list[Entry], present: dict[str, os.stat_result], matched: set[str]
    ) -> None:
        """Compare small files whose content is not in memory on the comparer threads, a share of
        the directory's each, and wait for them; add each to ``matched`` or ``present``."""
        if self._comparers is None:
            self._comparers = ThreadPoolExecutor(_COLD_THREADS, thread_name_prefix="cas-restore-compare")
        parts = min(_COLD_THREADS, len(entries))
        futures = [self._comparers.submit(self._compare_files, dir_fd, entries[i::parts]) for i in range(parts)]
        wait(futures)  # all of them, before anything is raised: they read through ``dir_fd``
        for future in futures:
            for entry, matches, fixed, st in future.result():
                if matches:
                    matched.add(entry.name)
                    self._count_match(entry, fixed)
                    continue
                if st is None:
                    try:
                        st = os.stat(entry.name, dir_fd=dir_fd, follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                present[entry.name] = st

    def _compare_files(
        self, dir_fd: int, entries: list[Entry]
    ) -> list[tuple[Entry, bool | None, bool, os.stat_result | None]]:
        out: list[tuple[Entry, bool | None, bool, os.stat_result | None]] = []
        for entry in entries:
            try:
                out.append((entry, *match_whole(dir_fd, entry, self._mode(entry.mode))))
            except OSError:  # unreadable: left to a file worker, which tries again and reports it
                out.append((entry, False, False, None))
        return out

    def _match_in_place(self, dir_fd: int, entries: list[Entry], present: dict[str, os.stat_result]) -> set[str]:
        """With ``trust_mtime``, files found matching without a file worker: those the lstat already
        proves (size, mtime and mode equal) and small ones, hashed. Returns their names. The others
        are compared by the file workers."""
        matched: set[str] = set()
        to_hash: list[Entry] = []
        for entry in entries:
            st = present.get(entry.name)
            if entry.type != FILE or not is_file(st) or st is None or st.st_size != entry.size:
                continue
            trusted = self.trust_mtime and st.st_mtime_ns == entry.mtime_ns
            if trusted and stat.S_IMODE(st.st_mode) == self._mode(entry.mode):
                matched.add(entry.name)
                self._count_match(entry, False)
            elif trusted or entry.size <= _COMPARE_AT_ONCE:
                to_hash.append(entry)
        return matched | self._compared(self._compare(dir_fd, to_hash))

    def _match_recorded(self, job: DirJob, entries: list[Entry], present: dict[str, os.stat_result]) -> set[str]:
        """Without ``trust_mtime``, the large files in place (past what the walk compares at once)
        that the files cache knows to hold their entry's content: recorded with the entry's digest
        by the restore that created them or a snapshot that read them, and with the identity
        (size, mtime, ctime, inode, device) their lstat shows now; their mode and mtime the
        entry's. Taken as matching unread, on the grounds a snapshot takes a file as unchanged (see
        :class:`~cas.repo.filescache.FilesRecorder`). Returns their names; the others are compared
        by the file workers. The matches are known to hold their entries (see ``records``)."""
        candidates = []
        for entry in entries:
            st = present.get(entry.name)
            if (entry.type == FILE and entry.size > _COMPARE_AT_ONCE and st is not None and stat.S_ISREG(st.st_mode)
                    and st.st_size == entry.size and st.st_mtime_ns == entry.mtime_ns
                    and stat.S_IMODE(st.st_mode) == self._mode(entry.mode)):
                candidates.append((entry, st))
        if not candidates:
            return set()
        assert self._recorder is not None
        known = self._recorder.known(self._directory_path(job), [os.fsencode(entry.name) for entry, _ in candidates])
        matched: set[str] = set()
        for entry, st in candidates:
            row = known.get(os.fsencode(entry.name))
            if row is not None and row[1] == entry.digest and FilesCache.matches(row[0], st):
                matched.add(entry.name)
                self._count_match(entry, False)
                self.report.files_from_cache += 1
                if job.known is not None:
                    job.known[entry.name] = identity(st)
        return matched

    def _compare(self, dir_fd: int, entries: list[Entry]) -> list[tuple[Entry, bool]]:
        """Compare files in place with their entries: the matches (their metadata fixed) with whether
        it was. A file that cannot be read is left to a file worker, which tries again and reports it."""
        out: list[tuple[Entry, bool]] = []
        for entry in entries:
            try:
                found = examine_file(dir_fd, entry, self._mode(entry.mode), trust_mtime=self.trust_mtime, config=None)
            except OSError:
                continue
            if found.matches:
                out.append((entry, found.meta_fixed))
        return out

    def _compared(self, results: list[tuple[Entry, bool]]) -> set[str]:
        """Count the matches of ``_compare`` (``(entry, metadata fixed)``); their names."""
        for entry, fixed in results:
            self._count_match(entry, fixed)
        return {entry.name for entry, _ in results}

