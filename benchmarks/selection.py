"""What choosing costs: snapshot walks with and without .casignore files, and filtered restores.

    python benchmarks/selection.py [--files 14000] [--work DIR]

Builds a tree of small files (a source checkout's shape: many directories of ~70 files), then
times, each on a fresh repository and without the files cache:

* snapshots with ignore files off, on but none present, and with a 20-pattern ``.casignore`` at
  the root plus one in every top directory (patterns that match nothing, so every file is stored
  and only the matching is measured);
* the filter's decision alone, per entry;
* a full restore against one with ``--include '*.py'`` (which walks the stored trees first).

Prints one line per measurement. Nothing is asserted: the numbers go in the report.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from functools import partial

from cas import SnapshotFilter, Store, TreeFilter

PATTERNS = ["__pycache__/", "*.pyc", "*.ckpt", ".venv/", "/build/", "dist/", "*.egg-info/", ".mypy_cache/",
            "!keep.ckpt", "**/logs/*.log", "data/**/raw/", "*.tmp", "*.swp", ".DS_Store", "node_modules/",
            "/scratch", "wandb/", "outputs/", "*.o", "*.so"]


def build(root: str, files: int) -> None:
    per_dir = 70
    for i in range(files):
        d = os.path.join(root, f"pkg{i // (per_dir * 20)}", f"mod{i // per_dir % 20}")
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, f"file{i}.py" if i % 3 else f"data{i}.txt"), "w") as f:
            f.write(f"# {i}\n" * (1 + i % 40))


def timed(label: str, fn) -> float:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    fn()
    took = time.perf_counter() - start
    print(f"{label:<58} {took:7.2f} s")
    return took


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=14000)
    parser.add_argument("--work", default=None)
    args = parser.parse_args()
    work = args.work or tempfile.mkdtemp(prefix="cas-selection-")
    os.environ["CAS_HOME"] = os.path.join(work, "home")
    tree = os.path.join(work, "tree")
    shutil.rmtree(tree, ignore_errors=True)
    build(tree, args.files)
    print(f"{args.files} files under {tree}")

    def snapshot(name: str, options: SnapshotFilter) -> None:
        with Store.open(os.path.join(work, f"repo-{name}")) as store:
            store.snapshot(tree, "run", filter=options, use_files_cache=False)

    timed("snapshot, ignore files off", lambda: snapshot("off", SnapshotFilter(ignore_files=False)))
    timed("snapshot, ignore files on, none present", lambda: snapshot("none", SnapshotFilter()))
    for top in [tree] + [os.path.join(tree, d) for d in os.listdir(tree)]:
        with open(os.path.join(top, ".casignore"), "w") as f:
            f.write("\n".join(PATTERNS) + "\n")
    timed("snapshot, 20-pattern .casignore at the root and in each top dir",
          lambda: snapshot("some", SnapshotFilter()))

    walk = SnapshotFilter().start(os.stat(tree).st_dev)
    scope = walk.enter(walk.enter(None, "", True, "\n".join(PATTERNS)), "pkg0", True, "\n".join(PATTERNS))
    st = os.stat(os.path.join(tree, ".casignore"))
    paths = [f"pkg0/mod{i % 20}/file{i}.py" for i in range(100_000)]
    start = time.perf_counter()
    for path in paths:
        walk.decide(scope, path, st)
    print(f"{'decision per entry under two 20-pattern files':<58} {(time.perf_counter() - start) / len(paths) * 1e6:7.2f} us")

    with Store.open(os.path.join(work, "repo-some")) as store:
        for attempt in (1, 2):  # alternated, twice: the machine is shared
            timed(f"restore, everything ({attempt})",
                  partial(store.restore, "run", os.path.join(work, f"out-all-{attempt}")))
            timed(f"restore, --include '*.py' ({attempt})",
                  partial(store.restore, "run", os.path.join(work, f"out-py-{attempt}"),
                          filter=TreeFilter(include=["*.py"])))
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
