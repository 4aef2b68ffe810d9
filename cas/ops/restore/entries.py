"""Restoring the entries of one directory: a directory made, a symlink made (or found equal), and a
file written, found matching, or patched in place.

A file is examined first if something is in its place (see :mod:`cas.ops.restore.local`): a match is
left as it is (its metadata fixed); with ``in_place``, a file holding at least half of the new
chunks at their offsets is patched where it is; otherwise the file is written anew
(:mod:`cas.ops.restore.write`), its content taken from the file it replaces and from chunks already
in the destination where it can, fetched where not. Small files already fetched are written several
to a task (:meth:`EntryWriting._batch`), and those whose content is one chunk, with nothing in their
place, with the fewest calls each (:meth:`EntryWriting._write_whole`). Each file's failure is its
own: a worker returns it, and the walk records it when it finishes the directory.
"""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import replace

from cas.errors import AlreadyExists, CasError, IntegrityError
from cas.format.hashing import hexdigest
from cas.format.trees import Entry
from cas.ops.restore.create import unlink_quietly
from cas.ops.restore.local import FileChangedError, OldFile, TaskView, content, examine_file, patch_in_place
from cas.ops.restore.report import Done
from cas.ops.restore.state import RestoreState, is_file
from cas.ops.restore.write import (
    PREALLOCATE_FROM,
    has_zero_runs,
    place,
    set_metadata,
    write_content,
)
from cas.ops.restore.write_process import File
from cas.repo.reader import file_chunks

_EMPTY_DIGEST = hexdigest(b"")


class EntryWriting(RestoreState):
    """Directories, symlinks and files of a directory made as the tree has them."""

    def _batch(
        self, dir_fd: int, batch: list[tuple[Entry, str, int]], locations: dict,  # type: ignore[type-arg]
        prefetched: dict | None,  # type: ignore[type-arg]
    ) -> list[Done | BaseException]:
        """Write several small files of one directory, already fetched: one task instead of one per
        file. Each file's failure is its own."""
        out: list[Done | BaseException] = []
        for entry, path, seq in batch:
            try:
                out.append(self._file(dir_fd, entry, path, locations, prefetched, seq))
            except (CasError, OSError) as exc:
                out.append(exc)
        return out

    def _write_whole(
        self, dir_fd: int, files: list[tuple[Entry, str]], prefetched: dict[str, bytes], held: int,
    ) -> list[Done | BaseException]:
        """Write small files of one directory whose whole content is one chunk fetched already (or
        none), with nothing in their place: the fewest calls and Python work per file. Each file's
        failure is its own. ``held`` bytes of the walk's budget are given back once done."""
        try:
            return self._write_whole_files(dir_fd, files, prefetched)
        finally:
            self._budget.give(held)

    def _write_whole_files(
        self, dir_fd: int, files: list[tuple[Entry, str]], prefetched: dict[str, bytes],
    ) -> list[Done | BaseException]:
        out: list[Done | BaseException | None] = []  # None: handed to the helper, its answer not yet read
        batch: list[File] = []
        for entry, path in files:
            data = prefetched[entry.chunks[0]] if entry.chunks else b""
            try:
                _check_whole(entry, path, data)
            except IntegrityError as exc:
                out.append(exc)
                continue
            out.append(None)
            batch.append((entry.name, data, self._mode(entry.mode), entry.mtime_ns, self._records(entry)))
        answers = iter(self._writer.write_whole_many(dir_fd, batch) if batch else ())  # one call, no GIL held
        for i, (entry, path) in enumerate(files):
            if out[i] is None:
                done = out[i] = self._placed(dir_fd, entry, path, next(answers))
                if self.overwrite and isinstance(done, Done):
                    self._local.add_file(path, entry, {})
        return out  # type: ignore[return-value]  # every None replaced

    def _write_whole_in_child(
        self, dir_fd: int, files: list[tuple[Entry, str]], prefetched: dict[str, bytes], held: int,
    ) -> Future[list[Done | BaseException]]:
        """:meth:`_write_whole` made by the restore's writer process (a fresh restore's many small
        files): checked here, written there, a file whose name was taken placed here."""
        checked: list[Done | BaseException | None] = []
        batch: list[File] = []
        for entry, path in files:
            data = prefetched[entry.chunks[0]] if entry.chunks else b""
            try:
                _check_whole(entry, path, data)
            except IntegrityError as exc:
                checked.append(exc)
                continue
            checked.append(None)
            batch.append((entry.name, data, self._mode(entry.mode), entry.mtime_ns, self._records(entry)))
        result: Future[list[Done | BaseException]] = Future()

        def finish(written: Future[list[object]]) -> None:
            try:
                answers = iter(written.result())
                out: list[Done | BaseException] = []
                for (entry, path), done in zip(files, checked):
                    if done is None:
                        done = self._placed(dir_fd, entry, path, next(answers))
                    out.append(done)
                result.set_result(out)
            except BaseException as exc:  # noqa: BLE001 - given to the walk, which waits on it
                result.set_exception(exc)
            finally:
                self._budget.give(held)

        self._write_child.submit(dir_fd, batch).add_done_callback(finish)
        return result

    def _placed(self, dir_fd: int, entry: Entry, path: str, answer: object) -> Done | BaseException:
        """A file written whole (:meth:`_write_whole_files`, :meth:`_write_whole_in_child`) after
        the writer's answer for it."""
        if answer is None:
            return Done(entry.size, True)
        if type(answer) is tuple:  # named, and identified to be recorded: (inode, ctime) then
            self._record_written(path, entry, *answer)
            return Done(entry.size, True)
        if isinstance(answer, str):  # its name was taken: the file is under this temporary name
            try:
                self._place(dir_fd, answer, entry.name, path)
            except (CasError, OSError) as exc:
                unlink_quietly(dir_fd, answer)
                return exc
            return Done(entry.size, True)
        assert isinstance(answer, OSError)
        return answer

    def _one_file(self, *args: object) -> list[Done | BaseException]:
        return [self._file(*args)]  # type: ignore[arg-type]

    def _make_directory(self, parent_fd: int, entry: Entry, path: str, present: os.stat_result | None = None) -> None:
        if present is not None and stat.S_ISDIR(present.st_mode):
            self.report.unchanged += 1  # opened with O_NOFOLLOW next: if swapped meanwhile, that fails
            return
        for _attempt in range(3):  # another restore may be replacing the same entry meanwhile
            try:
                os.mkdir(entry.name, 0o700, dir_fd=parent_fd)
                self.report.written += 1
                return
            except FileExistsError:
                if not self.overwrite:
                    raise AlreadyExists(f"{path} already exists in the destination") from None
            try:
                st = os.stat(entry.name, dir_fd=parent_fd, follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    self.report.unchanged += 1
                    return
                os.unlink(entry.name, dir_fd=parent_fd)  # removes a link or file, never what it points at
            except FileNotFoundError:
                pass
        raise AlreadyExists(f"{path} keeps being replaced in the destination by another process")

    def _symlink(self, dir_fd: int, entry: Entry, path: str, present: os.stat_result | None = None) -> None:
        if present is not None and stat.S_ISLNK(present.st_mode):
            try:
                same = os.readlink(entry.name, dir_fd=dir_fd) == entry.target
            except OSError:
                same = False
            if same:
                if present.st_mtime_ns != entry.mtime_ns:
                    os.utime(entry.name, ns=(entry.mtime_ns, entry.mtime_ns), dir_fd=dir_fd, follow_symlinks=False)
                    self.report.meta_fixed += 1
                self.report.symlinks += 1
                self.report.unchanged += 1
                return
        tmp = self._writer.temporary_name()
        os.symlink(entry.target, tmp, dir_fd=dir_fd)
        try:
            os.utime(tmp, ns=(entry.mtime_ns, entry.mtime_ns), dir_fd=dir_fd, follow_symlinks=False)
            self._place(dir_fd, tmp, entry.name, path)
        except BaseException:
            unlink_quietly(dir_fd, tmp)
            raise
        self.report.symlinks += 1
        self.report.written += 1

    def _file_task(self, entry: Entry, present: os.stat_result | None) -> tuple[int, bool, threading.Event | None]:
        """A file's task arguments: its sequence number, whether a file is in place, and for one that
        is likely to match (same size), the event its comparison sets (see LocalChunks.expect)."""
        seq = next(self._file_seq)
        exists = is_file(present)
        compared = None
        if exists and present is not None and present.st_size == entry.size:
            compared = self._local.expect(entry, seq)
        return seq, exists, compared

    def _file(
        self, dir_fd: int, entry: Entry, path: str, locations: dict,  # type: ignore[type-arg]
        prefetched: dict | None, seq: int = 0, exists: bool = False,  # type: ignore[type-arg]
        compared: threading.Event | None = None,
    ) -> Done:
        old: OldFile | None = None
        if exists:
            try:
                lengths = [locations[c].raw_length for c in entry.chunks if c in locations]
                known = len(lengths) == len(entry.chunks) and sum(lengths) == entry.size
                found = examine_file(dir_fd, entry, self._mode(entry.mode), trust_mtime=self.trust_mtime,
                                     config=self.repo.config, lengths=lengths if known else None,
                                     lock=self.in_place and known)
                if found.matches:
                    self._local.add_file(path, entry, locations)
                    if found.verified is not None and self._file_ids is not None:
                        self._file_ids[path] = found.verified
                    return Done(entry.size, False, meta_fixed=found.meta_fixed)
                old = found.old
            finally:
                if compared is not None:
                    compared.set()
        try:
            if old is not None and self.in_place and old.aligned_bytes * 2 >= entry.size > 0:
                patched = self._patch(dir_fd, entry, path, locations, prefetched, old, seq)
                if patched is not None:
                    return patched
            return self._write_file(dir_fd, entry, path, locations, prefetched, old, seq)
        finally:
            if old is not None:
                old.close()

    def _patch(
        self, dir_fd: int, entry: Entry, path: str, locations: dict,  # type: ignore[type-arg]
        prefetched: dict | None, old: OldFile, seq: int,  # type: ignore[type-arg]
    ) -> Done | None:
        """Patch the file in place (see ``in_place``); None if it was replaced meanwhile."""
        lengths = [locations[c].raw_length for c in entry.chunks]
        sources: list[OldFile | TaskView] = [old, self._local.for_task(seq)]
        reused = [0]

        def chunk_data(ids: list[str]) -> Iterator[bytes]:
            sub = replace(entry, chunks=tuple(ids))
            remote: list[str] = []
            for chunk_id in ids:
                data = next((d for d in (src.read(chunk_id) for src in sources) if d is not None), None)
                if data is None:
                    remote.append(chunk_id)
                    continue
                if remote:
                    yield from file_chunks(self.repo, replace(sub, chunks=tuple(remote)), locations, path, prefetched)
                    remote = []
                reused[0] += len(data)
                yield data
            if remote:
                yield from file_chunks(self.repo, replace(sub, chunks=tuple(remote)), locations, path, prefetched)

        try:
            written = patch_in_place(dir_fd, entry, path, old, lengths, self._mode(entry.mode), chunk_data)
        except FileChangedError:
            return None
        self._local.add_file(path, entry, locations)
        return Done(entry.size, True, old.aligned_bytes + reused[0], patched=written)

    def _write_file(
        self, dir_fd: int, entry: Entry, path: str, locations: dict,  # type: ignore[type-arg]
        prefetched: dict | None, old: OldFile | None, seq: int = 0,  # type: ignore[type-arg]
    ) -> Done:
        sources: list[OldFile | TaskView] = [old] if old is not None else []
        if self.overwrite:
            sources.append(self._local.for_task(seq))
        reused = [0]
        mode = self._mode(entry.mode)
        fd, tmp, mode_set = self._writer.create(dir_fd, mode)
        try:
            try:
                preallocate = entry.size >= PREALLOCATE_FROM and not has_zero_runs(entry, locations)
                pieces = content(self.repo, entry, locations, path, prefetched, sources, reused)
                try:
                    written = write_content(fd, entry, pieces, path, preallocate=preallocate)
                except IntegrityError:
                    if old is None:
                        raise
                    # The file being replaced changed while its ranges were copied: start again
                    # without it (every chunk then verified as it is read).
                    os.ftruncate(fd, 0)
                    os.lseek(fd, 0, os.SEEK_SET)
                    sources, reused[0] = sources[1:], 0
                    pieces = content(self.repo, entry, locations, path, prefetched, sources, reused)
                    written = write_content(fd, entry, pieces, path, preallocate=preallocate)
                set_metadata(fd, entry, mode, mode_set)
                if tmp is None:
                    tmp = self._writer.link(fd, dir_fd, entry.name)
                if tmp is not None:
                    self._place(dir_fd, tmp, entry.name, path)
                    tmp = None
                named = self._identity(fd) if self._records(entry) else None
            finally:
                os.close(fd)
        except BaseException:
            if tmp is not None:
                unlink_quietly(dir_fd, tmp)
            raise
        if named is not None:
            self._record_written(path, entry, named.st_ino, named.st_ctime_ns)
        if self.overwrite:
            self._local.add_file(path, entry, locations)
        return Done(written, True, reused[0])

    @staticmethod
    def _identity(fd: int) -> os.stat_result | None:
        """A file's identity once named (linking and renaming change its ctime), to record; None
        if it cannot be had (the file is whole and named all the same)."""
        try:
            return os.fstat(fd)
        except OSError:
            return None

    def _place(self, dir_fd: int, tmp: str, name: str, path: str) -> None:
        """Rename a finished temporary into place. Without ``overwrite`` the destination was empty
        when the restore began and tree names are unique, so a name can only exist here if some
        other process made it meanwhile; rename replaces that entry (never writes through it)."""
        place(dir_fd, tmp, name, path, (lambda: self._remove(dir_fd, name, path)) if self.delete else None)


def _check_whole(entry: Entry, path: str, data: bytes) -> None:
    """That ``data``, a one-chunk file's verified chunk (or nothing), is the file the tree records."""
    if len(data) != entry.size:
        raise IntegrityError(f"{path}: restored {len(data)} bytes, the tree records {entry.size}")
    # The chunk was verified against its ID; a one-chunk file's digest is that ID.
    if (entry.chunks[0] if entry.chunks else _EMPTY_DIGEST) != entry.digest:
        raise IntegrityError(f"{path}: content does not match the file's recorded BLAKE3")
