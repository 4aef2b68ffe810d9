"""From the run's measurements to figures: medians over rounds, ratios to the best peer, the
markdown table and the chart."""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

# The best peer of a step is the peer (results["peers"]) with the lowest median.
SUBJECT = "cas"
GOAL_TIME_RATIO = 0.5


def _median(xs: list[float]) -> float:
    return float(statistics.median(xs))


def summarize(results: dict[str, object]) -> dict[str, object]:
    """Per case, per step, per tool: medians and ranges over the rounds; per step the best peer
    and cas's ratios to it. A tool's step counts only if it succeeded in every round."""
    cases: list[dict[str, object]] = results["cases"]  # type: ignore[assignment]
    rows: list[dict[str, object]] = results["measurements"]  # type: ignore[assignment]
    rounds = int(results["rounds"])  # type: ignore[call-overload]
    peers: list[str] = results["peers"]  # type: ignore[assignment]
    out: dict[str, object] = {}
    for case in cases:
        cname = str(case["name"])
        steps: list[dict[str, str]] = list(case["steps"])  # type: ignore[call-overload]
        per_step: dict[str, dict[str, dict[str, float | int | None]]] = {}
        by_key: dict[tuple[str, str], list[dict[str, object]]] = {}
        for m in rows:
            if m["case"] == cname:
                by_key.setdefault((str(m["step"]), str(m["tool"])), []).append(m)
        tools = [str(t) for t in case["tools"]]  # type: ignore[attr-defined]
        for st in steps:
            per_step[st["key"]] = {}
            for t in tools:
                ms = by_key.get((st["key"], t), [])
                per_step[st["key"]][t] = _stats(ms, rounds)
        derived = case.get("derived") or []
        for d in derived:  # type: ignore[attr-defined]
            # a sum of steps, per round (e.g. the later executions of the series)
            per_step[d["key"]] = {}
            for t in tools:
                per_round: dict[int, list[dict[str, object]]] = {}
                for k in d["of"]:
                    for m in by_key.get((k, t), []):
                        per_round.setdefault(int(m["round"]), []).append(m)  # type: ignore[call-overload]
                sums = [
                    {"ok": all(m["ok"] for m in ms), "seconds": sum(float(m["seconds"]) for m in ms),  # type: ignore[arg-type]
                     "cpu_seconds": sum(float(m["cpu_seconds"]) for m in ms),  # type: ignore[arg-type]
                     "max_rss_kib": max(int(m["max_rss_kib"]) for m in ms)}  # type: ignore[call-overload]
                    for r, ms in sorted(per_round.items()) if len(ms) == len(d["of"])
                ]
                per_step[d["key"]][t] = _stats(sums, rounds)
        ratios: dict[str, dict[str, object]] = {}
        for key, by_tool in per_step.items():
            ratios[key] = _ratios({t: v for t, v in by_tool.items() if t == SUBJECT or t in peers})
        stored: dict[str, list[int]] = case.get("stored") or {}  # type: ignore[assignment]
        local: dict[str, list[int]] = case.get("local") or {}  # type: ignore[assignment]
        stored_med = {t: int(_median([float(x) for x in v])) for t, v in stored.items() if v}
        local_med = {t: int(_median([float(x) for x in v])) for t, v in local.items() if v}
        total_med = {t: b + local_med[t] for t, b in stored_med.items() if t in local_med}
        out[cname] = {"steps": per_step, "ratios": ratios, "stored_bytes": stored_med, "local_bytes": local_med,
                      "stored_ratio": _bytes_ratio(stored_med, peers),
                      "total_ratio": _bytes_ratio(total_med, peers)}
    return out


def _stats(ms: list[dict[str, object]], rounds: int) -> dict[str, float | int | None]:
    ok = [m for m in ms if m["ok"]]
    if not ok or len(ok) < len(ms) or len(ok) < rounds:
        return {"n": len(ok), "failed": len(ms) - len(ok) + max(0, rounds - len(ms)), "seconds": None}
    secs = [float(m["seconds"]) for m in ok]  # type: ignore[arg-type]
    cpu = [float(m["cpu_seconds"]) for m in ok]  # type: ignore[arg-type]
    rss = [int(m["max_rss_kib"]) for m in ok]  # type: ignore[call-overload]
    return {
        "n": len(ok), "failed": 0,
        "seconds": _median(secs), "seconds_min": min(secs), "seconds_max": max(secs),
        "cpu_seconds": _median(cpu), "cpu_min": min(cpu), "cpu_max": max(cpu),
        "rss_kib": _median([float(x) for x in rss]), "rss_min_kib": min(rss), "rss_max_kib": max(rss),
    }


def _ratios(by_tool: dict[str, dict[str, float | int | None]]) -> dict[str, object]:
    out: dict[str, object] = {}
    me = by_tool.get(SUBJECT)
    for metric, field in (("time", "seconds"), ("cpu", "cpu_seconds"), ("rss", "rss_kib")):
        peers = {t: s[field] for t, s in by_tool.items() if t != SUBJECT and s.get(field) is not None}
        if not peers:
            continue
        best = min(peers, key=lambda t: float(peers[t]))  # type: ignore[arg-type]
        mine = me.get(field) if me else None
        out[metric] = {
            "best_peer": best,
            "best_value": peers[best],
            "ratio": (float(mine) / float(peers[best])) if mine is not None and peers[best] else None,  # type: ignore[arg-type]
        }
    return out


# ---------------------------------------------------------------- markdown


def _mib(kib: float | None) -> str:
    return "failed" if kib is None else f"{float(kib) / 1024:.0f}"


def _secs(s: dict[str, float | int | None]) -> str:
    if s.get("seconds") is None:
        return f"**failed** ({s.get('failed')})" if s.get("failed") else "-"
    if s["n"] == 1:
        return f"{s['seconds']:.2f}"
    return f"{s['seconds']:.2f} ({s['seconds_min']:.2f}-{s['seconds_max']:.2f})"


def _bytes_ratio(by_tool: dict[str, int], peers: set[str] | list[str]) -> dict[str, object]:
    """cas's bytes over the fewest of any peer's (empty when either is missing)."""
    peer_bytes = {t: v for t, v in by_tool.items() if t in peers}
    if SUBJECT not in by_tool or not peer_bytes:
        return {}
    best = min(peer_bytes, key=lambda t: peer_bytes[t])
    return {"best_peer": best, "ratio": by_tool[SUBJECT] / peer_bytes[best] if peer_bytes[best] else None}


def _ratio(r: dict[str, object] | None, unit: str = "") -> str:
    if not r or r.get("ratio") is None:
        return "-"
    return f"{float(r['ratio']):.2f}x {r['best_peer']}"  # type: ignore[arg-type]


def render_markdown(results: dict[str, object]) -> str:
    summary: dict[str, dict[str, object]] = results["summary"]  # type: ignore[assignment]
    cases: list[dict[str, object]] = results["cases"]  # type: ignore[assignment]
    machine: dict[str, object] = results["machine"]  # type: ignore[assignment]
    rounds = int(results["rounds"])  # type: ignore[call-overload]
    lines: list[str] = []
    lines.append(f"# cas benchmark results{' (quick)' if results['quick'] else ''}\n")
    planned = int(results.get("rounds_planned") or rounds)  # type: ignore[call-overload]
    if planned > rounds:
        lines.append(f"**Partial: {rounds} of {planned} rounds done when this was written.**\n")
    lines.append(
        f"Run {results['started_utc']} on {machine['cpus']} CPUs, {int(machine['memory_bytes']) / 2**30:.0f} GiB RAM "  # type: ignore[call-overload]
        f"({machine['platform']}); {rounds} round{'s' if rounds != 1 else ''}, whole run {float(results['total_seconds']) / 60:.0f} min "  # type: ignore[arg-type]
        f"(building the inputs {float(results['build_seconds']):.0f} s).  \n"  # type: ignore[arg-type]
        f"Command: `{results['command']}`\n"
    )
    lines.append(
        (f"Figures are medians over the {rounds} rounds, with (min-max); " if rounds > 1 else "Figures are from one round; ")
        + "every round starts from empty repositories. "
        "Before each tool's step its input is read once (the source tree for a snapshot, the repository "
        "and caches for a restore) and dirty pages are flushed, untimed; the order of the tools rotates "
        "from step to step and round to round. Ratios are cas's median over the best peer's median "
        f"(the lowest median among {', '.join(results['peers'])} in that step; lower is better; "  # type: ignore[arg-type]
        "AIFlow's zip-and-copy is shown as a baseline, not a peer).\n"
    )
    lines.append("## cas / best peer\n")
    lines.append("| case | step | time | CPU (user+sys) | peak RSS |")
    lines.append("|---|---|---|---|---|")
    for case in cases:
        cs = summary[str(case["name"])]
        ratios: dict[str, dict[str, object]] = cs["ratios"]  # type: ignore[assignment]
        for st in _report_steps(case):
            r = ratios.get(st["key"], {})
            lines.append(f"| {case['title']} | {st['title']} | {_ratio(r.get('time'))} | {_ratio(r.get('cpu'))} | {_ratio(r.get('rss'))} |")  # type: ignore[arg-type]
        sr: dict[str, object] = cs["stored_ratio"]  # type: ignore[assignment]
        if sr:
            lines.append(f"| {case['title']} | stored bytes (repository) | {_ratio(sr)} | | |")
        tr: dict[str, object] = cs.get("total_ratio") or {}  # type: ignore[assignment]
        if tr:
            lines.append(f"| {case['title']} | bytes with the local caches (and cas's index) | {_ratio(tr)} | | |")
    lines.append("")
    lines.append(f"Goal (issue 17): every snapshot and restore step at most {GOAL_TIME_RATIO}x the best peer's time, "
                 "peak RSS at most the best peer's, stored bytes no more than the best peer's.\n")
    for case in cases:
        name = str(case["name"])
        cs = summary[name]
        tools = [str(t) for t in case["tools"]]  # type: ignore[attr-defined]
        steps: dict[str, dict[str, dict[str, float | int | None]]] = cs["steps"]  # type: ignore[assignment]
        lines.append(f"## {case['title']}\n")
        lines.append(f"{case['description']}\n")
        header = "| step | " + " | ".join(tools) + " |"
        sep = "|---|" + "---|" * len(tools)
        lines.append("Wall time, seconds:\n")
        lines += [header, sep]
        for st in _report_steps(case):
            lines.append(f"| {st['title']} | " + " | ".join(_secs(steps[st['key']][t]) for t in tools) + " |")
        lines.append("\nCPU time (user+sys), seconds:\n")
        lines += [header, sep]
        for st in _report_steps(case):
            lines.append(f"| {st['title']} | " + " | ".join(
                "-" if steps[st["key"]][t].get("cpu_seconds") is None else f"{steps[st['key']][t]['cpu_seconds']:.2f}" for t in tools) + " |")
        lines.append("\nPeak RSS, MiB (median; max over rounds in brackets when it differs by more than 5%):\n")
        lines += [header, sep]
        for st in _report_steps(case):
            if st.get("derived"):
                continue
            cells = []
            for t in tools:
                s = steps[st["key"]][t]
                if s.get("rss_kib") is None:
                    cells.append("-")
                    continue
                cell = _mib(s["rss_kib"])
                if float(s["rss_max_kib"]) > 1.05 * float(s["rss_kib"]):  # type: ignore[arg-type]
                    cell += f" [{_mib(s['rss_max_kib'])}]"
                cells.append(cell)
            lines.append(f"| {st['title']} | " + " | ".join(cells) + " |")
        stored: dict[str, int] = cs["stored_bytes"]  # type: ignore[assignment]
        local_bytes: dict[str, int] = cs.get("local_bytes") or {}  # type: ignore[assignment]
        if stored:
            lines.append(f"\nBytes after {case['stored_after_title']}, MiB; logical "
                         f"{int(case['stored_logical_bytes']) / 2**20:.0f} MiB. The repository is what the "  # type: ignore[call-overload]
                         "tool stores; on the host it also keeps caches (restic's and rustic's cache, borg's "
                         "chunks and files caches, cas's files cache) and, for cas, its index (rebuildable "
                         "from the repository, like those caches):\n")
            lines += [header.replace("step", "", 1), sep]
            lines.append("| repository | " + " | ".join(f"{stored[t] / 2**20:.1f}" if t in stored else "-" for t in tools) + " |")
            if local_bytes:
                lines.append("| caches and index on the host | " + " | ".join(
                    f"{local_bytes[t] / 2**20:.1f}" if t in local_bytes else "-" for t in tools) + " |")
                lines.append("| both | " + " | ".join(
                    f"{(stored[t] + local_bytes[t]) / 2**20:.1f}" if t in stored and t in local_bytes else "-"
                    for t in tools) + " |")
        ver: dict[str, list[dict[str, object]]] = case.get("verification") or {}  # type: ignore[assignment]
        lines.append("\nRestores verified (every round): " + "; ".join(
            f"{t}: " + ("yes" if vs and all(v["ok"] for v in vs) else "**NO**")
            + ("" if not vs or all(v["metadata_ok"] for v in vs) or not vs[0]["checked_metadata"] else " (metadata differs)")
            for t, vs in sorted(ver.items(), key=lambda tv: tools.index(tv[0]) if tv[0] in tools else len(tools))) + "\n")
    loads = [float(m["load_before"]) for m in results["measurements"]]  # type: ignore[attr-defined,index]
    if loads:
        cpus = int(machine["cpus"] or 1)  # type: ignore[call-overload]
        busy = max(loads) > cpus
        lines.append(
            f"{'**Busy machine**: ' if busy else ''}1-minute load average before the steps: "
            f"{min(loads):.1f} to {max(loads):.1f} on {cpus} CPUs, the benchmark's own previous steps included"
            + ("; other processes ran during the run: wall times are noisy, CPU times less so." if busy else ".") + "\n"
        )
    versions: dict[str, str] = results["tool_versions"]  # type: ignore[assignment]
    lines.append("Versions: " + "; ".join(f"{k}: {v}" for k, v in versions.items()) + "\n")
    errors: list[str] = results["errors"]  # type: ignore[assignment]
    for e in errors:
        lines.append(f"- **failed**: {e.splitlines()[0]}")
    return "\n".join(lines).rstrip() + "\n"


def _report_steps(case: dict[str, object]) -> list[dict[str, str]]:
    steps: list[dict[str, str]] = list(case["steps"])  # type: ignore[call-overload]
    derived = [{**d, "derived": "1"} for d in (case.get("derived") or [])]  # type: ignore[attr-defined]
    if not derived:
        return steps
    # a derived row goes right after the last step it sums
    out: list[dict[str, str]] = []
    for st in steps:
        out.append(st)
        out += [d for d in derived if d["of"][-1] == st["key"]]  # type: ignore[index]
    return out


# ---------------------------------------------------------------- chart


def render_chart(results: dict[str, object], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary: dict[str, dict[str, object]] = results["summary"]  # type: ignore[assignment]
    cases: list[dict[str, object]] = results["cases"]  # type: ignore[assignment]
    all_tools: list[str] = list(results["tool_versions"])  # type: ignore[call-overload]
    colors = {t: f"C{i}" for i, t in enumerate(all_tools)}
    fig, axes = plt.subplots(len(cases), 2, figsize=(17, 4.6 * len(cases)), gridspec_kw={"width_ratios": [3, 2]}, squeeze=False)
    for row, case in enumerate(cases):
        cs = summary[str(case["name"])]
        steps: dict[str, dict[str, dict[str, float | int | None]]] = cs["steps"]  # type: ignore[assignment]
        tools = [str(t) for t in case["tools"]]  # type: ignore[attr-defined]
        shown = [st for st in case["steps"]]  # type: ignore[attr-defined]
        width = 0.8 / max(1, len(tools))
        for col, (field, lo, hi, scale, ylabel) in enumerate((
            ("seconds", "seconds_min", "seconds_max", 1.0, "seconds (median, min-max)"),
            ("rss_kib", "rss_min_kib", "rss_max_kib", 1024.0, "peak RSS, MiB (median, min-max)"),
        )):
            ax = axes[row][col]
            for j, t in enumerate(tools):
                vals, errs_lo, errs_hi = [], [], []
                for st in shown:
                    s = steps[st["key"]][t]
                    v = s.get(field)
                    vals.append(float(v) / scale if v is not None else 0.0)  # type: ignore[arg-type]
                    errs_lo.append((float(v) - float(s[lo])) / scale if v is not None else 0.0)  # type: ignore[arg-type]
                    errs_hi.append((float(s[hi]) - float(v)) / scale if v is not None else 0.0)  # type: ignore[arg-type]
                ax.bar([i + j * width for i in range(len(shown))], vals, width, label=t, color=colors.get(t),
                       yerr=[errs_lo, errs_hi], capsize=2, error_kw={"elinewidth": 0.8})
            ax.set_xticks([i + width * (len(tools) - 1) / 2 for i in range(len(shown))],
                          [str(st.get("short") or st["title"]) for st in shown], fontsize=8)
            ax.set_ylabel(ylabel)
            ax.set_title(f"{case['title']}: {'time per step' if col == 0 else 'peak memory per step'} (lower is better)")
            if col == 0:
                ax.legend(ncol=len(tools), fontsize=8)
    n = int(results["rounds"])  # type: ignore[call-overload]
    fig.suptitle(f"cas vs peers{' (quick)' if results['quick'] else ''}, {n} round{'s' if n != 1 else ''} - {results['started_utc']}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str]) -> int:
    """Re-render results.md and chart.png next to a results.json (after changing this module)."""
    import json

    if len(argv) != 1:
        print("usage: python benchmarks/report.py RESULTS_DIR/results.json", file=sys.stderr)
        return 2
    src = Path(argv[0])
    results = json.loads(src.read_text())
    results["summary"] = summarize(results)
    src.write_text(json.dumps(results, indent=2, default=str))
    (src.parent / "results.md").write_text(render_markdown(results))
    render_chart(results, src.parent / "chart.png")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
