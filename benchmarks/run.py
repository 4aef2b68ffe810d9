#!/usr/bin/env python3
"""Benchmark cas against restic 0.18, rustic, Debian's restic and borg, and AIFlow's zip-and-copy.

    python benchmarks/run.py                  # full run: 3 rounds of all three cases
    python benchmarks/run.py --quick          # everything small, 1 round, a few minutes
    python benchmarks/run.py --tools cas,restic,rustic --cases ml,small --rounds 5

Three cases, each run in every round from empty repositories: the ML workload series (snapshots
of executions, a re-snapshot of an unchanged tree, a restore, a snapshot of the restored tree),
100,000 small files (snapshot, re-snapshot, restore) and one 10 GiB file (snapshot, restore). Builds or installs the peers when
missing, builds the inputs under benchmarks/work/, verifies every restore, and writes
benchmarks/results/{results.md,results.json,chart.png}. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import platform
import shlex
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import measure as ms
import report
import setup_tools
import workload as wl
from tools import TOOLS, Tool

WORK = HERE / "work"
RESULTS = HERE / "results"
CASES = ("ml", "small", "big")


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def parse_size(text: str) -> int:
    """Bytes from '10G', '256M', '4096' (binary units)."""
    units = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    if t and t[-1] in units:
        return int(float(t[:-1]) * units[t[-1]])
    return int(t)


# ---------------------------------------------------------------- cases


@dataclasses.dataclass
class Step:
    key: str
    title: str
    kind: str  # "snapshot" or "restore"
    src: Path  # what is snapshotted, or what the restore must give back
    label: str
    parent: str | None = None
    short: str = ""  # the chart's label
    of_restore: str | None = None  # a snapshot of what this restore step left (each tool its own): src unused

    def to_json(self) -> dict[str, object]:
        return {"key": self.key, "title": self.title, "short": self.short or self.title, "kind": self.kind, "src": str(self.src),
                "label": self.label, "parent": self.parent, "of_restore": self.of_restore}


@dataclasses.dataclass
class Case:
    name: str
    title: str
    description: str
    steps: list[Step]
    stored_after: str  # the step after which the repositories' sizes are taken
    stored_logical_bytes: int
    tools: list[str] = dataclasses.field(default_factory=list)
    derived: list[dict[str, object]] = dataclasses.field(default_factory=list)
    stored: dict[str, list[int]] = dataclasses.field(default_factory=dict)  # the repository's bytes
    local: dict[str, list[int]] = dataclasses.field(default_factory=dict)  # caches (and cas's index) on the host
    verification: dict[str, list[dict[str, object]]] = dataclasses.field(default_factory=dict)
    extra: dict[str, object] = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict[str, object]:
        d = dataclasses.asdict(self)
        d["steps"] = [s.to_json() for s in self.steps]
        d["stored_after_title"] = next(s.title for s in self.steps if s.key == self.stored_after)
        return d


def ml_case(workload: wl.Workload) -> Case:
    execs = [Path(e.path) for e in workload.executions]
    labels = [e.name for e in workload.executions]
    steps = [
        Step(f"snapshot-{lab}", f"first snapshot ({lab})" if i == 0 else f"snapshot {lab}", "snapshot", d, lab, labels[i - 1] if i else None,
             f"first\n{lab}" if i == 0 else lab)
        for i, (d, lab) in enumerate(zip(execs, labels))
    ]
    steps.append(Step("resnapshot", f"re-snapshot of {labels[-1]}, unchanged", "snapshot", execs[-1], f"{labels[-1]}-again", labels[-1],
                      "re-snapshot\nunchanged"))
    steps.append(Step("restore", f"restore {labels[-1]}", "restore", execs[-1], labels[-1], f"restore\n{labels[-1]}"))
    # A worker's flow: the execution restored, then the tree it left snapshotted (a job's outputs beside
    # its inputs) by the same tool, whose restore may have told its files cache what it wrote.
    steps.append(Step("snapshot-restored", f"snapshot of the restored {labels[-1]}", "snapshot", execs[-1],
                      f"{labels[-1]}-restored", labels[-1], f"snapshot of\nrestored {labels[-1]}", of_restore="restore"))
    cfg = workload.config
    logical = sum(e.logical_bytes for e in workload.executions)
    desc = (
        f"{len(labels)} executions of an ML project, {logical / 2**20:.0f} MiB logical in all, "
        f"{workload.executions[0].files} files each (per execution ~{cfg.code_bytes / 2**20:.0f} MiB code from `{workload.code_source}`, "
        f"~{cfg.deps_bytes / 2**20:.0f} MiB deps: {len(workload.deps_packages)} site-packages entries, "
        + (f"`{workload.upgrade.get('package')}` upgraded in {labels[max(1, len(labels) // 2)]}, " if workload.upgrade and len(labels) > 1 else "")
        + f"a {cfg.model_bytes / 2**20:.0f} MiB checkpoint of which {cfg.changed_fraction:.0%} of tensors change). "
        "Each later execution is a new directory (new inodes), so every tool reads it; the re-snapshot "
        "of the last one, untouched, measures the files cache; the last step snapshots the tree each tool's "
        "restore left (a worker snapshotting its restored project)."
    )
    derived: list[dict[str, object]] = []
    if len(labels) > 1:
        derived.append({"key": "later-sum", "title": f"later executions, sum ({labels[1]}..{labels[-1]})",
                        "of": [s.key for s in steps[1:len(labels)]]})
    return Case("ml", "ML workload series", desc, steps, steps[len(labels) - 1].key, logical, derived=derived,
                extra={"workload": workload.to_json()})


def small_case(info: dict[str, object]) -> Case:
    src = Path(str(info["path"]))
    cfg: dict[str, int] = info["config"]  # type: ignore[assignment]
    steps = [
        Step("snapshot", "snapshot", "snapshot", src, "small-1"),
        Step("resnapshot", "re-snapshot, unchanged", "snapshot", src, "small-2", "small-1"),
        Step("restore", "restore", "restore", src, "small-1"),
    ]
    desc = (
        f"{cfg['files']:,} files of {cfg['min_bytes']}-{cfg['max_bytes']} B ({int(info['logical_bytes']) / 2**20:.0f} MiB; "  # type: ignore[call-overload]
        f"{cfg['per_dir']} to a directory), each a slice of a seeded pool that is half random bytes, half text."
    )
    return Case("small", f"{cfg['files']:,} small files", desc, steps, "snapshot", int(info["logical_bytes"]), extra={"input": info})  # type: ignore[call-overload]


def big_case(info: dict[str, object]) -> Case:
    src = Path(str(info["path"]))
    cfg: dict[str, int] = info["config"]  # type: ignore[assignment]
    size = int(info["logical_bytes"])  # type: ignore[call-overload]
    steps = [Step("snapshot", "snapshot", "snapshot", src, "big-1"), Step("restore", "restore", "restore", src, "big-1")]
    desc = (
        f"One file of {size / 2**30:.2f} GiB: {cfg['segment'] // 2**20} MiB segments of float32 weights "
        f"({info.get('tensor_generator')}), {min(cfg['distinct'], -(-size // cfg['segment']))} distinct ones repeated in seeded order, "
        "so every byte is read, cut and hashed while the repositories stay small. Peak RSS here against the other "
        "cases shows whether memory stays flat with the file's size. zip sits this case out."
    )
    return Case("big", f"one {size / 2**30:.3g} GiB file", desc, steps, "snapshot", size, extra={"input": info})


# ---------------------------------------------------------------- the run


def machine_info() -> dict[str, object]:
    mem = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) * 1024
    except OSError:
        pass
    return {"cpus": os.cpu_count(), "memory_bytes": mem, "platform": platform.platform(), "python": sys.version.split()[0]}


class Runner:
    def __init__(self, args: argparse.Namespace, binaries: dict[str, str]) -> None:
        self.args = args
        self.binaries = binaries
        self.measurements: list[dict[str, object]] = []
        self.errors: list[str] = []
        self.scans: dict[str, dict[str, ms.Entry]] = {}
        self.stats: dict[str, dict[str, object]] = {}

    def make(self, name: str, base: Path) -> Tool:
        cls = TOOLS[name]
        b = self.binaries.get(name)
        return cls(base, b) if b else cls(base)

    def command(self, t: Tool, case: str, step: str, rnd: int, pos: int, cmd: list[str], cwd: Path, warm: list[Path]) -> tuple[dict[str, object], Path]:
        tw = time.perf_counter()
        ms.read_all(warm)
        os.sync()  # no step pays for the previous one's writeback
        warm_s = time.perf_counter() - tw
        out_path = WORK / "logs" / f"r{rnd}-{case}-{t.name}-{step}.log"
        load = os.getloadavg()[0]
        u = ms.measure(cmd, cwd, t.env(), out_path, self.args.timeout)
        seconds, rc, timed_out, tail = u.seconds, u.returncode, u.timed_out, u.output_tail
        m = ms.Measurement(
            case=case, step=step, tool=t.name, round=rnd, position=pos, cmd=cmd, cwd=str(cwd), seconds=seconds,
            max_rss_kib=u.max_rss_kib, user_seconds=u.user_seconds, sys_seconds=u.sys_seconds,
            returncode=rc, timed_out=timed_out, load_before=load, warm_seconds=warm_s, output_tail=tail,
            max_pss_kib=u.max_pss_kib, processes=u.processes,
        )
        row = {**dataclasses.asdict(m), "ok": m.ok, "cpu_seconds": m.cpu_seconds}
        status = "ok" if m.ok else ("TIMEOUT" if timed_out else f"FAILED rc={rc}")
        log(f"r{rnd} {case:5s} {step:18s} {t.name:13s} {seconds:8.2f}s  cpu {m.cpu_seconds:7.2f}s  peak {m.max_rss_kib / 1024:7.1f} MiB (PSS {m.max_pss_kib / 1024:.1f}, {m.processes} proc)  {status}")
        if not m.ok:
            self.errors.append(f"round {rnd} {case} {step} {t.name}: {status}: {shlex.join(cmd)}\n{tail[-1500:]}")
            print(f"!!! {t.name} {case} {step} {status}\n    cmd: {shlex.join(cmd)}\n    cwd: {cwd}\n{tail[-1500:]}", flush=True)
        return row, out_path

    def run_case(self, case: Case, rnd: int) -> None:
        base = WORK / "state" / case.name
        if base.exists():
            shutil.rmtree(base)
        base.mkdir(parents=True)
        tools = [self.make(n, base) for n in case.tools]
        for t in tools:
            t.reset()
            for i, (cmd, cwd) in enumerate(t.setup_cmds()):
                self.command(t, case.name, f"setup-{i}", rnd, 0, cmd, cwd, [])
        for si, st in enumerate(case.steps):
            off = (si + rnd) % len(tools)
            for pos, t in enumerate(tools[off:] + tools[:off]):
                if st.kind == "snapshot":
                    src = self.restored(case, st.of_restore, rnd, t) if st.of_restore else st.src
                    cmd, cwd = t.snapshot_cmd(src, st.label, st.parent)
                    row, out = self.command(t, case.name, st.key, rnd, pos, cmd, cwd, [src, *t.cache_paths(), *t.index_paths()])
                    if row["ok"]:
                        t.after_snapshot(st.label, out.read_text(errors="replace"))
                else:
                    dest = self.restored(case, st.key, rnd, t)
                    if dest.exists():
                        shutil.rmtree(dest)
                    dest.mkdir(parents=True)
                    cmd, cwd = t.restore_cmd(st.label, dest)
                    row, _ = self.command(t, case.name, st.key, rnd, pos, cmd, cwd, [*t.stored_paths(), *t.cache_paths()])
                    self.check_restore(case, t, st, dest)
                    if not self.args.keep and case.name == "big":
                        shutil.rmtree(dest, ignore_errors=True)
                self.measurements.append(row)
            # Trees of many files are kept until the run ends: ext4 without
            # a journal (this machine's) passes over inodes freed in the last minute (five while not
            # written back) when it allocates one, looking each up, so a restore after the removal of
            # another tool's (or round's) thousands of files spent seconds of system time there;
            # removed between the steps, the first tool of the next restore step (the order rotates)
            # paid for it.
            if st.key == case.stored_after:
                for t in tools:
                    repository = ms.stored_bytes([t.repo])[0]
                    case.stored.setdefault(t.name, []).append(repository)
                    everything = ms.stored_bytes([*t.stored_paths(), *t.cache_paths()])[0]
                    case.local.setdefault(t.name, []).append(everything - repository)
                    if rnd == 0:
                        stats = t.extra_stats()
                        if stats:
                            self.stats[f"{case.name}/{t.name}"] = stats
        if not self.args.keep:
            shutil.rmtree(base, ignore_errors=True)

    @staticmethod
    def restored(case: Case, step: str, rnd: int, t: Tool) -> Path:
        """Where ``t``'s restore step ``step`` of round ``rnd`` restores."""
        return WORK / "restore" / f"r{rnd}-{case.name}-{step}" / t.name

    def check_restore(self, case: Case, t: Tool, st: Step, dest: Path) -> None:
        key = str(st.src)
        if key not in self.scans:
            log(f"hashing {st.src} for verification")
            self.scans[key] = ms.scan(st.src)
        v = ms.verify(self.scans[key], dest, check_metadata=t.name != "zip")
        case.verification.setdefault(t.name, []).append(dataclasses.asdict(v))
        if v.ok:
            log(f"{t.name} restore verified: {v.files} files identical" + ("" if v.metadata_ok else " (metadata differs)"))
        else:
            bar = "!" * 78
            print(f"{bar}\n!!! {t.name} {case.name}: RESTORE MISMATCH: missing {v.missing}, extra {v.extra}, content {v.content_mismatch}, "
                  f"mode {v.mode_mismatch}, mtime {v.mtime_mismatch}\n" + "\n".join(f"!!!   {e}" for e in v.examples) + f"\n{bar}", flush=True)


def run(args: argparse.Namespace) -> int:
    t_start = time.perf_counter()
    started = dt.datetime.now(dt.timezone.utc)
    names = [t.strip() for t in args.tools.split(",") if t.strip()]
    unknown = [n for n in names if n not in TOOLS]
    if unknown:
        raise SystemExit(f"unknown tools {unknown}; choose from {list(TOOLS)}")
    case_names = [c.strip() for c in args.cases.split(",") if c.strip()]
    if bad := [c for c in case_names if c not in CASES]:
        raise SystemExit(f"unknown cases {bad}; choose from {list(CASES)}")
    if args.rounds < 1:
        raise SystemExit("--rounds must be at least 1")

    bin_dir = WORK / "bin"
    defaults = {"restic": str(bin_dir / "restic"), "rustic": str(bin_dir / "rustic"),
                "restic-debian": setup_tools.APT_PACKAGES["restic-debian"][1], "borg": "borg"}
    given = {"restic": args.restic, "rustic": args.rustic, "restic-debian": args.restic_debian, "borg": args.borg}
    binaries = {k: str(Path(v).resolve()) if v and os.sep in v else (v or defaults[k]) for k, v in given.items()}
    built = {k for k in ("restic", "rustic") if not given[k]}
    setup_tools.ensure_all(names, binaries, built, bin_dir)

    runner = Runner(args, binaries)
    versions = {n: runner.make(n, WORK / "state" / "versions").version() for n in names}  # at the start: cas/ may change under us
    shutil.rmtree(WORK / "state" / "versions", ignore_errors=True)
    for n, v in versions.items():
        log(f"{n}: {v}")

    # ---- inputs
    tb = time.perf_counter()
    WORK.mkdir(parents=True, exist_ok=True)
    cases: list[Case] = []
    if "ml" in case_names:
        config = wl.WorkloadConfig.quick() if args.quick else wl.WorkloadConfig()
        if args.scale != 1.0:
            config = config.scaled(args.scale)
        if args.executions:
            config = dataclasses.replace(config, executions=args.executions)
        log(f"ML workload ({config.executions} executions) in {WORK / 'execs'}")
        cases.append(ml_case(wl.load_or_build(WORK, config, args.reuse_workload)))
    if "small" in case_names:
        files = args.small_files or (2_000 if args.quick else 100_000)
        cases.append(small_case(wl.load_or_build_extra(WORK, "small", wl.SmallFilesConfig(files=files), args.reuse_workload)))
    if "big" in case_names:
        size = parse_size(args.big_size) if args.big_size else (256 * 2**20 if args.quick else 10 * 2**30)
        cases.append(big_case(wl.load_or_build_extra(WORK, "big", wl.BigFileConfig(size=size), args.reuse_workload)))
    build_seconds = time.perf_counter() - tb
    for c in cases:
        c.tools = [n for n in names if c.name not in TOOLS[n].skip_cases]

    for sub in ("state", "restore", "logs"):
        shutil.rmtree(WORK / sub, ignore_errors=True)

    # ---- rounds: every case from empty repositories, tool order rotated per step and round
    out_dir = Path(args.results)

    def write(done: int) -> dict[str, object]:
        """Results of the ``done`` rounds so far (written after every round: a run cut short
        still leaves its figures)."""
        results: dict[str, object] = {
            "started_utc": started.isoformat(timespec="seconds"),
            "total_seconds": time.perf_counter() - t_start,
            "build_seconds": build_seconds,
            "command": shlex.join(["python", *sys.argv]),
            "quick": args.quick,
            "rounds": done,
            "rounds_planned": args.rounds,
            "machine": machine_info(),
            "tool_versions": versions,
            "peers": [n for n in names if TOOLS[n].peer],
            "binaries": binaries,
            "cases": [c.to_json() for c in cases],
            "tool_stats": runner.stats,
            "errors": runner.errors,
            "measurements": [m for m in runner.measurements if int(m["round"]) < done],  # type: ignore[call-overload]
        }
        results["summary"] = report.summarize(results)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "results.json").write_text(json.dumps(results, indent=2, default=str))
        (out_dir / "results.md").write_text(report.render_markdown(results))
        try:
            report.render_chart(results, out_dir / "chart.png")
        except Exception as e:  # noqa: BLE001 - the table matters more than the chart
            log(f"chart failed: {e!r}")
        return results

    for rnd in range(args.rounds):
        for c in cases:
            log(f"round {rnd + 1}/{args.rounds}: {c.title}")
            runner.run_case(c, rnd)
        if rnd + 1 < args.rounds:
            write(rnd + 1)
            log(f"results of {rnd + 1} round{'s' if rnd else ''} in {out_dir}")
    results = write(args.rounds)
    if not args.keep:
        shutil.rmtree(WORK / "restore", ignore_errors=True)  # the restored trees, kept until now
    md = (out_dir / "results.md").read_text()
    print()
    print(md)
    log(f"total {float(results['total_seconds']) / 60:.1f} min; results in {out_dir}")  # type: ignore[arg-type]
    bad = sorted({f"{c.name}/{t}" for c in cases for t, vs in c.verification.items() if not all(v["ok"] for v in vs)})
    if bad:
        print(f"!!! RESTORE MISMATCH for {bad}", flush=True)
    if runner.errors:
        print(f"!!! {len(runner.errors)} commands failed (see results.json 'errors' and {WORK / 'logs'})", flush=True)
    return 1 if bad or runner.errors else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="everything small (ML workload /10, 2,000 small files, a 256 MiB file), 1 round")
    p.add_argument("--tools", default=",".join(TOOLS), help=f"comma-separated subset of {','.join(TOOLS)}")
    p.add_argument("--cases", default=",".join(CASES), help=f"comma-separated subset of {','.join(CASES)}")
    p.add_argument("--rounds", type=int, default=None, help="rounds of every case (default 3, 1 with --quick)")
    p.add_argument("--executions", type=int, default=0, help="executions of the ML series (default 4)")
    p.add_argument("--scale", type=float, default=1.0, help="multiply the ML workload's sizes")
    p.add_argument("--small-files", type=int, default=0, help="files of the small-files case (default 100000, 2000 with --quick)")
    p.add_argument("--big-size", default="", help="size of the big file, e.g. 10G, 2G, 256M (default 10G, 256M with --quick)")
    p.add_argument("--restic", default="", help="restic 0.18 binary (default benchmarks/work/bin/restic, built when missing)")
    p.add_argument("--rustic", default="", help="rustic binary (default benchmarks/work/bin/rustic, built when missing)")
    p.add_argument("--restic-debian", default="", help="Debian's restic (default /usr/bin/restic, apt-get installed when missing)")
    p.add_argument("--borg", default="", help="borg binary (default borg on PATH, apt-get installed when missing)")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds allowed for one tool command")
    p.add_argument("--reuse-workload", action="store_true", help="keep the inputs under benchmarks/work if built with the same options")
    p.add_argument("--keep", action="store_true", help="keep repositories and restored trees under benchmarks/work")
    p.add_argument("--results", default=None, help="directory for results.md, results.json, chart.png "
                   "(default benchmarks/results, or benchmarks/results/quick with --quick)")
    p.add_argument("--no-archives", action="store_true",
                   help="skip the archive case (benchmarks/archive_dedup.py, written to archives.md)")
    p.add_argument("--no-mount", action="store_true",
                   help="skip the mount case (benchmarks/mount.py: cas mount beside restic and rustic mount, written to mount.md)")
    args = p.parse_args(argv)
    if args.rounds is None:
        args.rounds = 1 if args.quick else 3
    if args.results is None:
        args.results = str(RESULTS / "quick" if args.quick else RESULTS)
    status = run(args)
    if not args.no_archives:
        import archive_dedup

        log("archives: v1 then v2 of zips, a tar and checkpoints (benchmarks/archive_dedup.py)")
        out = Path(args.results)
        status |= archive_dedup.main([*(["--quick"] if args.quick else []), "--json", str(out / "archives.json"),
                                      "--markdown", str(out / "archives.md")])
    if not args.no_mount:
        import mount as mount_case

        log("mount: cas mount beside restic mount and rustic mount, find, a tensor read, cat (benchmarks/mount.py)")
        restic = args.restic or str(WORK / "bin" / "restic")
        rustic = args.rustic or str(WORK / "bin" / "rustic")
        peers = ["--tools", "cas,restic,rustic", "--rustic", rustic] if shutil.which(rustic) else ["--tools", "cas,restic"]
        status |= mount_case.main([*(["--quick"] if args.quick else []), *peers, "--restic", restic,
                                   "--results", args.results])
    return status


if __name__ == "__main__":
    sys.exit(main())
