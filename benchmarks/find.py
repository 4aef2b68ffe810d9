"""Benchmark for ``cas find`` (issue 15): a repository of many executions of the benchmark's tree.

    python benchmarks/find.py                       # 200 executions (builds the repository once)
    python benchmarks/find.py --executions 20       # a smaller one
    python benchmarks/find.py --source DIR          # snapshot DIR instead of the workload's tree

The tree is the workload's first execution (``benchmarks/workload.py``: ``code/`` and ``deps/``,
real Python trees; its ``model/`` is left out, it adds one file and hundreds of MiB). It is copied
once to ``WORK/tree``; each execution then edits 5 ``.py`` files and rewrites ``run/`` the way the
workload does, and is snapshotted in-process with the label ``workflow=train`` (every fourth
``workflow=eval``). Later runs reuse the repository in ``WORK`` and only add missing executions.

Measured, each several times (the machine is shared: the minimum and the median of the wall time
are reported, and of the CPU time the process used, which other processes' load does not inflate):

* ``Store.find(PATTERN, labels={"workflow": "train"})`` consumed to the end, with the number of
  calls it made to the backend (a counting wrapper around the real local backend), as ``Found`` rows
  and as ``runs()`` (the form the command prints from, no object per row);
* the same through the command line, ``python -m cas find PATTERN --label workflow=train``, as a
  user runs it (process start and index open included), output to ``/dev/null`` and through a pipe
  into ``wc -l``;
* the same without the label (every execution), and with a pattern that matches one file per
  execution (``config.json``): the walk of the index without the cost of a large answer.

Results go to ``benchmarks/results/find.json`` (``--results``).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

import workload

from backends.local import LocalBackend
from cas import Store


class CountingBackend(LocalBackend):
    """The real local backend, counting every call made to it."""

    def __init__(self, root: str) -> None:
        super().__init__(root)
        self.calls = 0

    def get(self, *a, **k):  # type: ignore[no-untyped-def]
        self.calls += 1
        return super().get(*a, **k)

    def list(self, *a, **k):  # type: ignore[no-untyped-def]
        self.calls += 1
        return super().list(*a, **k)

    def stat(self, *a, **k):  # type: ignore[no-untyped-def]
        self.calls += 1
        return super().stat(*a, **k)

    def exists(self, *a, **k):  # type: ignore[no-untyped-def]
        self.calls += 1
        return super().exists(*a, **k)

    def put(self, *a, **k):  # type: ignore[no-untyped-def]
        self.calls += 1
        return super().put(*a, **k)

    def delete(self, *a, **k):  # type: ignore[no-untyped-def]
        self.calls += 1
        return super().delete(*a, **k)


def _source(work: Path, given: str | None) -> Path:
    if given:
        return Path(given)
    config = workload.WorkloadConfig(executions=1, model_bytes=1 << 20, tensors=4)
    built = workload.load_or_build(work / "workload", config, reuse=True)
    return Path(built.executions[0].path)


def build_repository(work: Path, source: Path, executions: int) -> tuple[Store, CountingBackend, float]:
    tree = work / "tree"
    if not tree.exists():
        print(f"[find] copying {source} to {tree}", flush=True)
        shutil.copytree(source, tree, symlinks=True, ignore=lambda d, names: ["model"] if Path(d) == source else [])
    backend = CountingBackend(str(work / "repo"))
    os.environ.setdefault("CAS_HOME", str(work / "home"))
    store = Store.open(backend, index=f"sqlite:///{work / 'index.sqlite'}")
    have = {s.execution_id for s in store.list()}
    rnd = random.Random(20261126 + len(have))
    t0 = time.perf_counter()
    for i in range(1, executions + 1):
        eid = f"exec-{i:03d}"
        if eid in have:
            continue
        workload.edit_code(tree / "code", rnd, 5, i)
        workload.write_run_files(tree / "run", i, rnd)
        snap = store.snapshot(tree, eid, labels={"workflow": "eval" if i % 4 == 0 else "train"})
        print(f"[find] {eid}: {snap.stats.get('files', 0)} files", flush=True)
    return store, backend, time.perf_counter() - t0


def _time_api(store: Store, backend: CountingBackend, pattern: str, labels: dict[str, str], repeat: int) -> dict:
    times, cpu, rows, calls = [], [], 0, 0
    for _ in range(repeat):
        backend.calls = 0
        t0, c0 = time.perf_counter(), time.process_time()
        rows = sum(1 for _ in store.find(pattern, labels=labels))
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        calls = backend.calls
    return {"rows": rows, "backend_calls": calls, "min_s": min(times), "median_s": statistics.median(times),
            "cpu_min_s": min(cpu), "cpu_median_s": statistics.median(cpu)}


def _time_api_runs(store: Store, pattern: str, labels: dict[str, str], repeat: int) -> dict:
    """``Store.find(...).runs()`` consumed to the end: the answer without a Python object per row
    (what ``cas find`` prints from)."""
    times, cpu, rows = [], [], 0
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        rows = sum(len(run) for _, runs in store.find(pattern, labels=labels).runs() for run in runs)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return {"rows": rows, "min_s": min(times), "median_s": statistics.median(times),
            "cpu_min_s": min(cpu), "cpu_median_s": statistics.median(cpu)}


def _time_cli(work: Path, pattern: str, label: list[str], repeat: int, sink: str = "devnull") -> dict:
    """The command as a user runs it, start-up included: its output to ``/dev/null`` (``sink="devnull"``)
    or through a pipe into ``wc -l`` (``sink="wc"``: the pipe's cost is then the command's too). CPU
    is the command's own (``wait4``), not wc's; wall runs until both have exited."""
    env = {**os.environ, "PYTHONPATH": str(HERE.parent), "CAS_HOME": str(work / "home")}
    cmd = [sys.executable, "-m", "cas", "--repo", str(work / "repo"), "--index", f"sqlite:///{work / 'index.sqlite'}",
           "find", pattern, *label]
    times, cpu, lines = [], [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        if sink == "wc":
            cas = subprocess.Popen(cmd, stdout=subprocess.PIPE, env=env)
            wc = subprocess.Popen(["wc", "-l"], stdin=cas.stdout, stdout=subprocess.PIPE)
            assert cas.stdout is not None
            cas.stdout.close()  # wc holds the read end now
            _, status, usage = os.wait4(cas.pid, 0)
            cas.returncode = os.waitstatus_to_exitcode(status)
            out, _ = wc.communicate()
            lines = int(out)
        else:
            with open(os.devnull, "w") as devnull:
                cas = subprocess.Popen(cmd, stdout=devnull, env=env)
                _, status, usage = os.wait4(cas.pid, 0)
                cas.returncode = os.waitstatus_to_exitcode(status)
        times.append(time.perf_counter() - t0)
        if cas.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} exited with {cas.returncode}")
        cpu.append(usage.ru_utime + usage.ru_stime)
    result = {"command": " ".join(cmd[2:]) + (" | wc -l" if sink == "wc" else " > /dev/null"),
              "min_s": min(times), "median_s": statistics.median(times),
              "cpu_min_s": min(cpu), "cpu_median_s": statistics.median(cpu)}
    if lines is not None:
        result["lines"] = lines
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--executions", type=int, default=200)
    p.add_argument("--work", default=str(HERE / "work" / "find"))
    p.add_argument("--source", default=None, help="tree to snapshot (default: the workload's first execution)")
    p.add_argument("--pattern", default="*.py")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--results", default=str(HERE / "results" / "find.json"))
    args = p.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    store, backend, build_s = build_repository(work, _source(work, args.source), args.executions)
    try:
        files, _ = workload.tree_size(work / "tree")
        result = {
            "executions": len(store.list()),
            "train_executions": len(store.list(labels={"workflow": "train"})),
            "files_per_execution": files,
            "tree_entry_rows": _rows(store),
            "build_s": build_s,
            "pattern": args.pattern,
            "api_train": _time_api(store, backend, args.pattern, {"workflow": "train"}, args.repeat),
            "api_train_runs": _time_api_runs(store, args.pattern, {"workflow": "train"}, args.repeat),
            "api_all": _time_api(store, backend, args.pattern, {}, args.repeat),
            # The same walk of the index with a tiny answer: the cost that does not grow with the rows.
            "api_train_one_file": _time_api(store, backend, "config.json", {"workflow": "train"}, args.repeat),
            "cli_train": _time_cli(work, args.pattern, ["--label", "workflow=train"], args.repeat),
            "cli_train_wc": _time_cli(work, args.pattern, ["--label", "workflow=train"], args.repeat, sink="wc"),
            "cli_all": _time_cli(work, args.pattern, [], args.repeat),
            # Start-up, opening the index and the walk, with a tiny answer.
            "cli_train_one_file": _time_cli(work, "config.json", ["--label", "workflow=train"], args.repeat),
            "machine": f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end (shared)",
        }
    finally:
        store.close()
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


def _rows(store: Store) -> int:
    from sqlalchemy import text

    with store.repo.index.engine.connect() as conn:
        return int(conn.execute(text("SELECT count(*) FROM tree_entries")).scalar())


if __name__ == "__main__":
    raise SystemExit(main())
