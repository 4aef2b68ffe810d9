"""What a snapshot leaves out: ignore files, ``--exclude``/``--include``, a size limit, other file systems.

    store.snapshot("./proj", "run-42", filter=SnapshotFilter(exclude=["*.tmp"], exclude_larger_than=1 << 30))

Rules, for every entry the walk meets (its path relative to the snapshotted directory):

1. **Ignored.** ``--exclude`` patterns first, then the ``.casignore`` files from the entry's own
   directory up to the snapshotted one, then ``--ignore-file`` files: the first of these with a
   matching pattern decides, its last matching pattern wins (``!`` re-includes). This is git's
   order for ``ls-files -x``, per-directory ``.gitignore`` files and ``core.excludesFile``; the
   patterns are matched as :mod:`cas.ops.ignore` says. An ignored directory is not entered, so
   nothing below it comes back, even through a ``!`` pattern (as in git).
2. **Too large.** A regular file larger than ``exclude_larger_than`` bytes.
3. **Not included.** With ``--include`` patterns, an entry is stored only if the last include
   pattern matching it is not a ``!`` one, or, when none matches it, its directory was included.
   A directory that is not included is still entered; it is stored only if something in it is.
4. **Another file system** (``one_file_system``). A directory on another device than the
   snapshotted one (a mount point) is stored empty; anything else on another device is left out.

Exclusion always wins: ``--include`` narrows what is stored, and every exclusion applies within it.
Each entry left out is counted once under its reason (see :class:`ExcludeReason`); a directory
left out counts as one entry, and what is inside it is not walked, so neither counted nor sized.
The ignore files themselves are stored like any other file (a pattern that matches one leaves it
out, as in git). A single file given as the snapshot's path is stored whatever the filter says.
"""

from __future__ import annotations

import enum
import errno
import logging
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field

from cas.errors import CasError, ConfigurationError, NotFound, PermissionDenied
from cas.ops.ignore import IGNORE_FILE_NAME, PatternList, decide

log = logging.getLogger("cas")

MAX_IGNORE_FILE_BYTES = 4 * 1024 * 1024
"""An ignore file larger than this is not read (with a warning): patterns, not data."""
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)


class ExcludeReason(str, enum.Enum):
    """Why an entry was left out of a snapshot; each is counted in the snapshot's stats as
    ``excluded_by_<reason>`` (entries) and ``excluded_by_<reason>_bytes`` (sizes of regular files)."""

    PATTERN = "pattern"
    """An ``--exclude`` pattern."""
    IGNORE_FILE = "ignore_file"
    """A ``.casignore`` in the tree or an ``--ignore-file``."""
    SIZE = "size"
    """A regular file larger than ``--exclude-larger-than``."""
    INCLUDE = "include"
    """Matched by no ``--include`` pattern (or by a ``!`` one); also a directory left empty by that."""
    FILESYSTEM = "filesystem"
    """On another file system (``--one-file-system``); a mount point counts once, stored empty."""


@dataclass(frozen=True)
class SnapshotFilter:
    """What a snapshot leaves out (the module docstring has the rules). The default leaves out
    only what ``.casignore`` files say."""

    exclude: Sequence[str] = ()
    """gitignore-style patterns relative to the snapshotted directory (``!`` re-includes)."""
    include: Sequence[str] = ()
    """gitignore-style patterns; when given, only what they match is stored."""
    ignore_files: bool = True
    """Honour ``.casignore`` files found in the tree."""
    extra_ignore_files: Sequence[str] = ()
    """Paths of further ignore files (``--ignore-file``), their patterns relative to the snapshotted
    directory; below every ``.casignore`` in precedence, a later one above an earlier one."""
    exclude_larger_than: int | None = None
    """Leave out regular files larger than this many bytes."""
    one_file_system: bool = False
    """Do not enter other file systems."""

    def __post_init__(self) -> None:
        for name in ("exclude", "include", "extra_ignore_files"):
            value = getattr(self, name)
            if isinstance(value, (str, bytes)) or not all(isinstance(v, str) for v in value):
                raise ConfigurationError(f"{name} must be a list of strings, not {value!r}")
            object.__setattr__(self, name, tuple(value))
        limit = self.exclude_larger_than
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
            raise ConfigurationError(f"exclude_larger_than must be a number of bytes, 0 or more, not {limit!r}")

    def start(self, root_dev: int) -> WalkFilter:
        """The state of one walk of a directory on device ``root_dev`` (reads the extra ignore files)."""
        extra = [PatternList.from_text(_read_extra(path), source=path) for path in self.extra_ignore_files]
        return WalkFilter(self, root_dev, tuple(reversed(extra)))


@dataclass(frozen=True)
class DirScope:
    """What a directory's entries are decided by: the ignore files in force, deepest first, and
    whether the directory itself was included (entries no include pattern matches inherit it)."""

    ignore_files: tuple[PatternList, ...] = ()
    included: bool = True


@dataclass(frozen=True)
class Decision:
    """The filter's answer for one entry."""

    reason: ExcludeReason | None = None
    """Why the entry is left out; None to store it."""
    included: bool = True
    """For a directory: whether it was included itself (if not, it is stored only if not empty)."""
    other_fs: bool = False
    """For a directory: on another file system, to be stored empty."""


KEEP = Decision()


@dataclass
class ExcludeStats:
    """Entries left out and the bytes of the regular files among them, by reason."""

    entries: dict[ExcludeReason, int] = field(default_factory=lambda: dict.fromkeys(ExcludeReason, 0))
    bytes: dict[ExcludeReason, int] = field(default_factory=lambda: dict.fromkeys(ExcludeReason, 0))

    def to_stats(self) -> dict[str, int]:
        """The snapshot record's counters: totals, then one pair per reason."""
        out = {"excluded": sum(self.entries.values()), "excluded_bytes": sum(self.bytes.values())}
        for reason in ExcludeReason:
            out[f"excluded_by_{reason.value}"] = self.entries[reason]
            out[f"excluded_by_{reason.value}_bytes"] = self.bytes[reason]
        return out


class WalkFilter:
    """One snapshot's filter while it walks: decides entries and counts what it leaves out."""

    def __init__(self, options: SnapshotFilter, root_dev: int, extra: tuple[PatternList, ...]) -> None:
        self.options = options
        self._root_dev = root_dev
        self._exclude = PatternList(options.exclude, source="--exclude")
        self._include = PatternList(options.include, source="--include") if options.include else None
        self._extra = extra
        self.stats = ExcludeStats()

    @property
    def reads_ignore_files(self) -> bool:
        return self.options.ignore_files

    def enter(self, parent: DirScope | None, rel: str, included: bool, ignore_text: str | None) -> DirScope:
        """The scope of the directory ``rel`` (decided ``included``; for the root, ``parent`` is None
        and it is included only without include patterns), given its ignore file's text."""
        if parent is None:
            parent, included = DirScope(), self._include is None
        files = parent.ignore_files
        if ignore_text is not None:
            patterns = PatternList.from_text(ignore_text, base=rel, source=_join(rel, IGNORE_FILE_NAME))
            if patterns:
                files = (patterns, *files)
        return DirScope(files, included)

    def decide(self, scope: DirScope, rel: str, st: os.stat_result) -> Decision:
        """Store or leave out the entry at ``rel`` (stat'ed without following symlinks); an entry
        left out is counted here."""
        is_dir = stat.S_ISDIR(st.st_mode)
        size = st.st_size if stat.S_ISREG(st.st_mode) else 0
        ignored, by = decide((self._exclude, *scope.ignore_files, *self._extra), rel, is_dir)
        if ignored:
            return self._leave_out(ExcludeReason.PATTERN if by is self._exclude else ExcludeReason.IGNORE_FILE, size)
        limit = self.options.exclude_larger_than
        if limit is not None and stat.S_ISREG(st.st_mode) and size > limit:
            return self._leave_out(ExcludeReason.SIZE, size)
        included = True
        if self._include is not None:
            own = self._include.decide(rel, is_dir)
            included = scope.included if own is None else own
            if not included and not is_dir:
                return self._leave_out(ExcludeReason.INCLUDE, size)
        if self.options.one_file_system and st.st_dev != self._root_dev:
            if not is_dir or not included:
                return self._leave_out(ExcludeReason.FILESYSTEM, size)
            self.count(ExcludeReason.FILESYSTEM, 0)
            return Decision(included=True, other_fs=True)
        return KEEP if included else Decision(included=False)

    def count(self, reason: ExcludeReason, size: int) -> None:
        self.stats.entries[reason] += 1
        self.stats.bytes[reason] += size

    def _leave_out(self, reason: ExcludeReason, size: int) -> Decision:
        self.count(reason, size)
        return Decision(reason)


def read_ignore_file(dir_fd: int, shown: str) -> str | None:
    """The text of ``.casignore`` in the directory open as ``dir_fd`` (``shown`` names that
    directory in messages); None if there is none, or it is not a regular file (a symlink is not
    followed, as git does not follow one named ``.gitignore``), or is too large (with a warning)."""
    where = _join(shown, IGNORE_FILE_NAME)
    try:
        fd = os.open(IGNORE_FILE_NAME, _READ_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except PermissionError:
        raise PermissionDenied(f"cannot read ignore file {where}: permission denied") from None
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENXIO):
            log.warning("ignore file %s is not a regular file; not used", where)
            return None
        raise CasError(f"cannot read ignore file {where}: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            log.warning("ignore file %s is not a regular file; not used", where)
            return None
        if st.st_size > MAX_IGNORE_FILE_BYTES:
            log.warning("ignore file %s is larger than %d bytes; not used", where, MAX_IGNORE_FILE_BYTES)
            return None
        os.set_blocking(fd, True)
        data = b""
        while len(data) <= MAX_IGNORE_FILE_BYTES:
            block = os.read(fd, 1 << 16)
            if not block:
                break
            data += block
    except OSError as exc:
        raise CasError(f"cannot read ignore file {where}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    return os.fsdecode(data)


def _read_extra(path: str) -> str:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_IGNORE_FILE_BYTES + 1)
    except FileNotFoundError:
        raise NotFound(f"ignore file {path} does not exist") from None
    except IsADirectoryError:
        raise ConfigurationError(f"ignore file {path} is a directory") from None
    except PermissionError:
        raise PermissionDenied(f"cannot read ignore file {path}: permission denied") from None
    except OSError as exc:
        raise ConfigurationError(f"cannot read ignore file {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_IGNORE_FILE_BYTES:
        raise ConfigurationError(f"ignore file {path} is larger than {MAX_IGNORE_FILE_BYTES} bytes")
    return os.fsdecode(data)


def _join(rel: str, name: str) -> str:
    return f"{rel}/{name}" if rel else name


__all__ = ["Decision", "DirScope", "ExcludeReason", "ExcludeStats", "SnapshotFilter", "WalkFilter", "read_ignore_file"]
