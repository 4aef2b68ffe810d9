"""Running one tool command and checking what a restore wrote.

A command runs as a child process; its wall time is measured around it, and its own resource
usage (peak resident set size, user and system CPU time) is what GNU time (``/usr/bin/time``)
reports for it: the rusage of that process and the descendants it waited for. GNU time sits in
between because a child forked straight from this harness would start with the harness's own
resident set as its peak (Linux carries the peak across fork and exec).

GNU time's peak RSS is that of the largest single process, not of all of them at once: a tool
that works in several processes (cas snapshot's workers) would look smaller than it is. So the
command's processes (its process group) are also sampled every :data:`SAMPLE_SECONDS` from
``/proc/PID/smaps_rollup``, and the peak of the SUM of their RSS is taken when it is the larger;
the peak sum of their PSS (shared pages divided among the processes sharing them, so a forked
worker's copy-on-write pages are not counted twice) is kept beside it. A peak shorter than the
sampling interval can be missed by the sum, never by GNU time's figure.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import signal
import stat
import subprocess
import threading
import time
from pathlib import Path

from setup_tools import GNU_TIME


@dataclasses.dataclass
class Measurement:
    case: str
    step: str
    tool: str
    round: int
    position: int  # 0 = first tool of this step in this round
    cmd: list[str]
    cwd: str
    seconds: float
    max_rss_kib: int
    user_seconds: float
    sys_seconds: float
    returncode: int
    timed_out: bool
    load_before: float
    warm_seconds: float
    output_tail: str
    max_pss_kib: int = 0
    """Peak of the sum of the PSS of the command's processes (sampled; 0 if none was sampled)."""
    processes: int = 1
    """Most processes of the command seen at once (sampled)."""

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out

    @property
    def cpu_seconds(self) -> float:
        return self.user_seconds + self.sys_seconds


@dataclasses.dataclass(frozen=True)
class Usage:
    seconds: float
    max_rss_kib: int
    user_seconds: float
    sys_seconds: float
    returncode: int
    timed_out: bool
    output_tail: str
    max_pss_kib: int = 0
    processes: int = 1


SAMPLE_SECONDS = 0.05


def group_memory(pgid: int, skip: int) -> tuple[int, int, int]:
    """(RSS KiB, PSS KiB, processes) summed over the processes of process group ``pgid``, but ``skip``."""
    rss = pss = count = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == skip:
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                data = f.read()
            # Fields after the command name (which may hold spaces): state, ppid, pgrp, ...
            if int(data[data.rindex(b")") + 2 :].split()[2]) != pgid:
                continue
            with open(f"/proc/{entry.name}/smaps_rollup", "rb") as f:
                text = f.read()
        except (OSError, ValueError, IndexError):
            continue  # exited meanwhile, or a kernel thread
        count += 1
        for line in text.splitlines():
            if line.startswith(b"Rss:"):
                rss += int(line.split()[1])
            elif line.startswith(b"Pss:"):
                pss += int(line.split()[1])
    return rss, pss, count


class _Sampler(threading.Thread):
    """Samples :func:`group_memory` of a command until stopped; keeps the peaks."""

    def __init__(self, pgid: int) -> None:
        super().__init__(daemon=True)
        self.pgid = pgid
        self.rss = self.pss = 0
        self.processes = 1
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(SAMPLE_SECONDS):
            rss, pss, count = group_memory(self.pgid, skip=self.pgid)  # not GNU time itself
            self.rss, self.pss = max(self.rss, rss), max(self.pss, pss)
            self.processes = max(self.processes, count)


def measure(cmd: list[str], cwd: Path, env: dict[str, str], out_path: Path, timeout: float) -> Usage:
    """Run ``cmd`` under GNU time. The command's standard output goes to ``out_path`` (kept: the
    snapshot ids are read from it), its standard error to ``out_path`` + ``.err``, GNU time's
    figures to ``out_path`` + ``.rusage``."""
    out_path.parent.mkdir(parents=True, exist_ok=True)
    usage_path = out_path.with_name(out_path.name + ".rusage")
    usage_path.unlink(missing_ok=True)
    timed_out = threading.Event()
    with open(out_path, "w+b") as out, open(out_path.with_name(out_path.name + ".err"), "w+b") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen([GNU_TIME, "-f", "%M %U %S", "-o", str(usage_path), *cmd], cwd=cwd, env=env,
                                stdin=subprocess.DEVNULL, stdout=out, stderr=err, start_new_session=True)

        def kill() -> None:
            timed_out.set()
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

        timer = threading.Timer(timeout, kill)
        timer.start()
        sampler = _Sampler(proc.pid)  # the new session's group: GNU time, the command, its workers
        sampler.start()
        try:
            _, status, ru = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
            sampler.stopped.set()
            sampler.join()
        seconds = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        out.seek(0)
        text = err.read().decode("utf-8", "replace")[-2000:] + out.read().decode("utf-8", "replace")[-2000:]
    # The last line is the format's; a line before it says so when the command died of a signal.
    lines = usage_path.read_text().strip().splitlines() if usage_path.exists() else []
    try:
        rss, user, sys_ = lines[-1].split()
        max_rss, user_s, sys_s = int(rss), float(user), float(sys_)
    except (IndexError, ValueError):
        max_rss, user_s, sys_s = 0, ru.ru_utime, ru.ru_stime  # killed before GNU time could write
    return Usage(seconds, max(max_rss, sampler.rss), user_s, sys_s, proc.returncode, timed_out.is_set(),
                 text[-4000:], sampler.pss, sampler.processes)


def read_all(paths: list[Path]) -> int:
    """Read every regular file under ``paths`` once (into the page cache); bytes read."""
    buf = bytearray(1 << 20)
    total = 0

    def one(p: str) -> None:
        nonlocal total
        try:
            with open(p, "rb", buffering=0) as f:
                while n := f.readinto(buf):  # type: ignore[attr-defined]
                    total += n
        except OSError:
            pass

    for root in paths:
        if root.is_file():
            one(str(root))
            continue
        for dirpath, _dirs, files in os.walk(root):
            for name in files:
                p = os.path.join(dirpath, name)
                if not os.path.islink(p):
                    one(p)
    return total


# ---------------------------------------------------------------- verifying a restore


@dataclasses.dataclass
class Entry:
    kind: str  # "f", "d", "l"
    mode: int
    size: int
    mtime_ns: int
    digest: str  # sha256 for files, link target for symlinks


def scan(root: Path, with_digest: bool = True) -> dict[str, Entry]:
    out: dict[str, Entry] = {}
    for dirpath, dirs, files in os.walk(root):
        dirs.sort()
        for name in [*dirs, *files]:
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, root)
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = Entry("l", stat.S_IMODE(st.st_mode), 0, st.st_mtime_ns, os.readlink(p))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = Entry("d", stat.S_IMODE(st.st_mode), 0, st.st_mtime_ns, "")
            elif stat.S_ISREG(st.st_mode):
                digest = ""
                if with_digest:
                    with open(p, "rb") as f:
                        digest = hashlib.file_digest(f, "sha256").hexdigest()
                out[rel] = Entry("f", stat.S_IMODE(st.st_mode), st.st_size, st.st_mtime_ns, digest)
            else:
                out[rel] = Entry("?", stat.S_IMODE(st.st_mode), 0, 0, "")
    return out


@dataclasses.dataclass
class Verification:
    ok: bool
    bytes_ok: bool
    metadata_ok: bool
    checked_metadata: bool
    files: int
    missing: int
    extra: int
    content_mismatch: int
    mode_mismatch: int
    mtime_mismatch: int
    examples: list[str]


def verify(source: dict[str, Entry], restored_root: Path, check_metadata: bool) -> Verification:
    """Compare a restored tree with the scan of its source: same entries, types, sizes, sha256 of
    the bytes and symlink targets; with ``check_metadata`` also modes and nanosecond mtimes."""
    if not restored_root.is_dir():
        return Verification(False, False, False, check_metadata, 0, len(source), 0, 0, 0, 0, [f"{restored_root} does not exist"])
    got = scan(restored_root)
    missing = [k for k in source if k not in got]
    extra = [k for k in got if k not in source]
    content: list[str] = []
    modes: list[str] = []
    mtimes: list[str] = []
    for k, s in source.items():
        g = got.get(k)
        if g is None:
            continue
        if g.kind != s.kind or g.size != s.size or g.digest != s.digest:
            content.append(k)
            continue
        if s.kind != "l" and g.mode != s.mode:
            modes.append(f"{k} mode {oct(g.mode)} != {oct(s.mode)}")
        if s.kind == "f" and g.mtime_ns != s.mtime_ns:
            mtimes.append(f"{k} mtime_ns {g.mtime_ns} != {s.mtime_ns}")
    bytes_ok = not (missing or extra or content)
    metadata_ok = not (modes or mtimes)
    examples = [f"missing {k}" for k in missing[:5]] + [f"extra {k}" for k in extra[:5]] + [f"content differs {k}" for k in content[:5]]
    examples += modes[:5] + mtimes[:5]
    return Verification(
        ok=bytes_ok and (metadata_ok or not check_metadata),
        bytes_ok=bytes_ok,
        metadata_ok=metadata_ok,
        checked_metadata=check_metadata,
        files=sum(1 for e in source.values() if e.kind == "f"),
        missing=len(missing),
        extra=len(extra),
        content_mismatch=len(content),
        mode_mismatch=len(modes),
        mtime_mismatch=len(mtimes),
        examples=examples,
    )


def stored_bytes(paths: list[Path]) -> tuple[int, int]:
    """(apparent bytes, disk bytes) of files under paths."""
    apparent = 0
    disk = 0
    for p in paths:
        if not p.exists():
            continue
        if p.is_file():
            st = p.stat()
            apparent += st.st_size
            disk += st.st_blocks * 512
            continue
        for dirpath, _dirs, files in os.walk(p):
            for f in files:
                st = os.lstat(os.path.join(dirpath, f))
                apparent += st.st_size
                disk += st.st_blocks * 512
    return apparent, disk
