"""What a second version of an archive costs to store: cas (both chunkers) and restic, issue 13.

    python benchmarks/archive_dedup.py [--quick] [--restic PATH] [--wheels OLD.whl NEW.whl] [--json OUT]

For each case it builds v1 and v2 of one file, stores v1 then v2 (each as the only file of a
directory, as a worker would hold it) in a fresh repository per tool, and prints the bytes stored
for v2 beside the bytes that changed:

* ``aiflow-zip``: a project tree (the installed SQLAlchemy package without ``__pycache__``) zipped
  the way AIFlow's client zips a project (deflate, directories as entries, ``os.walk`` order); v2
  has one line appended to ``orm/session.py``;
* ``wheel``: two consecutive patch releases of Pygments from PyPI (:data:`WHEEL`, fetched with
  ``pip download`` into ``benchmarks/work/wheels``, or given with ``--wheels``); skipped when
  neither is possible;
* ``torch-zip``: a checkpoint in PyTorch's ``torch.save`` layout (a zip of stored members whose
  data is aligned to 64 bytes, one per tensor, plus ``data.pkl`` and the small records) with 48
  tensors of 4 MiB (1 MiB with ``--quick``); v2 has 10% of them (5) rewritten;
* ``safetensors``: the same tensors in the safetensors layout, the same 5 rewritten;
* ``tar``: an uncompressed tar (pax, as ``tarfile`` writes) of the same project tree, one file edited.

"Changed" is measured from the archive's own structure, read with ``zipfile``/``tarfile``/``json``
(not with cas's parser): the bytes of v2's members (header and data) that are not, byte for byte,
a member of v1, plus v2's directory (zip central directory with its end records; tar end blocks;
safetensors header) when it differs. "cas" is the default chunker (``fastcdc-archives-1``),
"cas fastcdc" the chunker of repositories created before it. Stored bytes are the new chunk bytes
before compression (``new_bytes``) for cas and ``data_added`` for restic (also uncompressed), so
compression does not blur the comparison; the file's tree node, which lists its chunk IDs, is
shown apart. restic is taken from ``--restic`` or ``PATH``; without it its column says n/a.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

import itertools

from cas import Store
from cas.format.config import ChunkerName

WORK = REPO_ROOT / "benchmarks" / "work"
WHEEL = ("pygments", "2.17.1", "2.17.2")
"""Built by hatchling, whose fixed timestamps leave unchanged members byte-identical (pip's wheels
carry build times, so every member of the next release differs)."""
TENSORS = 48
CHANGED_TENSORS = 5


@dataclass
class Case:
    name: str
    v1: Path
    v2: Path
    changed: int


# -- building the cases -------------------------------------------------------------------------


def project_tree(dest: Path) -> Path:
    import sqlalchemy

    src = Path(sqlalchemy.__file__).parent
    proj = dest / "sqlalchemy"
    shutil.copytree(src, proj, ignore=shutil.ignore_patterns("__pycache__"))
    return proj


def aiflow_zip(proj: Path, out: Path) -> None:
    """A zip as AIFlow's ``make_dir_zipfile`` makes one: deflate, each directory as an entry."""
    rel = proj.parent
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for root, _dirs, files in os.walk(proj):
            zf.write(root, os.path.relpath(root, rel))
            for name in files:
                zf.write(os.path.join(root, name), os.path.join(os.path.relpath(root, rel), name))


def tensors(rng: random.Random, size: int) -> dict[str, bytes]:
    return {f"layer{i:02d}.weight": rng.randbytes(size) for i in range(TENSORS)}


def with_changes(base: dict[str, bytes], rng: random.Random) -> dict[str, bytes]:
    out = dict(base)
    for name in rng.sample(sorted(base), CHANGED_TENSORS):
        out[name] = rng.randbytes(len(base[name]))
    return out


def torch_zip(path: Path, weights: dict[str, bytes]) -> None:
    """``torch.save``'s layout: ``archive/data.pkl``, then one stored member per tensor storage,
    each member's data aligned to 64 bytes by padding its local header's extra field."""
    pickle_stub = json.dumps(sorted(weights)).encode()
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        members = [("archive/data.pkl", pickle_stub), ("archive/byteorder", b"little")]
        members += [(f"archive/data/{i}", data) for i, data in enumerate(weights.values())]
        members += [("archive/version", b"3\n"), ("archive/.data/serialization_id", b"0123456789")]
        for name, data in members:
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            data_at = zf.fp.tell() + 30 + len(name.encode()) + 4  # type: ignore[union-attr]
            pad = -data_at % 64
            info.extra = struct.pack("<HH", 0x4246, pad) + b"Z" * pad
            zf.writestr(info, data)


def safetensors_file(path: Path, weights: dict[str, bytes]) -> None:
    """The safetensors layout: u64 header length, JSON header with ``data_offsets``, tensor bytes."""
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    at = 0
    for name, data in weights.items():
        header[name] = {"dtype": "F32", "shape": [len(data) // 4], "data_offsets": [at, at + len(data)]}
        at += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        for data in weights.values():
            f.write(data)


def project_tar(proj: Path, out: Path) -> None:
    with tarfile.open(out, "w") as tf:
        tf.add(proj, arcname=proj.name)


def fetch_wheels(dest: Path) -> tuple[Path, Path] | None:
    dest.mkdir(parents=True, exist_ok=True)
    paths = []
    package = WHEEL[0]
    for version in WHEEL[1:]:
        found = sorted(dest.glob(f"{package}-{version}-*.whl"))
        if not found:
            cmd = [sys.executable, "-m", "pip", "download", f"{package}=={version}", "--no-deps", "--only-binary",
                   ":all:", "-q", "-d", str(dest)]
            if subprocess.run(cmd, capture_output=True, check=False).returncode != 0:
                return None
            found = sorted(dest.glob(f"{package}-{version}-*.whl"))
        if not found:
            return None
        paths.append(found[0])
    return paths[0], paths[1]


# -- what changed, from the archives' own structure ------------------------------------------------


def zip_parts(path: Path) -> tuple[list[bytes], bytes]:
    data = path.read_bytes()
    with zipfile.ZipFile(path) as zf:
        starts = sorted(i.header_offset for i in zf.infolist())
        directory_at = zf.start_dir  # type: ignore[attr-defined]
    bounds = starts + [directory_at]
    return [data[a:b] for a, b in itertools.pairwise(bounds)], data[directory_at:]


def tar_parts(path: Path) -> tuple[list[bytes], bytes]:
    data = path.read_bytes()
    with tarfile.open(path) as tf:
        members = tf.getmembers()
    starts = [m.offset for m in members]
    end = members[-1].offset_data + -(-members[-1].size // 512) * 512 if members[-1].isreg() else (
        members[-1].offset_data)
    bounds = starts + [end]
    return [data[a:b] for a, b in itertools.pairwise(bounds)], data[end:]


def safetensors_parts(path: Path) -> tuple[list[bytes], bytes]:
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    spans = sorted(v["data_offsets"] for k, v in header.items() if k != "__metadata__")
    return [data[8 + n + a : 8 + n + b] for a, b in spans], data[: 8 + n]


def changed_bytes(parts1: tuple[list[bytes], bytes], parts2: tuple[list[bytes], bytes]) -> int:
    old = {hashlib.sha256(p).digest() for p in parts1[0]}
    new_members = sum(len(p) for p in parts2[0] if hashlib.sha256(p).digest() not in old)
    return new_members + (len(parts2[1]) if parts2[1] != parts1[1] else 0)


def build(work: Path, quick: bool, wheels: tuple[Path, Path] | None) -> list[Case]:
    cases: list[Case] = []
    src = work / "src"
    proj = project_tree(src)
    aiflow_zip(proj, work / "project-v1.zip")
    project_tar(proj, work / "project-v1.tar")
    with open(proj / "orm" / "session.py", "a") as f:
        f.write("# edited for v2\n")
    aiflow_zip(proj, work / "project-v2.zip")
    project_tar(proj, work / "project-v2.tar")
    cases.append(Case("aiflow-zip", work / "project-v1.zip", work / "project-v2.zip",
                      changed_bytes(zip_parts(work / "project-v1.zip"), zip_parts(work / "project-v2.zip"))))
    if wheels is None:
        wheels = fetch_wheels(WORK / "wheels")
    if wheels is not None:
        cases.append(Case("wheel", wheels[0], wheels[1], changed_bytes(zip_parts(wheels[0]), zip_parts(wheels[1]))))
    else:
        print("wheel: no wheels given and pip download failed; case skipped", file=sys.stderr)
    rng = random.Random(13)
    v1 = tensors(rng, (1 if quick else 4) * 1024 * 1024)
    v2 = with_changes(v1, rng)
    torch_zip(work / "ckpt-v1.pt", v1)
    torch_zip(work / "ckpt-v2.pt", v2)
    cases.append(Case("torch-zip", work / "ckpt-v1.pt", work / "ckpt-v2.pt",
                      changed_bytes(zip_parts(work / "ckpt-v1.pt"), zip_parts(work / "ckpt-v2.pt"))))
    safetensors_file(work / "ckpt-v1.safetensors", v1)
    safetensors_file(work / "ckpt-v2.safetensors", v2)
    cases.append(Case("safetensors", work / "ckpt-v1.safetensors", work / "ckpt-v2.safetensors",
                      changed_bytes(safetensors_parts(work / "ckpt-v1.safetensors"),
                                    safetensors_parts(work / "ckpt-v2.safetensors"))))
    cases.append(Case("tar", work / "project-v1.tar", work / "project-v2.tar",
                      changed_bytes(tar_parts(work / "project-v1.tar"), tar_parts(work / "project-v2.tar"))))
    return cases


# -- storing v1 then v2 ------------------------------------------------------------------------------


def holder(work: Path, case: Case, version: Path) -> Path:
    """A directory holding only this version of the file, under the same name for v1 and v2."""
    d = work / "hold" / case.name
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    shutil.copyfile(version, d / ("file" + "".join(case.v1.suffixes[-1:])))
    return d


def cas_v2(work: Path, case: Case, chunker: ChunkerName) -> dict[str, int]:
    root = work / "repos" / f"cas-{chunker.value}-{case.name}"
    shutil.rmtree(root, ignore_errors=True)
    with Store.open(str(root / "repo"), index=f"sqlite:///{root / 'index.sqlite'}", chunker=chunker.value) as store:
        store.snapshot(holder(work, case, case.v1), "v1", use_files_cache=False)
        snap = store.snapshot(holder(work, case, case.v2), "v2", use_files_cache=False)
    shutil.rmtree(root, ignore_errors=True)
    return {k: int(snap.stats[k]) for k in ("new_bytes", "stored_bytes", "new_blobs", "new_tree_bytes")}


def restic_v2(work: Path, case: Case, restic: str) -> int | None:
    repo = work / "repos" / f"restic-{case.name}"
    shutil.rmtree(repo, ignore_errors=True)
    env = dict(os.environ, RESTIC_PASSWORD="bench", RESTIC_REPOSITORY=str(repo), RESTIC_CACHE_DIR=str(work / "restic-cache"))
    subprocess.run([restic, "init", "-q"], env=env, check=True, capture_output=True)
    added = None
    for version in (case.v1, case.v2):
        d = holder(work, case, version)
        out = subprocess.run([restic, "backup", "--json", "."], cwd=d, env=env, check=True, capture_output=True, text=True)
        for line in out.stdout.splitlines():
            msg = json.loads(line)
            if msg.get("message_type") == "summary":
                added = int(msg["data_added"])
    shutil.rmtree(repo, ignore_errors=True)
    return added


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="1 MiB tensors instead of 4 MiB")
    p.add_argument("--restic", default=shutil.which("restic"), help="restic binary (default: from PATH)")
    p.add_argument("--wheels", nargs=2, type=Path, metavar=("OLD", "NEW"), help="two wheels instead of Pygments'")
    p.add_argument("--json", type=Path, help="also write the rows as JSON here")
    p.add_argument("--markdown", type=Path, help="also write the table here")
    args = p.parse_args(argv)
    WORK.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory(dir=WORK) as tmp:
        work = Path(tmp)
        os.environ["CAS_HOME"] = str(work / "cas-home")
        for case in build(work, args.quick, tuple(args.wheels) if args.wheels else None):  # type: ignore[arg-type]
            new = cas_v2(work, case, ChunkerName.ARCHIVES)
            old = cas_v2(work, case, ChunkerName.FASTCDC)
            restic = restic_v2(work, case, args.restic) if args.restic else None
            rows.append({
                "case": case.name, "v2_size": case.v2.stat().st_size, "changed": case.changed,
                "cas": new["new_bytes"], "cas_tree": new["new_tree_bytes"], "cas_chunks": new["new_blobs"],
                "cas_fastcdc": old["new_bytes"], "restic": restic,
            })
    lines = ["| case | v2 size | changed | cas | ratio | cas tree node | cas fastcdc | ratio | restic | ratio |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        restic_cells = f"{r['restic']:,} | {r['restic'] / r['changed']:.2f}x" if r["restic"] is not None else "n/a | n/a"
        lines.append(
            f"| {r['case']} | {r['v2_size']:,} | {r['changed']:,} | {r['cas']:,} | {r['cas'] / r['changed']:.2f}x"
            f" | {r['cas_tree']:,} | {r['cas_fastcdc']:,} | {r['cas_fastcdc'] / r['changed']:.2f}x | {restic_cells} |"
        )
    print("\n".join(lines))
    if args.markdown:
        args.markdown.write_text("\n".join(lines) + "\n")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
