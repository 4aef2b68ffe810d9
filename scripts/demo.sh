#!/usr/bin/env bash
# Snapshot a sample project twice with a small change, restore it, and show what was stored.
# Uses the embedded default: a local repository and a SQLite index under $CAS_HOME.
set -euo pipefail
export CAS_HOME="${CAS_HOME:-$(mktemp -d /tmp/cas-demo.XXXXXX)}"
work="$(mktemp -d /tmp/cas-demo-work.XXXXXX)"
project="$work/my-project"
here="$(cd "$(dirname "$0")/.." && pwd)"
# The installed `cas` script may not be on PATH yet (pyenv needs a rehash); the module always is.
cas() { python3 -m cas "$@"; }

echo "== building a sample project in $project (this checkout's code + a 32 MiB float32 checkpoint)"
mkdir -p "$project/src" "$project/checkpoints" "$project/empty-dir"
cp -r "$here/cas" "$here/backends" "$here/manifests" "$project/src/"
python3 - "$project/checkpoints/model.bin" <<'PY'
import random, struct, sys
rng = random.Random(42)
with open(sys.argv[1], "wb") as f:
    for _ in range(32):
        f.write(struct.pack("<262144f", *(rng.gauss(0, 1) for _ in range(262144))))
PY
ln -s src/cas/cli.py "$project/main.py"

echo "== cas snapshot (first execution)"
cas snapshot "$project" --execution-id run-41 --label workflow=train
echo "== editing two files, then cas snapshot (second execution): only new chunks are stored"
echo "# edited for run-42" >> "$project/src/cas/cli.py"
python3 - "$project/checkpoints/model.bin" <<'PY'
import sys
with open(sys.argv[1], "r+b") as f:
    f.seek(5 << 20)
    f.write(b"\x00" * 4096)
PY
cas snapshot "$project" --execution-id run-42
echo "== cas log"; cas log
echo "== cas diff run-41 run-42"; cas diff run-41 run-42
echo "== cas restore run-42"; cas restore run-42 "$work/restored"
if diff -r --no-dereference "$project" "$work/restored" >/dev/null; then
    echo "restored tree is identical to the source"
else
    echo "restored tree differs from the source" >&2; exit 1
fi
echo "== cas stats"; cas stats
echo "(repository and index under $CAS_HOME; sample project under $work)"
