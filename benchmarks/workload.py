"""Build the benchmark workload: a series of ML-project executions made of real files.

Each execution is its own directory under ``benchmarks/work/execs/`` (as on a worker):

* ``code/``   the project's source: a real Python tree (this interpreter's stdlib, tests and
              caches left out), a few files edited in every execution;
* ``deps/``   its dependencies: real installed packages copied from this machine's site-packages;
              in a later execution one package is "upgraded" (its directory is replaced by the
              content of another real installed package);
* ``model/``  a checkpoint: one safetensors-layout file of float32 tensors; about a tenth of the
              tensors get new values in every execution (same shapes, so offsets stay put);
* ``run/``    small per-execution files (config, metrics).

Everything is seeded: the same machine and the same options give the same bytes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import shutil
import site
import struct
import sysconfig
import time
from pathlib import Path

CODE_EXCLUDE = {"site-packages", "test", "tests", "__pycache__", "lib-dynload", "idlelib", "tkinter", "turtledemo"}
DEPS_EXCLUDE_PREFIX = ("__pycache__", "cas_store", "cas-store", "_distutils_hack", "distutils-precedence")


@dataclasses.dataclass(frozen=True)
class WorkloadConfig:
    executions: int = 4
    code_bytes: int = 20 * 2**20
    deps_bytes: int = 300 * 2**20
    model_bytes: int = 320 * 2**20
    tensors: int = 64
    changed_fraction: float = 0.1
    edited_files: int = 5
    seed: int = 20261124

    @staticmethod
    def quick() -> WorkloadConfig:
        return WorkloadConfig(code_bytes=2 * 2**20, deps_bytes=30 * 2**20, model_bytes=32 * 2**20)

    def scaled(self, factor: float) -> WorkloadConfig:
        return dataclasses.replace(
            self,
            code_bytes=int(self.code_bytes * factor),
            deps_bytes=int(self.deps_bytes * factor),
            model_bytes=int(self.model_bytes * factor),
        )


@dataclasses.dataclass
class ExecutionInfo:
    name: str
    path: str
    files: int
    logical_bytes: int
    changes: list[str]


@dataclasses.dataclass
class Workload:
    config: WorkloadConfig
    executions: list[ExecutionInfo]
    code_source: str
    deps_source: str
    deps_packages: list[str]
    upgrade: dict[str, str]
    tensor_generator: str
    build_seconds: float

    def to_json(self) -> dict[str, object]:
        return dataclasses.asdict(self)

    @staticmethod
    def from_json(data: dict[str, object]) -> Workload:
        d = dict(data)
        d["config"] = WorkloadConfig(**d["config"])  # type: ignore[arg-type]
        d["executions"] = [ExecutionInfo(**e) for e in d["executions"]]  # type: ignore[attr-defined,union-attr]
        return Workload(**d)  # type: ignore[arg-type]


def _log(msg: str) -> None:
    print(f"[workload] {msg}", flush=True)


def tree_size(path: Path) -> tuple[int, int]:
    """(files, bytes) of regular files under path (symlinks not followed)."""
    files = 0
    total = 0
    if path.is_file() and not path.is_symlink():
        return 1, path.stat().st_size
    for root, dirs, names in os.walk(path):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")  # never copied into the workload
        for n in names:
            p = os.path.join(root, n)
            st = os.lstat(p)
            if os.path.isfile(p) and not os.path.islink(p):
                files += 1
                total += st.st_size
    return files, total


# ---------------------------------------------------------------- sources


def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def site_packages_dir() -> Path:
    for p in site.getsitepackages():
        if Path(p).is_dir():
            return Path(p)
    raise SystemExit("no site-packages directory found")


def code_files(limit: int) -> list[Path]:
    """Stdlib files (sorted, deterministic), up to ``limit`` bytes."""
    root = stdlib_dir()
    out: list[Path] = []
    total = 0
    for dirpath, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in CODE_EXCLUDE and not d.startswith("config-"))
        for n in sorted(names):
            p = Path(dirpath) / n
            if p.is_symlink() or not p.is_file() or n.endswith((".pyc", ".pyo")):
                continue
            size = p.stat().st_size
            if total + size > limit:
                return out
            out.append(p)
            total += size
    return out


def distributions() -> list[tuple[str, list[str], int]]:
    """(name, top-level entries, bytes) of each distribution installed in site-packages."""
    import importlib.metadata

    root = site_packages_dir()
    seen: set[str] = set()
    out: list[tuple[str, list[str], int]] = []
    for dist in importlib.metadata.distributions(path=[str(root)]):
        name = (dist.metadata["Name"] or "").lower().replace("_", "-")
        if not name or name in seen or name.startswith(DEPS_EXCLUDE_PREFIX):
            continue
        seen.add(name)
        tops: set[str] = set()
        for f in dist.files or []:
            parts = Path(str(f)).parts
            if parts and parts[0] not in ("..", "__pycache__") and not parts[0].endswith(".pth"):
                tops.add(parts[0])
        entries = sorted(t for t in tops if (root / t).exists() and not (root / t).is_symlink())
        if entries:
            out.append((name, entries, sum(tree_size(root / t)[1] for t in entries)))
    out.sort()
    return out


def choose_deps(limit: int) -> tuple[list[str], dict[str, str]]:
    """Pick installed distributions (in name order, whole, with their dist-info) up to ``limit``
    bytes, and an upgrade.

    The upgrade replaces the largest package directory of a picked distribution that is at most a
    tenth of the deps by the content of the largest package directory of the unpicked distribution
    of the closest size.
    """
    root = site_packages_dir()
    picked: list[str] = []
    dirs_in: list[tuple[int, str]] = []
    dirs_out: list[tuple[int, str]] = []
    total = 0
    for _name, entries, size in distributions():
        pkg_dirs = [(tree_size(root / e)[1], e) for e in entries if (root / e).is_dir() and not e.endswith("-info")]
        if total + size <= limit:
            picked += entries
            total += size
            dirs_in += pkg_dirs
        elif pkg_dirs:
            dirs_out.append(max(pkg_dirs))
    candidates = [sd for sd in dirs_in if sd[0] <= limit // 10]
    upgrade: dict[str, str] = {}
    if candidates:
        size, target = max(candidates)
        repl = min(dirs_out, key=lambda sd: (abs(sd[0] - size), sd[1]))[1] if dirs_out else "email (stdlib)"
        upgrade = {"package": target, "replaced_by_content_of": repl}
    return sorted(picked), upgrade


# ---------------------------------------------------------------- tensors


class TensorWriter:
    """Writes float32 tensors: numpy's seeded normal RNG if numpy is there, else random bytes
    shaped like small float32 weights (random mantissas, exponents of values near 0.02)."""

    def __init__(self) -> None:
        try:
            import numpy

            self.np: object | None = numpy
            self.name = f"numpy {numpy.__version__} default_rng().standard_normal * 0.02"
        except ImportError:
            self.np = None
            self.name = "random.randbytes with float32 exponent bytes mapped to |x| in [2^-9, 2^-4)"
            table = bytearray(256)
            for b in range(256):
                # top byte of a little-endian float32: sign bit + 7 high exponent bits.
                # 0x3B/0x3C/0x3D (and negatives) give magnitudes of about 0.002..0.06
                table[b] = (0x80 if b & 1 else 0) | (0x3B + (b >> 1) % 3)
            self.table = bytes(table)

    def write(self, f: object, count: int, seed: int) -> None:
        if self.np is not None:
            np = self.np
            rng = np.random.default_rng(seed)  # type: ignore[attr-defined]
            step = 1 << 22
            left = count
            while left:
                n = min(step, left)
                arr = rng.standard_normal(n, dtype=np.float32)  # type: ignore[attr-defined]
                arr *= np.float32(0.02)  # type: ignore[attr-defined]
                f.write(arr.astype("<f4").tobytes())  # type: ignore[attr-defined]
                left -= n
        else:
            rnd = random.Random(seed)
            step = 1 << 22
            left = count
            while left:
                n = min(step, left)
                buf = bytearray(rnd.randbytes(n * 4))
                buf[3::4] = bytes(buf[3::4]).translate(self.table)
                f.write(buf)  # type: ignore[attr-defined]
                left -= n


def write_checkpoint(path: Path, config: WorkloadConfig, versions: list[int], writer: TensorWriter) -> None:
    per_tensor = max(1024, config.model_bytes // config.tensors // 4)  # floats per tensor
    cols = 1024
    rows = max(1, per_tensor // cols)
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for i in range(config.tensors):
        nbytes = rows * cols * 4
        header[f"layers.{i:03d}.weight"] = {
            "dtype": "F32",
            "shape": [rows, cols],
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    hjson = json.dumps(header, separators=(",", ":")).encode()
    hjson += b" " * (-len(hjson) % 8)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hjson)))
        f.write(hjson)
        for i in range(config.tensors):
            seed = int.from_bytes(hashlib.sha256(f"{config.seed}/{i}/{versions[i]}".encode()).digest()[:8], "little")
            writer.write(f, rows * cols, seed)


# ---------------------------------------------------------------- executions


def edit_code(code_dir: Path, rnd: random.Random, count: int, exec_no: int) -> list[str]:
    py = sorted(p for p in code_dir.rglob("*.py") if p.is_file())
    chosen = rnd.sample(py, min(count, len(py)))
    edited: list[str] = []
    for p in chosen:
        lines = p.read_text(encoding="utf-8", errors="surrogateescape").splitlines(keepends=True)
        at = rnd.randrange(len(lines) + 1) if lines else 0
        lines.insert(at, f"# execution {exec_no}: tuned by experiment {rnd.getrandbits(32):08x}\n")
        p.write_text("".join(lines), encoding="utf-8", errors="surrogateescape")
        edited.append(str(p.relative_to(code_dir.parent)))
    return edited


def write_run_files(run_dir: Path, exec_no: int, rnd: random.Random) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(
        json.dumps({"execution": exec_no, "lr": 10 ** rnd.uniform(-5, -3), "batch_size": 32, "seed": exec_no}, indent=2)
    )
    metrics = [{"step": s, "loss": round(2.5 / (1 + s / 100) + rnd.random() * 0.01, 6)} for s in range(0, 5000, 10)]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))


def build(work: Path, config: WorkloadConfig) -> Workload:
    t0 = time.perf_counter()
    execs_dir = work / "execs"
    if execs_dir.exists():
        shutil.rmtree(execs_dir)
    execs_dir.mkdir(parents=True)
    rnd = random.Random(config.seed)
    writer = TensorWriter()
    sp = site_packages_dir()
    deps, upgrade = choose_deps(config.deps_bytes)
    upgrade_at = max(1, config.executions // 2)  # 0-based index of the execution that upgrades
    versions = [0] * config.tensors
    infos: list[ExecutionInfo] = []
    prev: Path | None = None
    for i in range(config.executions):
        name = f"exec-{i + 1:02d}"
        d = execs_dir / name
        changes: list[str] = []
        if prev is None:
            (d / "code").mkdir(parents=True)
            src = stdlib_dir()
            for p in code_files(config.code_bytes):
                dst = d / "code" / p.relative_to(src)
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(p, dst)
            (d / "deps").mkdir()
            for n in deps:
                s = sp / n
                if s.is_dir():
                    shutil.copytree(s, d / "deps" / n, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
                else:
                    shutil.copy2(s, d / "deps" / n)
            changes.append(f"code from {src}, {len(deps)} packages from {sp}")
        else:
            top = str(prev)
            shutil.copytree(prev, d, symlinks=True, ignore=lambda dd, names, top=top: ["model"] if dd == top else [])
            changes += edit_code(d / "code", rnd, config.edited_files, i + 1)
            if i == upgrade_at and upgrade:
                target = d / "deps" / upgrade["package"]
                shutil.rmtree(target)
                repl = upgrade["replaced_by_content_of"]
                src_dir = stdlib_dir() / "email" if repl.endswith("(stdlib)") else sp / repl
                shutil.copytree(src_dir, target, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
                changes.append(f"upgraded deps/{upgrade['package']} (content of {repl})")
            k = max(1, round(config.tensors * config.changed_fraction))
            changed = sorted(rnd.sample(range(config.tensors), k))
            for t in changed:
                versions[t] += 1
            changes.append(f"model tensors changed: {changed}")
        write_checkpoint(d / "model" / "model.safetensors", config, versions, writer)
        write_run_files(d / "run", i + 1, rnd)
        files, size = tree_size(d)
        infos.append(ExecutionInfo(name=name, path=str(d), files=files, logical_bytes=size, changes=changes))
        _log(f"{name}: {files} files, {size / 2**20:.1f} MiB")
        prev = d
    return Workload(
        config=config,
        executions=infos,
        code_source=str(stdlib_dir()),
        deps_source=str(sp),
        deps_packages=deps,
        upgrade=upgrade,
        tensor_generator=writer.name,
        build_seconds=time.perf_counter() - t0,
    )


def load_or_build(work: Path, config: WorkloadConfig, reuse: bool) -> Workload:
    meta = work / "workload.json"
    if reuse and meta.exists():
        wl = Workload.from_json(json.loads(meta.read_text()))
        if wl.config == config and all(Path(e.path).is_dir() for e in wl.executions):
            _log(f"reusing workload in {work / 'execs'}")
            return wl
    if meta.exists():
        meta.unlink()
    wl = build(work, config)
    meta.write_text(json.dumps(wl.to_json(), indent=2))
    return wl


# ---------------------------------------------------------------- many small files


@dataclasses.dataclass(frozen=True)
class SmallFilesConfig:
    """``files`` files of ``min_bytes``..``max_bytes`` (uniform), ``per_dir`` to a directory."""

    files: int = 100_000
    min_bytes: int = 100
    max_bytes: int = 4000
    per_dir: int = 1000
    seed: int = 20261126


WORDS = [
    "model", "layer", "weight", "bias", "loss", "step", "epoch", "batch", "learning", "rate", "optimizer",
    "adam", "gradient", "tensor", "shape", "config", "dataset", "train", "eval", "split", "token", "vocab",
    "embedding", "attention", "head", "hidden", "dropout", "norm", "scale", "checkpoint", "metric",
    "accuracy", "precision", "recall", "score", "seed", "device", "cuda", "float", "int", "list", "dict",
    "none", "true", "false",
]


def _small_pool(rnd: random.Random, size: int) -> bytes:
    """Half random bytes (like compressed or binary files), half words and numbers (like code,
    configs and logs), so the compressing tools have something to compress and something not."""
    text = bytearray()
    while len(text) < size // 2:
        text += f"{rnd.choice(WORDS)}_{rnd.randrange(1000)} = {rnd.random():.6f}\n".encode()
    return rnd.randbytes(size // 2) + bytes(text[: size // 2])


def build_small_files(work: Path, config: SmallFilesConfig) -> dict[str, object]:
    """Write the files under ``work / 'small'`` (replacing what is there); each file is a slice of
    a seeded pool at a random offset, so no two files are alike and none is much compressible
    or much not, on average."""
    t0 = time.perf_counter()
    root = work / "small"
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    rnd = random.Random(config.seed)
    pool = _small_pool(rnd, 16 * 2**20)
    total = 0
    for i in range(config.files):
        d = root / f"d{i // config.per_dir:04d}"
        if i % config.per_dir == 0:
            d.mkdir()
        size = rnd.randint(config.min_bytes, config.max_bytes)
        at = rnd.randrange(len(pool) - size)
        with open(d / f"f{i:06d}.dat", "wb") as f:
            f.write(pool[at : at + size])
        total += size
    _log(f"small: {config.files} files, {total / 2**20:.1f} MiB")
    return {"config": dataclasses.asdict(config), "path": str(root), "files": config.files,
            "logical_bytes": total, "build_seconds": time.perf_counter() - t0}


# ---------------------------------------------------------------- one big file


@dataclasses.dataclass(frozen=True)
class BigFileConfig:
    """One file of ``size`` bytes made of ``segment``-byte segments of float32 weights, drawn
    from ``distinct`` different segments (all of them first, then in seeded random order): the
    bytes are read, cut and hashed in full, but a repository holds about ``distinct`` segments,
    so ten of these fit on the disk next to the source."""

    size: int = 10 * 2**30
    segment: int = 32 * 2**20
    distinct: int = 16
    seed: int = 20261127


def build_big_file(work: Path, config: BigFileConfig) -> dict[str, object]:
    t0 = time.perf_counter()
    root = work / "big"
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    writer = TensorWriter()
    count = max(1, -(-config.size // config.segment))
    distinct = min(config.distinct, count)
    segments: list[bytes] = []
    for k in range(distinct):
        buf = _BytesSink()
        writer.write(buf, config.segment // 4, config.seed + k)
        segments.append(buf.value())
    rnd = random.Random(config.seed)
    order = list(range(distinct)) + [rnd.randrange(distinct) for _ in range(count - distinct)]
    left = config.size
    with open(root / "checkpoint.bin", "wb") as f:
        for k in order:
            piece = segments[k][: min(left, config.segment)]
            f.write(piece)
            left -= len(piece)
    _log(f"big: one file of {config.size / 2**20:.0f} MiB ({distinct} distinct {config.segment // 2**20} MiB segments)")
    return {"config": dataclasses.asdict(config), "path": str(root), "files": 1, "logical_bytes": config.size,
            "tensor_generator": writer.name, "build_seconds": time.perf_counter() - t0}


class _BytesSink:
    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, b: bytes) -> None:
        self.parts.append(bytes(b))

    def value(self) -> bytes:
        return b"".join(self.parts)


def load_or_build_extra(work: Path, name: str, config: SmallFilesConfig | BigFileConfig, reuse: bool) -> dict[str, object]:
    """The small-files or big-file input, rebuilt unless ``reuse`` and built with the same config."""
    meta = work / f"{name}.json"
    if reuse and meta.exists():
        data = json.loads(meta.read_text())
        if data.get("config") == dataclasses.asdict(config) and Path(str(data["path"])).is_dir():
            _log(f"reusing {name} in {data['path']}")
            return data
    if meta.exists():
        meta.unlink()
    data = build_small_files(work, config) if isinstance(config, SmallFilesConfig) else build_big_file(work, config)
    meta.write_text(json.dumps(data, indent=2))
    return data
