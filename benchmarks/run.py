#!/usr/bin/env python3
"""Benchmark cas against restic, borg and AIFlow's zip-and-copy on a series of ML-project executions.

    python benchmarks/run.py                  # full run (4 executions of ~640 MiB each)
    python benchmarks/run.py --quick          # ~10x smaller, a couple of minutes
    python benchmarks/run.py --tools cas,restic

Installs restic and borg (Debian packages) and matplotlib (PyPI) when missing, builds the workload
under benchmarks/work/, runs every tool on the same files, verifies every restore, and writes
benchmarks/results/{results.md,results.json,chart.png}. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import hashlib
import json
import os
import platform
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import setup_tools
import workload as wl
from tools import TOOLS, Tool

WORK = HERE / "work"
RESULTS = HERE / "results"


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------- measuring one command


@dataclasses.dataclass
class Measurement:
    tool: str
    step: str
    cmd: list[str]
    cwd: str
    seconds: float
    max_rss_kib: int
    user_seconds: float
    sys_seconds: float
    returncode: int
    timed_out: bool
    load_before: float
    output_tail: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out


def measure(tool: str, step: str, cmd: list[str], cwd: Path, env: dict[str, str], log_dir: Path, timeout: float) -> Measurement:
    """Run ``cmd`` as a child process; wall time, and the child's own rusage from wait4
    (peak resident set size of the process and of its waited-for descendants, CPU times)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    out_path = log_dir / f"{tool}-{step}.log"
    timed_out = threading.Event()
    load_before = os.getloadavg()[0]
    with open(out_path, "w+b") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

        def kill() -> None:
            timed_out.set()
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

        timer = threading.Timer(timeout, kill)
        timer.start()
        try:
            _, status, ru = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        seconds = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read().decode("utf-8", "replace")
    return Measurement(
        tool=tool,
        step=step,
        cmd=cmd,
        cwd=str(cwd),
        seconds=seconds,
        max_rss_kib=int(ru.ru_maxrss),
        user_seconds=ru.ru_utime,
        sys_seconds=ru.ru_stime,
        returncode=proc.returncode,
        timed_out=timed_out.is_set(),
        load_before=load_before,
        output_tail=text[-4000:],
    )


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


# ---------------------------------------------------------------- the run


def machine_info() -> dict[str, object]:
    mem = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) * 1024
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "memory_bytes": mem,
        "platform": platform.platform(),
        "python": sys.version.split()[0],
    }


def run(args: argparse.Namespace) -> int:
    t_start = time.perf_counter()
    started = dt.datetime.now(dt.timezone.utc)
    names = [t.strip() for t in args.tools.split(",") if t.strip()]
    unknown = [n for n in names if n not in TOOLS]
    if unknown:
        raise SystemExit(f"unknown tools {unknown}; choose from {list(TOOLS)}")
    if "restic" not in names:
        log("restic is not among the tools: ratios to restic will be left out")

    setup_tools.ensure_all(names)

    tools: list[Tool] = [TOOLS[n](WORK) for n in names]
    versions = {t.name: t.version() for t in tools}  # at the start: cas/ may change under us

    config = wl.WorkloadConfig.quick() if args.quick else wl.WorkloadConfig()
    if args.scale != 1.0:
        config = config.scaled(args.scale)
    if args.executions:
        config = dataclasses.replace(config, executions=args.executions)
    WORK.mkdir(parents=True, exist_ok=True)
    log(f"building workload ({config.executions} executions) in {WORK / 'execs'}")
    workload = wl.load_or_build(WORK, config, args.reuse_workload)
    execs = [Path(e.path) for e in workload.executions]
    labels = [e.name for e in workload.executions]
    logical = sum(e.logical_bytes for e in workload.executions)
    log(f"workload: {len(execs)} executions, {logical / 2**20:.0f} MiB logical, built in {workload.build_seconds:.0f}s")

    for sub in ("repos", "cache", "restore", "logs"):
        if (WORK / sub).exists():
            shutil.rmtree(WORK / sub)
    for t in tools:
        t.reset()
    log_dir = WORK / "logs"
    measurements: dict[str, list[Measurement]] = {t.name: [] for t in tools}
    errors: dict[str, list[str]] = {t.name: [] for t in tools}

    def step(t: Tool, name: str, cmd: list[str], cwd: Path) -> Measurement:
        # Flush dirty pages first (untimed) so no step pays for the previous step's writeback.
        os.sync()
        m = measure(t.name, name, cmd, cwd, t.env(), log_dir, args.timeout)
        measurements[t.name].append(m)
        status = "ok" if m.ok else ("TIMEOUT" if m.timed_out else f"FAILED rc={m.returncode}")
        log(f"{t.name:7s} {name:16s} {m.seconds:8.2f}s  peak {m.max_rss_kib / 1024:7.1f} MiB  {status}")
        if not m.ok:
            errors[t.name].append(f"{name}: {status}: {' '.join(cmd)}\n{m.output_tail[-1500:]}")
            print(f"!!! {t.name} {name} {status}\n    cmd: {' '.join(cmd)}\n    cwd: {cwd}\n{m.output_tail[-1500:]}", flush=True)
        return m

    for t in tools:
        for i, (cmd, cwd) in enumerate(t.setup_cmds()):
            step(t, f"setup-{i}", cmd, cwd)

    # Steps run tool after tool for each step (same order every time), so no tool always gets
    # the warmest page cache; the workload was just written and fits in memory, so all tools
    # read from the page cache (dropping caches needs privileges we do not assume).
    for i, (d, label) in enumerate(zip(execs, labels)):
        parent = labels[i - 1] if i else None
        for t in tools:
            cmd, cwd = t.snapshot_cmd(d, label, parent)
            m = step(t, f"snapshot-{label}", cmd, cwd)
            if m.ok:
                t.after_snapshot(label, (log_dir / f"{t.name}-snapshot-{label}.log").read_text())

    stored: dict[str, dict[str, object]] = {}
    for t in tools:
        apparent, disk = stored_bytes(t.stored_paths())
        cache_apparent, _ = stored_bytes(t.cache_paths())
        stored[t.name] = {"stored_bytes": apparent, "disk_bytes": disk, "cache_bytes": cache_apparent, **t.extra_stats()}

    last, last_label = execs[-1], labels[-1]
    again = f"{last_label}-again"
    for t in tools:
        cmd, cwd = t.snapshot_cmd(last, again, last_label)
        m = step(t, "resnapshot", cmd, cwd)
        if m.ok:
            t.after_snapshot(again, (log_dir / f"{t.name}-resnapshot.log").read_text())

    log(f"hashing {last} for verification")
    source = wl_scan_cached(last)
    verifications: dict[str, Verification] = {}
    for t in tools:
        dest = WORK / "restore" / t.name
        if dest.exists():
            shutil.rmtree(dest)
        dest.mkdir(parents=True)
        cmd, cwd = t.restore_cmd(last_label, dest)
        step(t, "restore", cmd, cwd)
        v = verify(source, t.restored_root(dest), check_metadata=t.name != "zip")
        verifications[t.name] = v
        if v.ok:
            log(f"{t.name:7s} restore verified: {v.files} files identical" + ("" if v.metadata_ok else " (metadata differs)"))
        else:
            bar = "!" * 78
            print(f"{bar}\n!!! {t.name}: RESTORE MISMATCH: missing {v.missing}, extra {v.extra}, content {v.content_mismatch}, "
                  f"mode {v.mode_mismatch}, mtime {v.mtime_mismatch}\n" + "\n".join(f"!!!   {e}" for e in v.examples) + f"\n{bar}", flush=True)
        if not args.keep:
            shutil.rmtree(dest, ignore_errors=True)

    total_seconds = time.perf_counter() - t_start
    summary = summarize(tools, labels, measurements, stored, verifications, logical)
    results = {
        "started_utc": started.isoformat(timespec="seconds"),
        "total_seconds": total_seconds,
        "quick": args.quick,
        "machine": machine_info(),
        "tool_versions": versions,
        "workload": workload.to_json(),
        "logical_bytes": logical,
        "summary": summary,
        "stored": stored,
        "verification": {k: dataclasses.asdict(v) for k, v in verifications.items()},
        "errors": errors,
        "measurements": {k: [dataclasses.asdict(m) for m in ms] for k, ms in measurements.items()},
    }
    out_dir = Path(args.results)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(results, indent=2, default=str))
    md = render_markdown(results, labels)
    (out_dir / "results.md").write_text(md)
    try:
        render_chart(results, labels, out_dir / "chart.png")
    except Exception as e:  # noqa: BLE001 - the table matters more than the chart
        log(f"chart failed: {e!r}")
    print()
    print(md)
    log(f"total {total_seconds:.0f}s; results in {out_dir}")
    bad = [n for n, v in verifications.items() if not v.ok]
    failed = [n for n, e in errors.items() if e]
    if bad:
        print(f"!!! RESTORE MISMATCH for {bad}", flush=True)
    if failed:
        print(f"!!! commands failed for {failed} (see results.json 'errors' and {log_dir})", flush=True)
    return 1 if bad or failed else 0


_SCAN_CACHE: dict[str, dict[str, Entry]] = {}


def wl_scan_cached(path: Path) -> dict[str, Entry]:
    key = str(path)
    if key not in _SCAN_CACHE:
        _SCAN_CACHE[key] = scan(path)
    return _SCAN_CACHE[key]


# ---------------------------------------------------------------- summary and reports

METRICS: list[tuple[str, str, str]] = [
    # key, label, unit
    ("first_snapshot_s", "first snapshot", "s"),
    ("later_snapshots_s", "later snapshots (sum)", "s"),
    ("resnapshot_s", "re-snapshot, unchanged tree", "s"),
    ("restore_s", "restore last execution", "s"),
    ("cpu_snapshots_s", "CPU time (user+sys), the series' snapshots", "s"),
    ("cpu_restore_s", "CPU time (user+sys), restore", "s"),
    ("stored_bytes", "stored bytes after the series", "MiB"),
    ("dedup_ratio", "dedup ratio (logical / stored)", "x"),
    ("peak_rss_snapshot_kib", "peak RSS, snapshots", "MiB"),
    ("peak_rss_restore_kib", "peak RSS, restore", "MiB"),
    ("peak_rss_kib", "peak RSS, any command", "MiB"),
]


def summarize(
    tools: list[Tool],
    labels: list[str],
    measurements: dict[str, list[Measurement]],
    stored: dict[str, dict[str, object]],
    verifications: dict[str, Verification],
    logical: int,
) -> dict[str, dict[str, object]]:
    out: dict[str, dict[str, object]] = {}
    for t in tools:
        ms = {m.step: m for m in measurements[t.name]}

        def secs(step: str, ms: dict[str, Measurement] = ms) -> float | None:
            m = ms.get(step)
            return m.seconds if m is not None and m.ok else None

        later = [secs(f"snapshot-{lab}") for lab in labels[1:]]
        snaps = [m for m in measurements[t.name] if m.step.startswith("snapshot-") or m.step == "resnapshot"]
        sb = int(stored[t.name]["stored_bytes"])  # type: ignore[call-overload]
        row: dict[str, object] = {
            "first_snapshot_s": secs(f"snapshot-{labels[0]}"),
            "later_snapshots_s": sum(x for x in later if x is not None) if later and all(x is not None for x in later) else None,
            "resnapshot_s": secs("resnapshot"),
            "restore_s": secs("restore"),
            "stored_bytes": sb,
            "dedup_ratio": (logical / sb) if sb else None,
            "cpu_snapshots_s": sum(m.user_seconds + m.sys_seconds for m in snaps if m.step != "resnapshot") or None,
            "cpu_restore_s": (ms["restore"].user_seconds + ms["restore"].sys_seconds) if "restore" in ms else None,
            "peak_rss_snapshot_kib": max((m.max_rss_kib for m in snaps), default=None),
            "peak_rss_restore_kib": ms["restore"].max_rss_kib if "restore" in ms else None,
            "peak_rss_kib": max((m.max_rss_kib for m in measurements[t.name]), default=None),
            "restore_verified": verifications[t.name].ok if t.name in verifications else False,
        }
        for lab, x in zip(labels[1:], later):
            row[f"snapshot_{lab}_s"] = x
        out[t.name] = row
    if "restic" in out:
        base = out["restic"]
        for row in out.values():
            ratios: dict[str, float | None] = {}
            for key in [k for k in row if k.endswith(("_s", "_kib")) or k in ("stored_bytes", "dedup_ratio")]:
                a, b = row[key], base.get(key)
                ratios[key] = (a / b) if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b else None
            row["ratio_to_restic"] = ratios
    return out


def fmt_value(key: str, unit: str, v: object) -> str:
    if v is None:
        return "failed"
    assert isinstance(v, (int, float))
    if unit == "s":
        return f"{v:.2f} s"
    if key == "stored_bytes":
        return f"{v / 2**20:.1f} MiB"
    if key.endswith("_kib"):
        return f"{v / 1024:.0f} MiB"
    return f"{v:.2f}x"


def render_markdown(results: dict[str, object], labels: list[str]) -> str:
    summary: dict[str, dict[str, object]] = results["summary"]  # type: ignore[assignment]
    names = list(summary)
    has_restic = "restic" in summary
    metrics = list(METRICS)
    for lab in labels[1:]:
        metrics.insert(labels.index(lab), (f"snapshot_{lab}_s", f"snapshot {lab}", "s"))
    lines = []
    wlj: dict[str, object] = results["workload"]  # type: ignore[assignment]
    cfg: dict[str, object] = wlj["config"]  # type: ignore[assignment]
    machine: dict[str, object] = results["machine"]  # type: ignore[assignment]
    lines.append(f"# cas benchmark results{' (quick)' if results['quick'] else ''}\n")
    lines.append(
        f"Run {results['started_utc']} on {machine['cpus']} CPUs, {int(machine['memory_bytes']) / 2**30:.0f} GiB RAM "  # type: ignore[call-overload]
        f"({machine['platform']}); whole run {float(results['total_seconds']):.0f} s.  \n"  # type: ignore[arg-type]
        f"Workload: {len(labels)} executions, {int(results['logical_bytes']) / 2**20:.0f} MiB logical in all "  # type: ignore[call-overload]
        f"(per execution ~{int(cfg['code_bytes']) / 2**20:.0f} MiB code, ~{int(cfg['deps_bytes']) / 2**20:.0f} MiB deps, "  # type: ignore[call-overload]
        f"{int(cfg['model_bytes']) / 2**20:.0f} MiB checkpoint of which {float(cfg['changed_fraction']):.0%} of tensors change).\n"  # type: ignore[call-overload,arg-type]
    )
    upgrade: dict[str, str] = wlj.get("upgrade") or {}  # type: ignore[assignment]
    pkgs: list[str] = wlj.get("deps_packages") or []  # type: ignore[assignment]
    lines.append(
        f"Code from `{wlj['code_source']}`; deps: {len(pkgs)} site-packages entries from `{wlj['deps_source']}`"
        + (f", `{upgrade.get('package')}` upgraded in {labels[max(1, len(labels) // 2)]} "
           f"(content of `{upgrade.get('replaced_by_content_of')}`)" if upgrade and len(labels) > 1 else "")
        + f"; tensors: {wlj['tensor_generator']}.\n"
    )
    header = "| metric | " + " | ".join(names) + " |"
    lines.append(header)
    lines.append("|---|" + "---|" * len(names))
    for key, label, unit in metrics:
        cells = []
        for n in names:
            row = summary[n]
            cell = fmt_value(key, unit, row.get(key))
            ratio = (row.get("ratio_to_restic") or {}).get(key) if has_restic else None  # type: ignore[attr-defined,union-attr]
            if ratio is not None and n != "restic":
                cell += f" ({ratio:.2f}x restic)"
            cells.append(cell)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append("| restore verified | " + " | ".join("yes" if summary[n]["restore_verified"] else "**NO**" for n in names) + " |")
    lines.append("")
    lines.append("Ratios are to restic's figure in the same run (lower is better for times, bytes and memory; "
                 "higher is better for the dedup ratio). Each step ran tool after tool in the order of the columns; "
                 "all files were in the page cache (caches are not dropped).\n")
    loads: list[float] = [
        float(m["load_before"])  # type: ignore[arg-type]
        for ms in results["measurements"].values()  # type: ignore[attr-defined]
        for m in ms
    ]
    if loads:
        cpus = int(machine["cpus"] or 1)  # type: ignore[call-overload]
        busy = max(loads) > cpus
        lines.append(
            f"{'**Busy machine**: ' if busy else ''}1-minute load average before the steps: "
            f"{min(loads):.1f} to {max(loads):.1f} on {cpus} CPUs, the benchmark's own previous steps included"
            + ("; other processes ran during the run: wall times are noisy, CPU times less so." if busy else ".")
            + "\n"
        )
    versions: dict[str, str] = results["tool_versions"]  # type: ignore[assignment]
    lines.append("Versions: " + "; ".join(f"{k}: {v}" for k, v in versions.items()) + "\n")
    ver: dict[str, dict[str, object]] = results["verification"]  # type: ignore[assignment]
    for n, v in ver.items():
        if not v["metadata_ok"] and v["checked_metadata"]:
            lines.append(f"- {n}: restored metadata differs: {v['mode_mismatch']} modes, {v['mtime_mismatch']} mtimes")
    errors: dict[str, list[str]] = results["errors"]  # type: ignore[assignment]
    for n, errs in errors.items():
        for e in errs:
            lines.append(f"- **{n} failed**: {e.splitlines()[0]}")
    return "\n".join(lines).rstrip() + "\n"


def render_chart(results: dict[str, object], labels: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary: dict[str, dict[str, object]] = results["summary"]  # type: ignore[assignment]
    names = list(summary)
    time_keys = [("first_snapshot_s", "first\nsnapshot")]
    time_keys += [(f"snapshot_{lab}_s", f"snapshot\n{lab}") for lab in labels[1:]]
    time_keys += [("resnapshot_s", "re-snapshot\nunchanged"), ("restore_s", "restore\nlast")]
    fig, axes = plt.subplots(1, 3, figsize=(16, 5), gridspec_kw={"width_ratios": [3, 1, 1]})
    width = 0.8 / max(1, len(names))
    ax = axes[0]
    for j, n in enumerate(names):
        vals = [summary[n].get(k) or 0.0 for k, _ in time_keys]
        ax.bar([i + j * width for i in range(len(time_keys))], vals, width, label=n)  # type: ignore[arg-type]
    ax.set_xticks([i + width * (len(names) - 1) / 2 for i in range(len(time_keys))], [lab for _, lab in time_keys])
    ax.set_ylabel("seconds")
    ax.set_title("time per step (lower is better)")
    ax.set_ylim(top=ax.get_ylim()[1] * 1.15)
    ax.legend(loc="upper center", ncol=len(names))
    for ax, key, title, scale in (
        (axes[1], "stored_bytes", "stored after the series (MiB)", 2**20),
        (axes[2], "peak_rss_kib", "peak RSS, any command (MiB)", 1024),
    ):
        vals = [float(summary[n].get(key) or 0) / scale for n in names]  # type: ignore[arg-type]
        bars = ax.bar(names, vals, color=[f"C{i}" for i in range(len(names))])
        ax.set_title(title)
        for b, v in zip(bars, vals):
            ax.annotate(f"{v:.0f}", (b.get_x() + b.get_width() / 2, v), ha="center", va="bottom")
    fig.suptitle(
        f"{len(labels)} executions, {int(results['logical_bytes']) / 2**20:.0f} MiB logical"  # type: ignore[call-overload]
        f"{' (quick)' if results['quick'] else ''} - {results['started_utc']}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="~10x smaller workload (a couple of minutes)")
    p.add_argument("--tools", default="cas,restic,borg,zip", help="comma-separated subset of cas,restic,borg,zip")
    p.add_argument("--executions", type=int, default=0, help="number of executions (default 4)")
    p.add_argument("--scale", type=float, default=1.0, help="multiply the workload's sizes")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds allowed for one tool command")
    p.add_argument("--reuse-workload", action="store_true", help="keep benchmarks/work/execs if built with the same options")
    p.add_argument("--keep", action="store_true", help="keep restored trees under benchmarks/work/restore")
    p.add_argument("--results", default=None, help="directory for results.md, results.json, chart.png "
                   "(default benchmarks/results, or benchmarks/results/quick with --quick)")
    p.add_argument("--no-archives", action="store_true",
                   help="skip the archive case (benchmarks/archive_dedup.py, written to archives.md)")
    args = p.parse_args(argv)
    if args.results is None:
        args.results = str(RESULTS / "quick" if args.quick else RESULTS)
    status = run(args)
    if not args.no_archives:
        import archive_dedup

        log("archives: v1 then v2 of zips, a tar and checkpoints (benchmarks/archive_dedup.py)")
        out = Path(args.results)
        status |= archive_dedup.main([*(["--quick"] if args.quick else []), "--json", str(out / "archives.json"),
                                      "--markdown", str(out / "archives.md")])
    return status


if __name__ == "__main__":
    sys.exit(main())
