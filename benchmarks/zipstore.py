"""AIFlow's way of keeping an execution: zip the directory, copy the zip into a store directory.

    python benchmarks/zipstore.py snapshot SRC_DIR STORE_DIR NAME
    python benchmarks/zipstore.py restore STORE_DIR NAME DEST_DIR

Run as its own process by the benchmark so its time and peak memory are measured like the others'.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path


def snapshot(src: Path, store: Path, name: str) -> None:
    if not src.is_dir():  # os.walk would say nothing and store an empty zip
        raise SystemExit(f"not a directory: {src}")
    store.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".zip", dir=store.parent)
    os.close(fd)
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for root, dirs, files in os.walk(src):
                dirs.sort()
                rel_root = os.path.relpath(root, src)
                if rel_root != "." and not files and not dirs:
                    zf.write(root, rel_root + "/")
                for f in sorted(files):
                    p = os.path.join(root, f)
                    zf.write(p, os.path.normpath(os.path.join(rel_root, f)))
        shutil.copyfile(tmp, store / f"{name}.zip")
    finally:
        os.unlink(tmp)


def restore(store: Path, name: str, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(store / f"{name}.zip") as zf:
        zf.extractall(dest)


def main(argv: list[str]) -> int:
    if len(argv) == 4 and argv[0] == "snapshot":
        snapshot(Path(argv[1]), Path(argv[2]), argv[3])
        return 0
    if len(argv) == 4 and argv[0] == "restore":
        restore(Path(argv[1]), argv[2], Path(argv[3]))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
