#!/usr/bin/env python3
"""Incremental restore: the workload's last execution restored into a directory that holds the
previous execution, side by side with a fresh restore and with restic's and rustic's restores into
the same existing directory.

    python benchmarks/incremental.py --work /tmp/bench/work        # reuse a built workload
    python benchmarks/incremental.py --quick                         # build a small one first
    python benchmarks/incremental.py --restic /path/to/restic --rustic /path/to/rustic

Every restore runs ``--rounds`` times (3 by default), the order of the runs rotated from round to
round (fresh restores first, then those over the previous execution), over fresh copies of the
previous execution each round; medians are reported with their range, and ratios are of medians.
Nothing is deleted until the timed runs are over: ext4 allocates inodes slowly for minutes after
many were deleted, which made whichever restore followed a deletion several times slower (see
``Trash``; about 7 GiB of disk a round). Each tool is timed as its users run it (cas: ``python -m
cas restore``). For each tool: seconds (wall), bytes written (the child's write accounting,
``ru_oublock``), bytes fetched from the repository (counted once, in a second, untimed run of the
same restore: cas's through a backend wrapper that counts what it reads and maps from packs,
restic's and rustic's under ``strace`` as bytes read from files under the repository's ``data/``),
and whether the result equals the execution (content, modes, mtimes, no
extra entries: every restore runs with its tool's delete option). The existing directory is a
``cp -a`` of the previous execution, the same for every tool, synced to disk before the timed run
(as is the removal before a fresh restore). Results go to
``benchmarks/results/incremental.{md,json}``. Tools are found on PATH unless given. cas runs three
ways over the existing directory: hashing every file in place (the default), ``--trust-mtime`` and
``--in-place`` (patching a mostly unchanged file where it is, as restic does, instead of writing it
anew under a temporary name); and once more by default over the previous execution as its own
``cas restore`` left it there (a worker's directory: the files cache knows the large files that
restore created, see ``docs/CACHE.md``), made before the round and left to settle like the copies;
and over the previous execution as ``cas restore --overwrite`` left it (what a worker's directory
holds after its first incremental restore: each directory and subtree recorded, so those the last
execution shares with it are not entered).

restic runs twice over the existing directory: ``--overwrite if-changed`` trusts a file whose size
and mtime match (the promise cas makes with ``--trust-mtime``), ``--overwrite always`` verifies the
content of every existing file (cas's default); the like-for-like ratios are reported beside the
issue's own (cas's default against restic's if-changed).

Goals (issue 14): incremental at most 0.2x a fresh cas restore and at most 0.5x restic 0.18.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import measure as ms  # scan, verify
import run as bench  # machine_info
import workload as wl

PASSWORD = "benchmark"


def log(msg: str) -> None:
    print(f"[incremental {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# -- the cas restore, run as its own process so that it is measured like the others --------------


def cas_restore_child(argv: list[str]) -> int:
    """``_cas-restore REPO INDEX ID DEST [--overwrite] [--trust-mtime] [--in-place]``: the restore
    the timed ``cas restore`` makes, through a backend that counts the bytes it reads from packs
    (whole reads and mapped ranges); prints that count as JSON. Untimed: it runs once per way."""
    sys.path.insert(0, str(REPO_ROOT))
    from backends.local import LocalBackend
    from cas import Store

    in_view = threading.local()  # a mapped range that falls back to get is counted once

    class Counting(LocalBackend):
        fetched = 0

        def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
            data = super().get(key, offset, length)
            if key.startswith("data/") and not getattr(in_view, "on", False):
                Counting.fetched += len(data)
            return data

        def get_view(self, key: str, offset: int, length: int) -> memoryview:
            in_view.on = True
            try:
                view = super().get_view(key, offset, length)
            finally:
                in_view.on = False
            if key.startswith("data/"):
                Counting.fetched += len(view)
            return view

    repo, index, execution_id, dest, *flags = argv
    with Store.open(Counting(repo), index=index, create=False) as store:
        overwrite = "--overwrite" in flags
        store.restore(execution_id, dest, overwrite=overwrite, delete=overwrite,
                      trust_mtime="--trust-mtime" in flags, in_place="--in-place" in flags)
    print(json.dumps({"fetched": Counting.fetched}))
    return 0


# -- measuring ----------------------------------------------------------------------------------


def timed(name: str, cmd: list[str], env: dict[str, str], logs: Path) -> dict[str, object]:
    """Run ``cmd``; wall seconds, bytes written (ru_oublock is the child's write_bytes / 512)."""
    out_path = logs / f"{name}.log"
    load = round(os.getloadavg()[0], 2)
    with open(out_path, "w+b") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        _, status, ru = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t0
        out.seek(0)
        text = out.read().decode("utf-8", "replace")
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"{name} failed ({code}): {' '.join(cmd)}\n{text[-3000:]}")
    return {"seconds": round(seconds, 2), "cpu": round(ru.ru_utime + ru.ru_stime, 2), "written": ru.ru_oublock * 512,
            "output": text, "load_before": load}


_READ = re.compile(r"^p?read(?:64)?\(\d+<([^>]*)>.*\)\s+=\s+(\d+)$")


def fetched_by_strace(cmd: list[str], env: dict[str, str], repo: Path, logs: Path, name: str) -> int:
    """Bytes a command reads from files under ``repo/data`` (untimed: strace slows it down)."""
    trace = logs / f"{name}.strace"
    # -ff: one file per thread, so no call is split into "unfinished" and "resumed" lines.
    subprocess.run(["strace", "-ff", "-qq", "-y", "-e", "trace=read,pread64", "-o", str(trace), *cmd],
                   env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    prefix = str(repo / "data") + "/"
    total = 0
    for path in logs.glob(f"{name}.strace.*"):
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                m = _READ.match(line.strip())
                if m and m.group(1).startswith(prefix):
                    total += int(m.group(2))
        path.unlink()
    return total


def prepare(previous: Path, dest: Path, run: Run | None = None) -> None:
    """``dest`` holds the previous execution, as a previous restore would have left it (and on
    disk: the copy's writeback is not charged to the restore timed next): a ``cp -a`` of it, or
    what the run's own tool restored of it (``run.previous_by``)."""
    if dest.exists():
        shutil.rmtree(dest)
    if run is not None and run.previous_by is not None:
        subprocess.run(run.previous_by(dest), env=run.env, check=True, stdout=subprocess.DEVNULL)
    else:
        subprocess.run(["cp", "-a", str(previous), str(dest)], check=True)
    os.sync()


class SettledCopies:
    """Copies of the previous execution made before the timed runs and left to settle, as a
    worker's directory holds an execution restored a while ago: each copy is at least
    ``settle_s`` old when a run takes it (moved into place: renaming the directory changes no
    file's times). cas trusts the bytes of a file it replaces without reading them back only once
    the file has been left alone longer than the kernel keeps a page dirty
    (``cas.ops.restore.settled.SETTLED_NS``), which a copy made just before the run never is."""

    def __init__(self, previous: Path, scratch: Path, runs: list[Run], round_no: int, settle_s: float) -> None:
        copied = [run for run in runs if run.previous_by is None]
        self._copies = [scratch / f"previous-{i}" for i in range(len(copied))]
        for copy in self._copies:
            subprocess.run(["cp", "-a", str(previous), str(copy)], check=True)
        # A run over its own tool's restore of the previous execution gets that restore where it
        # runs (cas's files cache knows the files it restored by their paths: never moved).
        self._restored = {run.name: scratch / f"restored-{round_no}-{i}"
                          for i, run in enumerate(r for r in runs if r.previous_by is not None)}
        for run in runs:
            if run.previous_by is not None:
                subprocess.run(run.previous_by(self._restored[run.name]), env=run.env, check=True,
                               stdout=subprocess.DEVNULL)
        os.sync()
        self._ready_at = time.monotonic() + settle_s

    def take(self, dest: Path, run: Run) -> Path:
        """Where ``run`` restores over the previous execution: ``dest``, or its own restore's place."""
        wait = self._ready_at - time.monotonic()
        if wait > 0:
            log(f"letting the copies of the previous execution settle: {wait:.0f} s")
            time.sleep(wait)
        if run.previous_by is not None:
            return self._restored.pop(run.name)
        clear(dest)
        os.rename(self._copies.pop(0), dest)
        return dest


class Trash:
    """Where each run's result goes instead of being deleted, until the whole run is over.

    ext4 without a journal (this machine's) allocates inodes slowly for minutes after many were
    deleted: for each candidate inode it checks whether it was freed recently
    (``recently_deleted`` in ``fs/ext4/ialloc.c``: in the last 60 s, or 360 s while its inode table
    block is dirty, as it is again as soon as new files are made beside it). A restore of 25,000
    files after another's result was removed spent most of its time there (perf: ``ext4_tmpfile``
    and ``ext4_create`` in ``recently_deleted``; cas's fresh restore took 9-16 s instead of 3 s,
    restic's and rustic's slowed too), so whichever tool ran after a deletion paid for it, even a
    round later. Nothing is removed until the timed runs are over (about 7 GiB a round)."""

    def __init__(self, root: Path) -> None:
        self._root = root
        self._root.mkdir(parents=True, exist_ok=True)
        self._count = 0

    def put(self, path: Path) -> None:
        if path.exists():
            os.rename(path, self._root / str(self._count))
            self._count += 1

    def empty(self) -> None:
        shutil.rmtree(self._root, ignore_errors=True)


def clear(dest: Path) -> None:
    """No ``dest``, for a fresh restore (its removal on disk before the restore is timed)."""
    if dest.exists():
        shutil.rmtree(dest)
    os.sync()


@dataclass
class Run:
    """One timed restore: its command for a destination, and whether that holds the previous execution."""

    name: str
    command: Callable[[Path], list[str]]
    env: dict[str, str]
    existing: bool
    counted: Callable[[Path], list[str]] | None = None
    """cas's: the same restore through a child that prints the bytes it fetched (run once, untimed);
    the timed command prints its report as JSON."""
    previous_by: Callable[[Path], list[str]] | None = None
    """Over the previous execution as this command restored it into the given directory (cas's own
    restore, which records its large files in the files cache), instead of a ``cp -a`` of it."""
    version: str = ""
    repo: Path | None = None
    """restic's and rustic's: where the bytes read under ``data/`` count as fetched (under strace)."""


_MEASURES = ("seconds", "cpu", "written", "fetched")


def summarize(samples: list[dict[str, object]]) -> dict[str, object]:
    """Medians over the rounds (with the lowest and highest), the last round's report, and
    whether every round's result was exact."""
    out: dict[str, object] = {"rounds": len(samples)}
    for key in _MEASURES:
        values = sorted(float(s[key]) for s in samples if key in s)  # type: ignore[arg-type]
        if values:
            out[key] = round(statistics.median(values), 2)
            out[key + "_range"] = [round(values[0], 2), round(values[-1], 2)]
    out["load_before"] = [s["load_before"] for s in samples]
    bad = [str(s["result"]) for s in samples if s["result"] != "exact"]
    out["result"] = bad[0] if bad else "exact"
    if "report" in samples[-1]:
        out["report"] = samples[-1]["report"]
    return out


def check(expected: dict[str, ms.Entry], dest: Path) -> str:
    v = ms.verify(expected, dest, check_metadata=True)
    if v.ok:
        return "exact"
    return f"DIFFERS ({'; '.join(v.examples[:3])})"


# -- the run ------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "_cas-restore":
        return cas_restore_child(sys.argv[2:])
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, default=HERE / "work", help="workload directory (execs/ inside)")
    p.add_argument("--quick", action="store_true", help="build the small workload if none is there")
    p.add_argument("--scratch", type=Path, default=None, help="where repositories and restores go")
    p.add_argument("--restic", default=shutil.which("restic"), help="restic binary (default: from PATH)")
    p.add_argument("--rustic", default=shutil.which("rustic"), help="rustic binary (default: from PATH)")
    p.add_argument("--no-strace", action="store_true", help="do not count restic's/rustic's fetched bytes")
    p.add_argument("--out", type=Path, default=HERE / "results")
    p.add_argument("--tools", default="cas,restic,rustic", help="which of cas,restic,rustic to run")
    p.add_argument("--rounds", type=int, default=3, help="times each restore runs, the order rotated (medians reported)")
    p.add_argument("--just-copied", action="store_true",
                   help="run over a copy of the previous execution made just before each run (by default "
                        "the copies are made first and left to settle: see SettledCopies)")
    args = p.parse_args(argv)

    meta = args.work / "workload.json"
    if meta.exists():
        workload = wl.Workload.from_json(json.loads(meta.read_text()))
    else:
        workload = wl.load_or_build(args.work, wl.WorkloadConfig.quick() if args.quick else wl.WorkloadConfig(), True)
    if len(workload.executions) < 2:
        raise SystemExit("the workload needs at least two executions")
    previous, last = Path(workload.executions[-2].path), Path(workload.executions[-1].path)
    scratch = args.scratch or Path(os.environ.get("TMPDIR", "/tmp")) / f"cas-incremental-{os.getpid()}"
    if scratch.exists():
        shutil.rmtree(scratch)
    logs = scratch / "logs"
    logs.mkdir(parents=True)
    log(f"previous {previous} ({workload.executions[-2].files} files), last {last} "
        f"({workload.executions[-1].files} files, {workload.executions[-1].logical_bytes / 2**20:.0f} MiB)")
    expected = ms.scan(last)
    results: dict[str, dict[str, object]] = {}

    tools = set(args.tools.split(","))
    sys.path.insert(0, str(REPO_ROOT))
    from cas.ops.restore.settled import SETTLED_NS
    # Each tool's repository first; then the timed runs, every run once a round, the order rotated
    # from round to round; medians (and the range) reported, ratios of medians.
    runs: list[Run] = []
    if "cas" in tools:
        env = {**os.environ, "CAS_HOME": str(scratch / "cas-home"),
               "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]))}
        repo, index = scratch / "cas-repo", f"sqlite:///{scratch / 'cas-index.sqlite'}"
        cli = [sys.executable, "-m", "cas", "--repo", str(repo), "--index", index]
        for label, path in (("prev", previous), ("last", last)):
            timed(f"cas-snapshot-{label}", [*cli, "snapshot", str(path), "--execution-id", label], env, logs)
        # Timed: the command a user runs. Its fetched bytes: the same restore once more, untimed,
        # through the counting child.
        child = [sys.executable, str(Path(__file__).resolve()), "_cas-restore", str(repo), index, "last"]
        for name, flags, existing in (("cas fresh", [], False), ("cas incremental", ["--overwrite"], True),
                                      ("cas incremental --trust-mtime", ["--overwrite", "--trust-mtime"], True),
                                      ("cas incremental --in-place", ["--overwrite", "--in-place"], True)):
            delete = ["--delete"] if existing else []
            runs.append(Run(name, lambda dest, flags=flags, delete=delete: [*cli, "--json", "restore", "last", str(dest),
                                                                           *flags, *delete],
                            env, existing, counted=lambda dest, flags=flags: [*child, str(dest), *flags]))
        # A worker's directory as cas left it: the previous execution restored there by cas (its
        # large files recorded in the files cache), then the last one restored over it.
        runs.append(Run("cas incremental over its own restore",
                        lambda dest: [*cli, "--json", "restore", "last", str(dest), "--overwrite", "--delete"],
                        env, True, counted=lambda dest: [*child, str(dest), "--overwrite"],
                        previous_by=lambda dest: [*cli, "restore", "prev", str(dest)]))
        # A worker's directory after its first incremental restore: the previous execution restored
        # there by `cas restore --overwrite`, which records each directory it finishes (and its
        # subtree: see docs/CACHE.md), as every restore after a worker's first does.
        runs.append(Run("cas incremental over its own recorded restore",
                        lambda dest: [*cli, "--json", "restore", "last", str(dest), "--overwrite", "--delete"],
                        env, True, counted=lambda dest: [*child, str(dest), "--overwrite"],
                        previous_by=lambda dest: [*cli, "restore", "prev", str(dest), "--overwrite"]))

    if args.restic and "restic" in tools:
        renv = {**os.environ, "RESTIC_REPOSITORY": str(scratch / "restic-repo"), "RESTIC_PASSWORD": PASSWORD,
                "RESTIC_CACHE_DIR": str(scratch / "restic-cache")}
        restic = args.restic
        version = subprocess.run([restic, "version"], capture_output=True, text=True, check=True).stdout.strip()
        timed("restic-init", [restic, "init", "-q"], renv, logs)
        ids = {}
        for label, path in (("prev", previous), ("last", last)):
            m = timed(f"restic-backup-{label}", [restic, "backup", "--json", "--host", "bench", "--tag", label, str(path)],
                      renv, logs)
            for line in str(m["output"]).splitlines():
                if '"summary"' in line:
                    ids[label] = json.loads(line)["snapshot_id"]
        # restic's two modes over existing files: if-changed trusts a matching size and mtime (as cas
        # --trust-mtime does); always verifies the content of every existing file (as cas does by default).
        for name, extra, existing in (("restic fresh", [], False),
                                      ("restic --overwrite if-changed", ["--overwrite", "if-changed", "--delete"], True),
                                      ("restic --overwrite always", ["--overwrite", "always", "--delete"], True)):
            # restic restores the backed-up absolute path under --target: restore its subtree as the root.
            runs.append(Run(name, lambda dest, extra=extra: [restic, "restore", f"{ids['last']}:{last}", "--target",
                                                              str(dest), *extra],
                            renv, existing, version=version, repo=scratch / "restic-repo"))

    if args.rustic and "rustic" in tools:
        rust = args.rustic
        uenv = {**os.environ, "RUSTIC_REPOSITORY": str(scratch / "rustic-repo"), "RUSTIC_PASSWORD": PASSWORD,
                "RUSTIC_CACHE_DIR": str(scratch / "rustic-cache")}
        rversion = subprocess.run([rust, "--version"], capture_output=True, text=True, check=True).stdout.strip()
        timed("rustic-init", [rust, "init"], uenv, logs)
        for label, path in (("prev", previous), ("last", last)):
            timed(f"rustic-backup-{label}", [rust, "backup", "--label", label, "--as-path", "/exec", str(path)], uenv, logs)
        listing = subprocess.run([rust, "snapshots", "--json"], env=uenv, capture_output=True, text=True, check=True)
        snaps = json.loads(listing.stdout)
        flat = [s for group in snaps for s in (group.get("snapshots", [group]) if isinstance(group, dict) else group[1])]
        last_id = next(s["id"] for s in flat if s.get("label") == "last")
        for name, extra, existing in (("rustic fresh", [], False),
                                      ("rustic into existing (trusts mtime)", ["--delete"], True),
                                      ("rustic into existing --verify-existing", ["--delete", "--verify-existing"], True)):
            runs.append(Run(name, lambda dest, extra=extra: [rust, "restore", f"{last_id}:/exec", str(dest), *extra],
                            uenv, existing, version=rversion, repo=scratch / "rustic-repo"))

    samples: dict[str, list[dict[str, object]]] = {run.name: [] for run in runs}
    trash = Trash(scratch / "trash")
    fresh, over = [run for run in runs if not run.existing], [run for run in runs if run.existing]
    for round_no in range(args.rounds):
        settled: SettledCopies | None = None
        if not args.just_copied and over:
            log(f"round {round_no + 1}: copying (or restoring) the previous execution {len(over)} times, to "
                f"settle {SETTLED_NS / 1e9 + 5:.0f} s")
            settled = SettledCopies(previous, scratch, over, round_no, SETTLED_NS / 1e9 + 5)
        # Fresh restores first (they delete nothing), then those over the previous execution; the
        # order rotated within each from round to round.
        order = [group[round_no % len(group):] + group[:round_no % len(group)] for group in (fresh, over) if group]
        for number, run in enumerate(r for group in order for r in group):
            dest = scratch / f"dest-{round_no}-{number}"
            if run.existing:
                if settled is None:
                    prepare(previous, dest, run)
                else:
                    dest = settled.take(dest, run)
            log(f"round {round_no + 1}: {run.name} ...")
            m = timed(re.sub(r"[^a-z-]+", "-", run.name), run.command(dest), run.env, logs)
            output = str(m.pop("output"))
            if run.counted is not None:
                m["report"] = json.loads(output.strip().splitlines()[-1])
            m["result"] = check(expected, dest)
            samples[run.name].append(m)
            log(f"{run.name}: {m}")
            trash.put(dest)
    trash.empty()
    dest = scratch / "dest"

    for run in runs:
        results[run.name] = summarize(samples[run.name])
        if run.version:
            results[run.name]["version"] = run.version
        if run.counted is not None:
            if run.existing:
                prepare(previous, dest, run)
            else:
                clear(dest)
            out = subprocess.run(run.counted(dest), env=run.env, check=True, capture_output=True, text=True).stdout
            results[run.name]["fetched"] = json.loads(out.strip().splitlines()[-1])["fetched"]
        elif run.repo is not None and not args.no_strace and shutil.which("strace"):
            # Fetched bytes of restic and rustic, counted once in an untimed run under strace.
            if run.existing:
                prepare(previous, dest, run)
            else:
                clear(dest)
            results[run.name]["fetched"] = fetched_by_strace(run.command(dest), run.env, run.repo, logs,
                                                             run.name.split()[0])
    clear(dest)

    def ratio(a: str, b: str, key: str) -> float | None:
        if a not in results or b not in results:
            return None
        return round(float(results[a][key]) / float(results[b][key]), 3)  # type: ignore[arg-type]

    restic = "restic --overwrite if-changed"
    goals = {
        "cas incremental / cas fresh, wall seconds (goal <= 0.2)": ratio("cas incremental", "cas fresh", "seconds"),
        "the same, CPU seconds": ratio("cas incremental", "cas fresh", "cpu"),
        "cas incremental --trust-mtime / cas fresh, wall seconds":
            ratio("cas incremental --trust-mtime", "cas fresh", "seconds"),
        "cas incremental --in-place / cas fresh, wall seconds": ratio("cas incremental --in-place", "cas fresh", "seconds"),
        "cas incremental / restic if-changed, wall seconds (goal <= 0.5)": ratio("cas incremental", restic, "seconds"),
        "cas incremental / restic if-changed, CPU seconds": ratio("cas incremental", restic, "cpu"),
        "cas incremental --in-place / restic if-changed, wall seconds": ratio("cas incremental --in-place", restic, "seconds"),
        "cas incremental --in-place / restic if-changed, CPU seconds": ratio("cas incremental --in-place", restic, "cpu"),
        # Like for like: the same promise about existing files on both sides.
        "cas incremental --trust-mtime / restic if-changed (both trust size and mtime), wall seconds":
            ratio("cas incremental --trust-mtime", restic, "seconds"),
        "cas incremental / restic always (both verify existing content), wall seconds":
            ratio("cas incremental", "restic --overwrite always", "seconds"),
        "cas incremental / restic always, CPU seconds": ratio("cas incremental", "restic --overwrite always", "cpu"),
        "cas incremental over its own restore / cas fresh, wall seconds":
            ratio("cas incremental over its own restore", "cas fresh", "seconds"),
        "cas incremental over its own restore / restic if-changed, wall seconds":
            ratio("cas incremental over its own restore", restic, "seconds"),
        "cas incremental over its own recorded restore / cas fresh, wall seconds (goal <= 0.2)":
            ratio("cas incremental over its own recorded restore", "cas fresh", "seconds"),
        "cas incremental over its own recorded restore / restic if-changed, wall seconds (goal <= 0.5)":
            ratio("cas incremental over its own recorded restore", restic, "seconds"),
    }
    goals = {k: v for k, v in goals.items() if v is not None}
    summary = {"previous": str(previous), "last": str(last), "files": workload.executions[-1].files, "rounds": args.rounds,
               "previous_tree": "just copied" if args.just_copied else "settled",
               "logical_bytes": workload.executions[-1].logical_bytes, "results": results, "goals": goals,
               "machine": bench.machine_info()}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "incremental.json").write_text(json.dumps(summary, indent=2, default=str))
    (args.out / "incremental.md").write_text(render(summary))
    print(render(summary))
    shutil.rmtree(scratch, ignore_errors=True)
    return 0


def render(summary: dict[str, object]) -> str:
    mib = 2**20
    lines = [
        "# Incremental restore",
        "",
        f"Last execution ({summary['files']} files, {int(summary['logical_bytes']) / mib:.0f} MiB) restored into a "  # type: ignore[call-overload]
        "directory holding the previous one (`cp -a`), with each tool's delete option, vs a fresh restore; "
        "\"over its own restore\": into the previous execution as `cas restore` left it (the files cache then "
        "knows its large files); \"over its own recorded restore\": as `cas restore --overwrite` left it (as every "
        "restore after a worker's first does: each directory, and each subtree, recorded). "
        + ("The copy of the previous execution was made just before each run (`--just-copied`)."
           if summary.get("previous_tree") == "just copied" else
           "The copies of the previous execution were made before the runs and left to settle (as an execution "
           "restored a while ago; cas then trusts the bytes it copies from a replaced file without reading them back)."),
        (f"Machine: {summary['machine']['cpus']} CPUs, {summary['machine']['platform']}. It is shared with other jobs: the load average before each run is "  # type: ignore[index]
         "shown, and wall times vary several-fold from run to run; CPU seconds (user + system, all threads) vary less."),
        (f"Each restore ran {summary.get('rounds', 1)} times, the order of the runs rotated from round to round: "
         "medians, with the lowest and highest in brackets; ratios are of medians. Fresh restores ran first in each round, "
         "and nothing was deleted until all had run (ext4 creates files slowly for minutes after many were deleted)."),
        "",
        "| run | seconds | CPU seconds | written MiB | fetched MiB | result | load before |",
        "|---|---:|---:|---:|---:|---|---:|",
    ]

    def cell(r: dict[str, object], key: str, scale: float = 1.0, digits: int = 2) -> str:
        if key not in r:
            return "n/a" if key == "fetched" else ""
        value = f"{float(r[key]) / scale:.{digits}f}"  # type: ignore[arg-type]
        spread = r.get(key + "_range")
        if spread and spread[0] != spread[1]:  # type: ignore[index]
            value += f" ({float(spread[0]) / scale:.{digits}f}-{float(spread[1]) / scale:.{digits}f})"  # type: ignore[index]
        return value

    for name, r in summary["results"].items():  # type: ignore[attr-defined]
        loads = r["load_before"] if isinstance(r["load_before"], list) else [r["load_before"]]
        lines.append(f"| {name} | {cell(r, 'seconds')} | {cell(r, 'cpu')} | "
                     f"{cell(r, 'written', mib, 1)} | {cell(r, 'fetched', mib, 1)} | {r['result']} | "
                     f"{', '.join(str(x) for x in loads)} |")
    lines += ["", *[f"- {k}: **{v}**" for k, v in summary["goals"].items()], ""]  # type: ignore[attr-defined]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
