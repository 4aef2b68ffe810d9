"""Both chunkers on the full benchmark workload: stored bytes and snapshot time (issue 13's "no
regression elsewhere").

    python benchmarks/chunker_workload.py [--quick] [--rounds N]

Builds (or reuses) ``benchmarks/work/execs`` as ``benchmarks/run.py`` does, then snapshots the
executions into a fresh repository per chunker, alternating ``fastcdc`` and ``fastcdc-archives-1``
for ``--rounds`` rounds (so a busy machine weighs on both), and prints per round the wall and CPU
seconds (this process, all threads) of the snapshots and the repository's size with its index.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import workload as wl

from cas import Store
from cas.format.config import ChunkerName

WORK = HERE / "work"


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def one_round(execs: list[Path], chunker: ChunkerName, scratch: Path) -> tuple[float, float, int]:
    root = scratch / chunker.value
    shutil.rmtree(root, ignore_errors=True)
    os.environ["CAS_HOME"] = str(root / "home")
    wall = cpu = 0.0
    with Store.open(str(root / "repo"), index=f"sqlite:///{root / 'index.sqlite'}", chunker=chunker.value) as store:
        for i, path in enumerate(execs):
            w0, c0 = time.perf_counter(), cpu_seconds()
            store.snapshot(path, f"exec-{i + 1:02d}")
            wall += time.perf_counter() - w0
            cpu += cpu_seconds() - c0
    size = sum(f.stat().st_size for f in (root / "repo").rglob("*") if f.is_file())
    size += (root / "index.sqlite").stat().st_size
    shutil.rmtree(root, ignore_errors=True)
    return wall, cpu, size


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="the ~10x smaller workload")
    p.add_argument("--rounds", type=int, default=2, help="rounds per chunker (default 2)")
    args = p.parse_args(argv)
    config = wl.WorkloadConfig.quick() if args.quick else wl.WorkloadConfig()
    wl.load_or_build(WORK, config, reuse=True)
    execs = sorted((WORK / "execs").iterdir())
    print("| round | chunker | wall s | CPU s | repository + index bytes |")
    print("|---|---|---:|---:|---:|")
    with tempfile.TemporaryDirectory(dir=WORK) as tmp:
        for n in range(args.rounds):
            for chunker in (ChunkerName.FASTCDC, ChunkerName.ARCHIVES):
                wall, cpu, size = one_round(execs, chunker, Path(tmp))
                print(f"| {n + 1} | {chunker.value} | {wall:.1f} | {cpu:.1f} | {size:,} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
