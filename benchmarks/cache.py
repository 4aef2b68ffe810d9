"""The bounded chunk cache under load: 4 processes at once restoring 6 different executions from an
S3 repository (moto's server on loopback), with the cache capped at a third of their unique data.

    python benchmarks/cache.py               # ~150 MiB of unique data, about a minute or two
    python benchmarks/cache.py --scale 0.3   # smaller
    python benchmarks/cache.py --uncapped    # also run with the default cap, for comparison

Each worker is a thread that runs ``cas restore`` processes one after another (the 6 executions,
each worker starting at a different one), all sharing one ``$CAS_HOME`` and so one chunk cache.
Every restored tree is compared byte for byte with its source, then deleted. Meanwhile a sampler
sums the blocks allocated to every file in the cache's entry directories (entries and
temporaries) as fast as it can; the largest sum is the number that matters: the goal is that it
never exceeds the cap by more than one pack. Afterwards nothing may be left behind: no temporary
in the cache, no claim, no lock.

A directory walk is not an instant: entries evicted after the walk counted them and entries
written in directories it reaches later are both counted, so the walk's sum can exceed what was on
disk at any one moment. With ``--tmpfs`` (root only) the cache directory is a tmpfs of its own and
the sampler also reads its used space with ``statvfs``, which is exact and atomic: that is the
number to quote. The ledger database is then kept outside the tmpfs (``ledger.sqlite`` is a
symlink; SQLite puts its journal beside the target), so the tmpfs holds exactly what the cap
bounds, entries and temporaries; the ledger's own largest size is sampled and reported beside it.
The default-cap run's tmpfs is made large (256 GiB, a limit, not memory used) so the default cap
is not a tenth of a small tmpfs.

Results: ``benchmarks/results/cache.md`` and ``cache.json`` (``--results DIR`` to change).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cas import Store
from tests.servers.s3 import REGION, start_moto_server, stop_moto_server

MiB = 1 << 20
EXECUTIONS = 6
WORKERS = 4
PACK_SIZE = 16 * MiB  # the repository default; the goal allows one pack over the cap


def build_workload(root: Path, scale: float) -> dict[str, Path]:
    """Six executions of one project: shared dependencies, a dataset shared by three of them,
    and each its own checkpoint and code. Random bytes, so nothing compresses or dedups by luck."""
    rng = random.Random(14)

    def blob(size: float) -> bytes:
        return rng.randbytes(max(1, int(size * scale)))

    deps = [blob(3 * MiB) for _ in range(8)]
    datasets = [blob(8 * MiB), blob(8 * MiB)]
    execs = {}
    for n in range(EXECUTIONS):
        top = root / f"exec-{n}"
        (top / "deps").mkdir(parents=True)
        for i, data in enumerate(deps):
            (top / "deps" / f"lib{i}.so").write_bytes(data)
        (top / "data").mkdir()
        (top / "data" / "train.bin").write_bytes(datasets[n % 2])
        (top / "model").mkdir()
        (top / "model" / "checkpoint.bin").write_bytes(blob(16 * MiB))
        (top / "code").mkdir()
        for i in range(48):
            (top / "code" / f"mod{i}.py").write_bytes(blob(16 * 1024))
        execs[f"exec-{n}"] = top
    return execs


def digests(root: Path) -> dict[str, str]:
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_file():
            out[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def unique_bytes(execs: dict[str, Path]) -> int:
    seen: dict[str, int] = {}
    for top in execs.values():
        for path in top.rglob("*"):
            if path.is_file():
                seen.setdefault(hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_size)
    return sum(seen.values())


class Sampler(threading.Thread):
    """Sums the blocks of every file under the cache's two-hex-digit entry directories, in a loop;
    with ``statvfs``, also the used space of the file system holding the cache (a tmpfs of its own)."""

    def __init__(self, chunks: Path, statvfs: bool) -> None:
        super().__init__(daemon=True)
        self.chunks = chunks
        self.statvfs = statvfs
        self.stop = threading.Event()
        self.largest = 0
        self.largest_apparent = 0
        self.largest_statvfs = 0
        self.largest_ledger = 0
        self.samples = 0

    def run(self) -> None:
        while not self.stop.is_set():
            if self.statvfs:
                st = os.statvfs(self.chunks)
                self.largest_statvfs = max(self.largest_statvfs, (st.f_blocks - st.f_bfree) * st.f_frsize)
                ledger = 0
                target = os.path.realpath(self.chunks / "ledger.sqlite")
                for suffix in ("", "-wal", "-shm"):
                    try:
                        ledger += os.stat(target + suffix).st_blocks * 512
                    except FileNotFoundError:
                        pass
                self.largest_ledger = max(self.largest_ledger, ledger)
            allocated = apparent = 0
            try:
                subs = [e for e in os.scandir(self.chunks) if len(e.name) == 2 and e.is_dir()]
            except FileNotFoundError:
                subs = []
            for sub in subs:
                for entry in os.scandir(sub.path):
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    allocated += st.st_blocks * 512
                    apparent += st.st_size
            self.largest = max(self.largest, allocated)
            self.largest_apparent = max(self.largest_apparent, apparent)
            self.samples += 1
            time.sleep(0.005)


def run_once(label: str, spec: dict[str, Any], cap: int | None, work: Path, tmpfs: bool) -> dict[str, Any]:
    home = work / f"home-{label}"
    chunks = home / "cache" / "chunks"
    chunks.mkdir(parents=True)
    if tmpfs:
        size = cap * 2 + 64 * MiB if cap is not None else 256 << 30
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(chunks)], check=True)
        (work / f"ledger-{label}").mkdir()
        os.symlink(work / f"ledger-{label}" / "ledger.sqlite", chunks / "ledger.sqlite")
    try:
        return _measure(label, spec, cap, work, home, tmpfs)
    finally:
        if tmpfs:
            subprocess.run(["umount", str(chunks)], check=True)


def _measure(label: str, spec: dict[str, Any], cap: int | None, work: Path, home: Path,
             tmpfs: bool) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CAS_", "AWS_"))}
    env.update(spec["env"], CAS_HOME=str(home), PYTHONPATH=str(ROOT))
    if cap is not None:
        env["CAS_CACHE_MAX"] = str(cap)
    base = [sys.executable, "-m", "cas", "--repo", spec["url"], "--index", spec["index"]]
    sampler = Sampler(home / "cache" / "chunks", statvfs=tmpfs)
    failures: list[str] = []
    restores = 0
    lock = threading.Lock()

    def worker(w: int) -> None:
        nonlocal restores
        names = sorted(spec["digests"])
        for k in range(EXECUTIONS):
            name = names[(w + k) % EXECUTIONS]
            dest = work / f"out-{label}-{w}-{k}"
            proc = subprocess.run([*base, "restore", name, str(dest)], check=False, capture_output=True, text=True, env=env)
            if proc.returncode != 0:
                failures.append(f"worker {w} {name}: {proc.stderr.strip()}")
            elif digests(dest) != spec["digests"][name]:
                failures.append(f"worker {w} {name}: restored tree differs from the source")
            shutil.rmtree(dest, ignore_errors=True)
            with lock:
                restores += 1

    sampler.start()
    started = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(w,)) for w in range(WORKERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - started
    sampler.stop.set()
    sampler.join()
    stats = json.loads(subprocess.run([*base[:3], "--json", "cache"], capture_output=True, text=True,
                                      env=env, check=True).stdout)
    chunks = home / "cache" / "chunks"
    leftovers = [str(p.relative_to(home)) for p in chunks.rglob("*") if ".tmp-" in p.name]
    leftovers += [str(p.relative_to(home)) for d in ("cache/chunks/claims", "locks") for p in (home / d).glob("*")]
    return {
        "label": label, "cap": stats["max_bytes"], "restores": restores, "seconds": round(seconds, 2),
        "largest_on_disk": sampler.largest, "largest_apparent": sampler.largest_apparent,
        "largest_statvfs": sampler.largest_statvfs if tmpfs else None,
        "largest_ledger": sampler.largest_ledger if tmpfs else None,
        "samples": sampler.samples, "final_bytes": stats["bytes"], "entries": stats["entries"],
        "hits": stats["hits"], "misses": stats["misses"], "hit_rate": stats["hit_rate"],
        "failures": failures, "leftovers": leftovers,
        "within_goal": max(sampler.largest, sampler.largest_statvfs) <= stats["max_bytes"] + PACK_SIZE,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the workload's sizes")
    parser.add_argument("--uncapped", action="store_true", help="also run with the default cap, for comparison")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--work", type=Path, default=None, help="scratch directory (default: a new temporary one)")
    parser.add_argument("--tmpfs", action="store_true",
                        help="put each run's cache on a tmpfs of its own and sample it with statvfs (root only)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="cas-cache-bench-", dir=args.work))
    server = start_moto_server()
    try:
        bucket = "cache-bench"
        server.client().create_bucket(Bucket=bucket)
        env = {"AWS_ENDPOINT_URL": server.endpoint_url, "AWS_ACCESS_KEY_ID": server.access_key_id,
               "AWS_SECRET_ACCESS_KEY": server.secret_access_key, "AWS_DEFAULT_REGION": REGION}
        os.environ.update(env)
        execs = build_workload(work / "execs", args.scale)
        unique = unique_bytes(execs)
        spec = {"url": f"s3://{bucket}/cas", "index": f"sqlite:///{work / 'index.sqlite'}", "env": env,
                "digests": {name: digests(top) for name, top in execs.items()}, "unique": unique}
        os.environ["CAS_HOME"] = str(work / "home-writer")
        with Store.open(spec["url"], index=spec["index"], chunk_cache=False) as store:
            for name, top in execs.items():
                store.snapshot(top, name)
        cap = unique // 3
        runs = [run_once("capped", spec, cap, work, args.tmpfs)]
        if args.uncapped:
            runs.append(run_once("default-cap", spec, None, work, args.tmpfs))
    finally:
        stop_moto_server(server)
        shutil.rmtree(work, ignore_errors=True)
    result = {"workers": WORKERS, "executions": EXECUTIONS, "scale": args.scale, "unique_bytes": unique,
              "pack_size": PACK_SIZE, "runs": runs}
    lines = [
        "# Bounded chunk cache: 4 processes restoring 6 executions from S3 (moto)", "",
        (f"`python benchmarks/cache.py{' --scale ' + str(args.scale) if args.scale != 1 else ''}"
         f"{' --uncapped' if args.uncapped else ''}{' --tmpfs' if args.tmpfs else ''}`: {EXECUTIONS} executions, "
         f"{unique / MiB:.1f} MiB of unique file data; {WORKERS} workers each restore all {EXECUTIONS} "
         "(starting at different ones) with `cas restore`, sharing one cache. Largest = the most the "
         "cache's entry files (and temporaries) took on disk at any sample, summed by a directory walk "
         "(which can over-count: see the script's docstring); statvfs = the used space of the cache's own "
         "tmpfs at any sample, exact and atomic (with --tmpfs; entries and temporaries, what the cap bounds, "
         "the ledger database kept outside and its largest size shown beside). largest / cap uses statvfs "
         "when measured."), "",
        ("| run | cap MiB | largest on disk MiB (walk) | largest on disk MiB (statvfs) | "
         "largest ledger MiB | largest / cap | cap + 1 pack MiB | "
         "within goal | samples | restores | seconds | hit rate | chunks fetched | failures | leftovers |"),
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        rate = f"{100 * r['hit_rate']:.1f}%" if r["hit_rate"] is not None else "-"
        exact = f"{r['largest_statvfs'] / MiB:.1f}" if r["largest_statvfs"] is not None else "-"
        entries = f"{r['largest_ledger'] / MiB:.2f}" if r["largest_statvfs"] is not None else "-"
        largest = r["largest_statvfs"] if r["largest_statvfs"] is not None else r["largest_on_disk"]
        lines.append(
            f"| {r['label']} | {r['cap'] / MiB:.1f} | {r['largest_on_disk'] / MiB:.1f} | {exact} | {entries} | "
            f"{largest / r['cap']:.3f} | {(r['cap'] + PACK_SIZE) / MiB:.1f} | "
            f"{'yes' if r['within_goal'] else 'NO'} | {r['samples']} | {r['restores']} | {r['seconds']} | {rate} | "
            f"{r['misses']} | {len(r['failures'])} | {len(r['leftovers'])} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    for r in runs:
        for problem in r["failures"] + [f"left behind: {p}" for p in r["leftovers"]]:
            print(f"{r['label']}: {problem}")
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "cache.md").write_text(text)
    (args.results / "cache.json").write_text(json.dumps(result, indent=2) + "\n")
    ok = all(r["within_goal"] and not r["failures"] and not r["leftovers"] for r in runs)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
