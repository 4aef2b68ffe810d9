#!/usr/bin/env python3
"""Replication: the whole benchmark series copied to a second repository with ``Store.copy``.

    python benchmarks/copy_series.py --work benchmarks/work      # a workload run.py built
    python benchmarks/copy_series.py --quick --work /tmp/w        # build a small one there first

Snapshots every execution of the workload into a local repository, then copies them all, one
``copy`` call per execution (as a fleet replicating each run as it lands), to a second local
repository whose backend counts every put and parses each pack it receives. Reports seconds, packs
and blobs put, how many blob IDs arrived more than once (the goal: none), a re-run's puts (the
goal: none), ``verify --read-data`` of the copy, and whether the last execution restored from the
copy equals its directory. Results: ``benchmarks/results/copy.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import run as bench
import workload as wl

from backends.local import LocalBackend
from cas import Store
from cas.format.packs import FOOTER_SIZE, parse_footer, parse_trailer


class CountingLocal(LocalBackend):
    """A local backend that records the blob IDs of every pack put into it."""

    def __init__(self, root: str) -> None:
        super().__init__(root)
        self.puts = 0
        self.blobs: Counter[str] = Counter()

    def put(self, key, data, *, overwrite=True):  # type: ignore[no-untyped-def]
        self.puts += 1
        if key.startswith("data/"):
            raw = bytes(data)
            trailer_len = parse_footer(raw[-FOOTER_SIZE:])
            size = len(raw) - FOOTER_SIZE - trailer_len
            self.blobs.update(e.id for e in parse_trailer(raw[size : len(raw) - FOOTER_SIZE], size))
        super().put(key, data, overwrite=overwrite)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, default=HERE / "work")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--scratch", type=Path, default=Path("/tmp/cas-copy-series"))
    p.add_argument("--out", type=Path, default=HERE / "results")
    args = p.parse_args()
    meta = args.work / "workload.json"
    if meta.exists():
        workload = wl.Workload.from_json(json.loads(meta.read_text()))
    else:
        workload = wl.load_or_build(args.work, wl.WorkloadConfig.quick() if args.quick else wl.WorkloadConfig(), True)
    if args.scratch.exists():
        shutil.rmtree(args.scratch)
    args.scratch.mkdir(parents=True)
    source = Store.open(str(args.scratch / "source"), index=f"sqlite:///{args.scratch / 'source.sqlite'}")
    ids = []
    for execution in workload.executions:
        source.snapshot(execution.path, execution.name, labels={"series": "bench"})
        ids.append(execution.name)
    backend = CountingLocal(str(args.scratch / "copy"))
    target = Store.open(backend, index=f"sqlite:///{args.scratch / 'copy.sqlite'}")
    t0 = time.perf_counter()
    sent = 0
    for execution_id in ids:
        sent += source.copy([execution_id], target).bytes_sent
    seconds = time.perf_counter() - t0
    first_puts, packs = backend.puts, sum(1 for _ in backend.list("data/"))
    rerun = source.copy(labels={"series": "bench"}, to=target)
    verified = target.verify(read_data=True)
    dest = args.scratch / "restored"
    target.restore(ids[-1], dest)
    check = bench.verify(bench.scan(Path(workload.executions[-1].path)), dest, check_metadata=True)
    result = {
        "executions": len(ids),
        "logical_bytes": sum(e.logical_bytes for e in workload.executions),
        "seconds": round(seconds, 2),
        "puts": first_puts,
        "packs": packs,
        "blobs_put": sum(backend.blobs.values()),
        "distinct_blobs_put": len(backend.blobs),
        "blobs_put_more_than_once": sum(1 for n in backend.blobs.values() if n > 1),
        "raw_bytes_sent": sent,
        "rerun_puts": backend.puts - first_puts,
        "rerun_blobs_sent": rerun.blobs_sent,
        "verify_ok": verified.ok,
        "last_restored_exact": check.ok,
    }
    source.close()
    target.close()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "copy.json").write_text(json.dumps(result, indent=2))
    lines = ["# Copying the benchmark series to a second repository", "",
             "| measure | value |", "|---|---:|", *[f"| {k} | {v} |" for k, v in result.items()], ""]
    (args.out / "copy.md").write_text("\n".join(lines))
    print("\n".join(lines))
    shutil.rmtree(args.scratch, ignore_errors=True)
    ok = result["blobs_put_more_than_once"] == 0 and result["rerun_puts"] == 0 and verified.ok and check.ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
