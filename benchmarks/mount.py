#!/usr/bin/env python3
"""Reading an execution without restoring it: ``cas mount`` beside ``restic mount`` and ``rustic mount``.

    python benchmarks/mount.py                       # the benchmark's workload (one execution, full size)
    python benchmarks/mount.py --quick               # ~10x smaller
    python benchmarks/mount.py --restic /path/to/restic --rustic /path/to/rustic

Each tool stores the workload's last execution in its own repository, then serves it through its
own FUSE mount (a fresh mount per tool: the kernel's page cache starts empty for each), and the
same three things are timed through the mount. Repeats alternate the tools (the order rotates each
repeat, so neither always runs first or last), and before each mount the tool's own input (its
repository, index and cache) is read once, so both find it in the page cache:

- ``find ROOT -type f | wc -l`` (listing every directory and stat-ing every entry);
- reading one 4 MiB tensor at its offset in the middle of ``model/model.safetensors``;
- ``cat`` of every file of ``code/`` (many small files).

and, through the ``cas`` fsspec filesystem over a backend that counts its calls, the number of
backend reads (and bytes) for the same 4 MiB tensor read, cold. Tools are taken from PATH unless
given; a tool that is missing or has no ``mount`` command is reported as such. Results go to
``benchmarks/results/mount.json`` and ``mount.md`` (``results/quick/`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO_ROOT))

import workload as wl

PASSWORD = "benchmark"
TENSOR_BYTES = 4 << 20


def log(msg: str) -> None:
    print(f"[mount-bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run(cmd: list[str], env: dict[str, str], cwd: Path | None = None, timeout: float = 3600) -> str:
    out = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])}... exited {out.returncode}: {(out.stderr or out.stdout)[-1500:]}")
    return out.stdout


def is_mounted(path: Path) -> bool:
    with open("/proc/self/mounts", encoding="utf-8", errors="replace") as f:
        return any(line.split()[1] == str(path) for line in f if len(line.split()) > 1)


def unmount(path: Path) -> None:
    for tool in ("fusermount3", "fusermount"):
        if shutil.which(tool) and is_mounted(path):
            subprocess.run([tool, "-u", "-z", str(path)], capture_output=True, check=False)


def middle_tensor(checkpoint: Path) -> tuple[str, int, int]:
    """The safetensors tensor whose data sits nearest the middle of the file: name, offset, length."""
    with open(checkpoint, "rb") as f:
        header_len = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(header_len))
    size = checkpoint.stat().st_size
    base = 8 + header_len
    tensors = [(name, base + t["data_offsets"][0], t["data_offsets"][1] - t["data_offsets"][0])
               for name, t in header.items() if name != "__metadata__"]
    name, offset, length = min(tensors, key=lambda t: abs(t[1] + t[2] // 2 - size // 2))
    return name, offset, min(length, TENSOR_BYTES)


def content_root(top: Path, proc: subprocess.Popen[bytes], log_path: Path, timeout: float = 600) -> Path:
    """The directory holding the execution's ``code/`` and ``model/`` under a mount (restic shows
    ``ids/<id>/`` and may nest the backed-up path); waits for the mount to show it."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
            raise RuntimeError(f"the mount command exited {proc.returncode}: {tail[0][:200]}")
        stack = [top]
        while stack:
            d = stack.pop()
            try:
                names = os.listdir(d)
            except OSError:
                continue
            if "code" in names and "model" in names:
                return d
            if len(stack) < 64 and d.relative_to(top).parts.__len__() < 8:
                stack.extend(d / n for n in sorted(names) if os.path.isdir(d / n) and not os.path.islink(d / n))
        if time.monotonic() > deadline:
            raise RuntimeError(f"no execution tree appeared under {top}")
        time.sleep(0.01)  # fine-grained: ready is measured by this poll


@dataclasses.dataclass
class MountTool:
    name: str
    exe: list[str]
    env: dict[str, str]
    store: Callable[[Path], None]
    mount_cmd: Callable[[Path], list[str]]
    top: Callable[[Path], Path]
    version: str = "?"
    inputs: tuple[Path, ...] = ()
    """What the tool reads to serve its mount (repository, index, cache): warmed before each mount."""


def warm(paths: tuple[Path, ...]) -> int:
    """Read every file under ``paths`` once (into the page cache); the bytes read."""
    total = 0
    for top in paths:
        files = [top] if top.is_file() else [Path(d) / n for d, _s, names in os.walk(top) for n in names]
        for path in files:
            try:
                with open(path, "rb", buffering=0) as f:
                    while block := f.read(1 << 20):
                        total += len(block)
            except OSError:
                continue
    return total


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def measure_mount(tool: MountTool, work: Path, source: Path, tensor: tuple[str, int, int]) -> dict[str, object]:
    mnt = work / "mnt" / tool.name
    mnt.mkdir(parents=True, exist_ok=True)
    unmount(mnt)
    log_path = work / f"{tool.name}-mount.log"
    with open(log_path, "wb") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(tool.mount_cmd(mnt), env=tool.env, stdout=out, stderr=out)
    try:
        root = content_root(tool.top(mnt), proc, log_path)
        ready = time.perf_counter() - t0
        shell_env = {**os.environ, "LC_ALL": "C"}
        find_s, count = timed(lambda: subprocess.run(
            f"find {shlex_quote(root)} -type f | wc -l", shell=True, capture_output=True, text=True,
            env=shell_env, check=True).stdout.strip())
        _, offset, length = tensor
        expected = read_range(source / "model" / "model.safetensors", offset, length)
        tensor_s, got = timed(lambda: read_range(root / "model" / "model.safetensors", offset, length))
        if got != expected:
            raise RuntimeError(f"{tool.name}: the tensor read through the mount differs from the source")
        cat_s, _ = timed(lambda: subprocess.run(
            f"find {shlex_quote(root / 'code')} -type f -print0 | xargs -0 cat > /dev/null", shell=True,
            env=shell_env, check=True))
        return {"ready_s": ready, "find_s": find_s, "files": int(str(count)), "tensor_read_s": tensor_s,
                "cat_code_s": cat_s}
    finally:
        unmount(mnt)
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        unmount(mnt)


def median_of(runs: list[dict[str, object]]) -> dict[str, object]:
    """Each timing's median over the runs (every run's values kept under ``runs``)."""
    out: dict[str, object] = {"runs": runs, "files": runs[0]["files"]}
    for key in ("ready_s", "find_s", "tensor_read_s", "cat_code_s"):
        values = sorted(float(r[key]) for r in runs)  # type: ignore[arg-type]
        out[key] = values[len(values) // 2]
    return out


def shlex_quote(path: Path) -> str:
    import shlex

    return shlex.quote(str(path))


def read_range(path: Path, offset: int, length: int) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        out = bytearray()
        while len(out) < length:
            block = os.pread(fd, length - len(out), offset + len(out))
            if not block:
                break
            out += block
        return bytes(out)
    finally:
        os.close(fd)


def fsspec_reads(repo: Path, index: str, execution: str, tensor: tuple[str, int, int]) -> dict[str, object]:
    """Backend reads for the tensor read through the cas fsspec filesystem, cold (no chunk cache)."""
    from backends.counting import CountingBackend
    from backends.local import LocalBackend
    from cas.filesystem import CasFileSystem

    backend = CountingBackend(LocalBackend(str(repo), create=False))
    fs = CasFileSystem(repo=backend, index=index, chunk_cache=False, skip_instance_cache=True)
    try:
        path = f"{execution}/model/model.safetensors"
        _, offset, length = tensor
        backend.reset()
        with fs.open(path) as f:
            lookup_gets = backend.calls["get"]
            f.seek(offset)
            data = f.read(length)
        read_gets = backend.calls["get"] - lookup_gets
        read_bytes = sum(n for _k, _o, n in backend.gets[lookup_gets:])
        # The file's entry with its chunk list (a listing from the index's tree entries has none).
        entry = fs.view.open(fs.view.lookup(path)).entry
        assert len(data) == length
        locations = fs.store.repo.locate(entry.chunks)
        covering, position = 0, 0
        for chunk_id in entry.chunks:
            size = locations[chunk_id].raw_length
            covering += position < offset + length and position + size > offset
            position += size
        return {
            "backend_gets_for_lookup": lookup_gets,
            "backend_gets_for_read": read_gets,
            "bytes_fetched_for_read": read_bytes,
            "chunks_covering_range": covering,
            "chunks_in_file": len(entry.chunks),
        }
    finally:
        fs.close()


def tools(args: argparse.Namespace, work: Path) -> list[MountTool]:
    repos = work / "repos"
    cas_env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "CAS_HOME": str(work / "cas-home")}
    cas_repo, cas_index = repos / "cas", f"sqlite:///{repos / 'cas-index.sqlite'}"
    cas_cli = [sys.executable, "-m", "cas.cli", "--repo", str(cas_repo), "--index", cas_index]
    out: list[MountTool] = []
    if "cas" in args.tools:
        out.append(MountTool(
            "cas", cas_cli, cas_env,
            lambda src: run([*cas_cli, "snapshot", str(src), "--execution-id", args.execution], cas_env),
            lambda mnt: [*cas_cli, "mount", str(mnt), "--execution", args.execution],
            lambda mnt: mnt / args.execution, "cas (this checkout)",
            (cas_repo, repos / "cas-index.sqlite", work / "cas-home")))
    restic = args.restic or shutil.which("restic")
    restic_env = {**os.environ, "RESTIC_REPOSITORY": str(repos / "restic"), "RESTIC_PASSWORD": PASSWORD,
                  "RESTIC_CACHE_DIR": str(work / "cache" / "restic")}
    if "restic" in args.tools and restic:
        def store_restic(src: Path) -> None:
            run([restic, "init", "-q"], restic_env)
            run([restic, "backup", "-q", "--host", "bench", "."], restic_env, cwd=src)

        out.append(MountTool("restic", [restic], restic_env, store_restic,
                             lambda mnt: [restic, "mount", "--no-default-permissions", str(mnt)],
                             lambda mnt: mnt / "ids", first_line([restic, "version"]),
                             (repos / "restic", work / "cache" / "restic")))
    rustic = args.rustic or shutil.which("rustic")
    if "rustic" in args.tools and rustic and subprocess.run([rustic, "mount", "--help"], capture_output=True,
                                                            check=False).returncode != 0:
        log(f"{rustic} has no mount command (rustic builds it only with its 'mount' feature and libfuse)")
        rustic = None
        args.rustic_error = "no mount command in this build (rustic's 'mount' feature, needs libfuse)"
    if "rustic" in args.tools and rustic:
        # rustic reads restic's repository format: it mounts the repository restic wrote.
        rustic_env = {**os.environ, "RUSTIC_REPOSITORY": str(repos / "restic"), "RUSTIC_PASSWORD": PASSWORD,
                      "RUSTIC_CACHE_DIR": str(work / "cache" / "rustic")}

        def store_rustic(src: Path) -> None:
            if not (repos / "restic" / "config").exists():
                raise RuntimeError("rustic mounts restic's repository: run restic too")

        out.append(MountTool("rustic", [rustic], rustic_env, store_rustic,
                             lambda mnt: [rustic, "mount", str(mnt), "latest"],
                             lambda mnt: mnt, first_line([rustic, "--version"]),
                             (repos / "restic", work / "cache" / "rustic")))
    return out


def first_line(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
        return (out.stdout or out.stderr).strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return "?"


def render(results: dict[str, object]) -> str:
    rows = results["mount"]  # type: ignore[index]
    restic = rows.get("restic", {})  # type: ignore[union-attr]
    size = results["tensor"][2] / (1 << 20)  # type: ignore[index]
    lines = [f"| tool | mount ready | find -type f (files) | {size:g} MiB tensor read | cat code/ |", "|---|---|---|---|---|"]
    def cell(name: str, r: dict[str, float], key: str) -> str:
        ratio = f" ({r[key] / restic[key]:.2f}x restic)" if restic.get(key) and name != "restic" else ""
        return f"{r[key]:.3f} s{ratio}"

    for name, r in rows.items():  # type: ignore[union-attr]
        if "error" in r:
            lines.append(f"| {name} | {r['error']} | | | |")
            continue
        lines.append(f"| {name} | {cell(name, r, 'ready_s')} | {cell(name, r, 'find_s')} ({r['files']}) | "
                     f"{cell(name, r, 'tensor_read_s')} | {cell(name, r, 'cat_code_s')} |")
    fs = results.get("fsspec")
    if isinstance(fs, dict):
        lines += ["", (f"fsspec, cold: the {size:g} MiB tensor read made {fs['backend_gets_for_read']} backend reads "
                       f"({fs['bytes_fetched_for_read']} bytes) for {fs['chunks_covering_range']} chunks covering the "
                       f"range (of {fs['chunks_in_file']} in the file); opening the file took "
                       f"{fs['backend_gets_for_lookup']} reads (tree nodes).")]
    load = ", ".join(f"{x:.1f}" for x in results["loadavg"])  # type: ignore[attr-defined]
    lines += ["", (f"Medians of {results['repeat']} fresh mounts per tool, the tools alternating (order rotated each "
                   f"repeat, each tool's input read into the page cache before its mount). Load average before the run: {load} "
                   f"on {os.cpu_count()} cores; on a shared machine times are noisy: compare ratios within one run.")]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="~10x smaller workload")
    p.add_argument("--work", type=Path, default=HERE / "work" / "mount")
    p.add_argument("--tools", default="cas,restic,rustic")
    p.add_argument("--restic", default=None, help="restic binary (default: restic on PATH)")
    p.add_argument("--rustic", default=None, help="rustic binary (default: rustic on PATH)")
    p.add_argument("--reuse-workload", action="store_true", help="reuse the workload of the last run with these options")
    p.add_argument("--execution", default="exec-01", help=argparse.SUPPRESS)
    p.add_argument("--repeat", type=int, default=3, help="fresh mounts per tool; medians are reported (default 3)")
    p.add_argument("--results", type=Path, default=None)
    args = p.parse_args(argv)
    args.tools = args.tools.split(",")
    work = args.work / ("quick" if args.quick else "full")
    config = dataclasses.replace(wl.WorkloadConfig.quick() if args.quick else wl.WorkloadConfig(), executions=1)
    workload = wl.load_or_build(work, config, reuse=args.reuse_workload)
    source = Path(workload.executions[-1].path)
    args.execution = workload.executions[-1].name
    tensor = middle_tensor(source / "model" / "model.safetensors")
    log(f"execution {args.execution}: {workload.executions[-1].files} files, tensor {tensor[0]} at {tensor[1]}")
    results: dict[str, object] = {"loadavg": os.getloadavg(), "tensor": tensor, "execution": args.execution,
                                  "repeat": args.repeat,
                                  "mount": {}, "versions": {}}
    chosen = tools(args, work)
    for name in args.tools:
        if name not in {t.name for t in chosen}:
            missing = getattr(args, f"{name}_error", None) or f"not found (give its path with --{name})"
            results["mount"][name] = {"error": missing}  # type: ignore[index]
    if (work / "repos").exists():
        shutil.rmtree(work / "repos")
    (work / "repos").mkdir(parents=True, exist_ok=True)
    stored = []
    for tool in chosen:
        results["versions"][tool.name] = tool.version  # type: ignore[index]
        try:
            log(f"{tool.name}: storing {source}")
            tool.store(source)
            stored.append(tool)
        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
            results["mount"][tool.name] = {"error": str(exc).splitlines()[0][:300]}  # type: ignore[index]
            log(f"{tool.name}: {exc}")
    runs: dict[str, list[dict[str, object]]] = {tool.name: [] for tool in stored}
    for attempt in range(args.repeat):
        # Rotate the order each repeat: no tool always runs first (or right after another's mount).
        turn = attempt % max(1, len(stored))
        for tool in stored[turn:] + stored[:turn]:
            if tool.name not in runs:
                continue  # failed on an earlier repeat
            try:
                warmed = warm(tool.inputs)
                log(f"{tool.name}: mount {attempt + 1} of {args.repeat} ({warmed >> 20} MiB of input warmed)")
                runs[tool.name].append(measure_mount(tool, work, source, tensor))
            except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
                results["mount"][tool.name] = {"error": str(exc).splitlines()[0][:300]}  # type: ignore[index]
                log(f"{tool.name}: {exc}")
                del runs[tool.name]
    for name, tool_runs in runs.items():
        results["mount"][name] = median_of(tool_runs)  # type: ignore[index]
        log(f"{name}: {results['mount'][name]}")  # type: ignore[index]
    if "cas" in args.tools and "error" not in results["mount"].get("cas", {"error": 1}):  # type: ignore[union-attr]
        results["fsspec"] = fsspec_reads(work / "repos" / "cas", f"sqlite:///{work / 'repos' / 'cas-index.sqlite'}",
                                         args.execution, tensor)
    out_dir = args.results or (HERE / "results" / ("quick" if args.quick else ""))
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "mount.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    text = render(results)
    (out_dir / "mount.md").write_text(text + "\n")
    print(text)
    return 0 if all("error" not in r for r in results["mount"].values()) else 1  # type: ignore[union-attr]


if __name__ == "__main__":
    raise SystemExit(main())
