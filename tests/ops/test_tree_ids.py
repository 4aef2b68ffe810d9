"""The same tree gives the same root ID release after release: the on-disk format is pinned.

The IDs below were computed by the code before the snapshot path was reworked for speed (issue 17);
a change to how entries, nodes or chunks are encoded changes them, and with them every later
snapshot's deduplication against stored trees. Also: the fast entry encoder gives exactly the bytes
of the canonical JSON encoding, for any entry.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cas import Store
from cas.format.trees import DIR, FILE, SYMLINK, Entry, encode_entry
from tests.engine import SMALL_CHUNKS

_MTIME = 1_700_000_000_123_456_789


def _build(root: Path) -> None:
    """A tree with every kind of entry: small and chunked files (plain and zip), empty ones, odd
    names (quotes, backslashes, control characters, non-ASCII, bytes that are not UTF-8), symlinks,
    empty and nested directories, a directory of many files."""
    rnd = random.Random(17)
    files: dict[bytes, bytes] = {
        b"empty": b"",
        b"small.txt": b"hello\n",
        b"quote\"back\\slash": b"q",
        b"ctl\x01\x1ftab\t": b"c",
        "ünïcødé-日本.py".encode(): b"print('x')\n" * 20,
        b"not-utf8-\xff\xfe": b"raw",
        b"big.bin": rnd.randbytes(300_000),
        b"text.log": b"".join(b"line %d of the log\n" % i for i in range(20_000)),
    }
    root.mkdir()
    for name, data in files.items():
        (root / os.fsdecode(name)).write_bytes(data)
    import zipfile

    with zipfile.ZipFile(root / "model.zip", "w", compression=zipfile.ZIP_STORED) as z:
        for i in range(40):
            z.writestr(zipfile.ZipInfo(f"weights/{i:03d}.bin", (2024, 1, 2, 3, 4, 6)), random.Random(i).randbytes(200 + 300 * i))
    many = root / "many"
    many.mkdir()
    for i in range(1500):
        (many / f"f{i:05d}.dat").write_bytes(b"%d" % (i * 7919) * (i % 13))
    nested = root / "a" / "b" / "c"
    nested.mkdir(parents=True)
    (nested / "deep.txt").write_bytes(b"deep")
    (root / "empty-dir").mkdir()
    os.symlink("small.txt", root / "link")
    os.symlink("../outside/target", root / "a" / "up-link")
    modes = {"small.txt": 0o600, "big.bin": 0o755, "text.log": 0o444}
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for name in filenames:
            p = os.path.join(dirpath, name)
            if not os.path.islink(p):
                os.chmod(p, modes.get(name, 0o644))
        for name in [*filenames, *dirnames]:
            p = os.path.join(dirpath, name)
            if os.path.isdir(p) and not os.path.islink(p):
                os.chmod(p, 0o750 if name == "b" else 0o755)
            os.utime(p, ns=(_MTIME, _MTIME + len(name)), follow_symlinks=False)


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (SMALL_CHUNKS, "207a2ba5b95b567f11007478d1491cb5e21b17e964f9d09b295327d4a816ecc8"),
        ({}, "e5ed8ba9ed21a8ec42fd0505e963df129184333468c398a3bb5c80effb0f16d6"),
    ],
    ids=["small-chunks", "default-chunks"],
)
def test_root_id_is_pinned(tmp_path: Path, cas_home: Path, options: dict[str, int], expected: str) -> None:
    src = tmp_path / "src"
    _build(src)
    with Store.open(str(tmp_path / "repo"), index=f"sqlite:///{tmp_path / 'index.sqlite'}", **options) as store:
        first = store.snapshot(str(src), "one")
        again = store.snapshot(str(src), "two")  # from the files cache
    assert first.root == expected
    assert again.root == expected


def _reference(entry: Entry) -> bytes:
    """The canonical encoding as the format defines it (docs/FORMAT.md): sorted keys, no spaces."""
    return json.dumps(entry.to_json(), sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


_text = st.text(
    alphabet=st.one_of(st.characters(), st.characters(min_codepoint=0xDC80, max_codepoint=0xDCFF)), min_size=1, max_size=40
)
_hex = st.text(alphabet="0123456789abcdef", min_size=64, max_size=64)


@given(
    kind=st.sampled_from([FILE, DIR, SYMLINK]),
    name=_text,
    mode=st.integers(0, 0o7777),
    mtime_ns=st.integers(-(1 << 63), (1 << 63) - 1),
    size=st.integers(0, 1 << 62),
    digest=_hex,
    chunks=st.lists(_hex, max_size=5),
    target=_text,
    tree=_hex,
)
def test_entry_encoding_is_the_canonical_json(
    kind: object, name: str, mode: int, mtime_ns: int, size: int, digest: str, chunks: list[str], target: str,
    tree: str,
) -> None:
    entry = Entry(name, kind, mode, mtime_ns, size=size, digest=digest, chunks=tuple(chunks), target=target,  # type: ignore[arg-type]
                  tree=tree)
    assert encode_entry(entry) == _reference(entry)
