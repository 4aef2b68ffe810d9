"""Fuzzing every parser of stored data with mutated real objects, and restores of mutated repositories.

A pack, a tree node, a snapshot record, a repository config and zstd frames are made by the engine,
then mutated (bits flipped, bytes inserted, deleted, truncated, garbage spliced in, integers that
parsers care about written over fields, JSON values replaced by values of other types) and handed
to the parser. Each must return a valid value or raise a :class:`CasError`: no other exception, no
hang (a per-call alarm), no absurd memory (peak RSS growth is bounded).

End to end, mutated tree nodes and packs are stored in a real repository and restored, read with
``open_file`` and verified: only clean errors, nothing outside the destination changes, and no
byte that does not match its hash is ever returned or left under a final name.

Scale with ``CAS_FUZZ_EXAMPLES`` (examples per parser test; end-to-end tests run a tenth of that).
The default keeps the whole module near a minute on a 2-core machine. The number of cases tried is
printed at the end of the module.
"""

from __future__ import annotations

import copy
import json
import os
import re
import resource
import shutil
import struct
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, TypeVar

import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cas import CasError, Store
from cas.format.compression import decode, encode
from cas.format.config import RepoConfig
from cas.format.hashing import hexdigest
from cas.format.packs import (
    FOOTER_SIZE,
    MAX_BLOB_SIZE,
    PackBuilder,
    parse_footer,
    parse_trailer,
    split_pack,
)
from cas.format.records import SnapshotRecord
from cas.format.trees import DIR, FILE, SYMLINK, Entry, check_name, decode_tree, encode_tree, name_key
from cas.types import BlobKind, Codec
from tests.hostile.forge import commit, put_blob
from tests.inprocess import deadline
from tests.treeutil import describe

T = TypeVar("T")

EXAMPLES = int(os.environ.get("CAS_FUZZ_EXAMPLES", "2000"))
E2E_EXAMPLES = max(10, EXAMPLES // 10)
CALL_SECONDS = 10.0
MAX_RSS_GROWTH = 512 * 1024 * 1024

COUNTS: Counter[str] = Counter()
TIMES: dict[str, float] = {}

FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
E2E = settings(FUZZ, max_examples=E2E_EXAMPLES)


# -- guards -------------------------------------------------------------------------------------


def bounded(what: str) -> AbstractContextManager[None]:
    """Fail instead of hanging: an alarm interrupts a call that runs longer than CALL_SECONDS
    (:class:`~tests.inprocess.Hang`, which no ``except Exception`` in a parser can swallow)."""
    return deadline(CALL_SECONDS, f"{what} ran longer than {CALL_SECONDS} s")


def clean(what: str, fn: Callable[[], T]) -> T | CasError:
    """Run a parser: its value, or the CasError it raised. Any other exception fails the test."""
    COUNTS[what] += 1
    start = time.perf_counter()
    try:
        with bounded(what):
            return fn()
    except CasError as exc:
        assert str(exc), f"{what} raised an empty {type(exc).__name__}"
        return exc
    finally:
        TIMES[what] = TIMES.get(what, 0.0) + time.perf_counter() - start


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@pytest.fixture(autouse=True)
def rss_bound() -> Iterator[None]:
    before = peak_rss()
    yield
    grown = peak_rss() - before
    assert grown < MAX_RSS_GROWTH, f"peak memory grew by {grown >> 20} MiB during a fuzz test"


@pytest.fixture(scope="module", autouse=True)
def fuzz_summary(request: pytest.FixtureRequest) -> Iterator[None]:
    start = time.perf_counter()
    yield
    total = sum(COUNTS.values())
    parts = ", ".join(f"{name} {COUNTS[name]}" for name in sorted(COUNTS))
    line = f"fuzz: {total} cases in {time.perf_counter() - start:.1f} s ({parts})"
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if capture is not None and reporter is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line("\n" + line)
    report_path = os.environ.get("CAS_FUZZ_REPORT")
    if report_path:
        with open(report_path, "w") as f:
            json.dump({"total": total, "counts": dict(COUNTS), "seconds": dict(TIMES)}, f, indent=1)


# -- real objects, made by the engine -----------------------------------------------------------

D1 = "1" * 64
D2 = "2" * 64


def real_pack() -> bytes:
    builder = PackBuilder()
    for i, raw in enumerate((b"hello world " * 50, os.urandom(300), b"", b"x")):
        codec, payload = encode(raw, 3)
        builder.add(hexdigest(raw), BlobKind.DATA if i % 2 == 0 else BlobKind.TREE, codec, payload, len(raw))
    return bytes(builder.seal()[1])


def real_tree() -> bytes:
    return encode_tree([
        Entry("train.py", FILE, 0o644, 1_700_000_000_000_000_000, size=1234, digest=D1, chunks=(D1, D2)),
        Entry("empty", FILE, 0o600, 0, size=0, digest=hexdigest(b""), chunks=()),
        Entry("src", DIR, 0o755, 1, tree=D2),
        Entry("main.py", SYMLINK, 0o777, 2, target="src/train.py"),
        Entry("caf\udce9", FILE, 0o4755, 3, size=1, digest=D2, chunks=(D2,)),
    ])


def real_record() -> bytes:
    return SnapshotRecord(
        "run-42", D1, 0o755, 1_700_000_000_000_000_000, 1_700_000_000_000_000_001,
        labels={"workflow": "train", "team/name": "a b"}, stats={"files": 37, "logical_bytes": 33_800_000},
    ).to_json()


def real_config() -> bytes:
    return RepoConfig.new().to_json()


PACK = real_pack()
TREE = real_tree()
RECORD = real_record()
CONFIG = real_config()


# -- mutations ----------------------------------------------------------------------------------

INTERESTING_INTS = [0, 1, 2, 11, 12, 13, 49, 50, 51, 0x7F, 0x80, 0xFF, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF,
                    MAX_BLOB_SIZE, MAX_BLOB_SIZE + 1, 1 << 32, (1 << 63) - 1, (1 << 64) - 1]


@st.composite
def mutated_bytes(draw: st.DrawFn, original: bytes, max_ops: int = 4) -> bytes:
    """``original`` after 1..max_ops byte-level mutations, positions biased to both ends."""
    data = bytearray(original)
    for _ in range(draw(st.integers(1, max_ops))):
        n = len(data)
        back = draw(st.integers(0, min(n, 80)))
        pos = draw(st.one_of(st.integers(0, n), st.just(n - back)))
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate", "splice", "int", "dup", "append"]))
        if op == "flip" and pos < n:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and pos < n:
            data[pos] = draw(st.integers(0, 255))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=64))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 64))]
        elif op == "truncate":
            del data[pos:]
        elif op == "splice":
            data[pos : pos + draw(st.integers(0, 64))] = draw(st.binary(max_size=64))
        elif op == "int":
            width = draw(st.sampled_from([1, 2, 4, 8]))
            value = draw(st.sampled_from(INTERESTING_INTS)) & ((1 << (8 * width)) - 1)
            data[pos : pos + width] = value.to_bytes(width, "little")
        elif op == "dup" and n:
            start = draw(st.integers(0, n - 1))
            data[pos:pos] = data[start : start + draw(st.integers(1, 100))]
        elif op == "append":
            data += draw(st.binary(min_size=1, max_size=128))
    return bytes(data)


HOSTILE_STRINGS = ["", ".", "..", "/", "a/b", "../x", "/etc/passwd", "nul\x00", "\udc80", "\ud800", "x" * 5000,
                   "0" * 64, "A" * 64, "g" * 64, "\u202e", "\x1b[2J", "file", "dir", "symlink", "CPTR"]
INTERESTING_NUMBERS: list[object] = [0, -1, 1, 0o7777, 0o10000, 0o170000, 2**31, 2**62, 2**63, 2**64, -(2**63) - 1,
                                     10**30, 10**400, 1.0, 0.5, float("nan"), float("inf"), True, False]

json_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from(INTERESTING_NUMBERS),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(HOSTILE_STRINGS),
    st.text(max_size=20),
)
json_values = st.recursive(
    json_leaves,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=8,
)


def _slots(doc: object, out: list[tuple[Any, Any]]) -> list[tuple[Any, Any]]:
    """(container, key) for every value inside ``doc``."""
    if isinstance(doc, dict):
        for key, value in doc.items():
            out.append((doc, key))
            _slots(value, out)
    elif isinstance(doc, list):
        for i, value in enumerate(doc):
            out.append((doc, i))
            _slots(value, out)
    return out


@st.composite
def mutated_json(draw: st.DrawFn, original: bytes) -> bytes:
    """The JSON document after value-level mutations (and sometimes byte-level ones on top)."""
    doc = json.loads(original)
    for _ in range(draw(st.integers(1, 3))):
        slots = _slots(doc, [])
        if not slots:
            doc = draw(json_values)
            continue
        container, key = draw(st.sampled_from(slots))
        op = draw(st.sampled_from(["replace", "replace", "delete", "add", "dup", "swap", "tweak"]))
        if op == "replace":
            container[key] = draw(json_values)
        elif op == "delete":
            del container[key]
        elif op == "add":
            if isinstance(container, dict):
                known = list(container) + ["name", "type", "mode", "size", "chunks", "tree", "target", "v", "extra"]
                container[draw(st.sampled_from(known) | st.text(max_size=8))] = draw(json_values)
            else:
                container.insert(key, draw(json_values))
        elif op == "dup" and isinstance(container, list):
            container.insert(key, copy.deepcopy(container[key]))
        elif op == "swap" and isinstance(container, list) and len(container) > 1:
            other = draw(st.integers(0, len(container) - 1))
            container[key], container[other] = container[other], container[key]
        elif op == "tweak":
            value = container[key]
            if isinstance(value, str):
                container[key] = value + draw(st.sampled_from(HOSTILE_STRINGS))
            elif type(value) is int:
                container[key] = value + draw(st.sampled_from([-1, 1, -(2**62), 2**62]))
    text = json.dumps(doc, ensure_ascii=draw(st.booleans()), sort_keys=draw(st.booleans()), allow_nan=True)
    data = text.encode("utf-8", "surrogatepass")
    if draw(st.booleans()):
        data = draw(mutated_bytes(data, max_ops=2))
    return data


def hostile_json(original: bytes) -> st.SearchStrategy[bytes]:
    deep = st.integers(100, 200_000).map(lambda n: b"[" * n + b"]" * n)
    deep_obj = st.integers(100, 50_000).map(lambda n: b'{"v":' * n + b"1" + b"}" * n)
    return st.one_of(mutated_json(original), mutated_json(original), mutated_bytes(original), deep, deep_obj,
                     st.binary(max_size=200))


# -- parsers ------------------------------------------------------------------------------------


def check_pack_entries(data: bytes, result: object) -> None:
    if isinstance(result, CasError):
        return
    assert isinstance(result, list)
    trailer_len = parse_footer(data[-FOOTER_SIZE:])
    data_size = len(data) - FOOTER_SIZE - trailer_len
    offset = 0
    for e in result:
        assert e.offset == offset and e.kind in (BlobKind.DATA, BlobKind.TREE) and e.codec in (Codec.RAW, Codec.ZSTD)
        assert 0 <= e.length <= MAX_BLOB_SIZE and 0 <= e.raw_length <= MAX_BLOB_SIZE and len(e.id) == 64
        offset += e.length
    assert offset == data_size


@FUZZ
@given(mutated_bytes(PACK))
def test_fuzz_pack_parsers(data: bytes) -> None:
    result = clean("split_pack", lambda: split_pack(data))
    check_pack_entries(data, result)
    # The two-step path rebuild-index takes: footer, then trailer, with ranges from the pack's size.
    footer = clean("parse_footer", lambda: parse_footer(data[-FOOTER_SIZE:]))
    if isinstance(footer, int):
        assert footer >= 0
        data_size = len(data) - FOOTER_SIZE - footer
        if data_size >= 0:
            trailer = data[data_size : len(data) - FOOTER_SIZE]
            entries = clean("parse_trailer", lambda: parse_trailer(trailer, data_size))
            check_pack_entries(data, entries)


@FUZZ
@given(st.binary(max_size=FOOTER_SIZE + 2), st.binary(max_size=120), st.integers(-5, 1 << 40))
def test_fuzz_pack_parsers_on_garbage(footer: bytes, trailer: bytes, data_size: int) -> None:
    clean("parse_footer", lambda: parse_footer(footer))
    clean("parse_trailer", lambda: parse_trailer(trailer, data_size))
    clean("split_pack", lambda: split_pack(trailer + footer))


@FUZZ
@given(hostile_json(TREE))
def test_fuzz_decode_tree(data: bytes) -> None:
    result = clean("decode_tree", lambda: decode_tree(data))
    if isinstance(result, CasError):
        return
    keys = [name_key(check_name(e.name)) for e in result]
    assert keys == sorted(set(keys))
    hex64 = re.compile(r"[0-9a-f]{64}")  # the definition, not the decoder's faster check
    for e in result:
        assert e.type in (FILE, DIR, SYMLINK) and 0 <= e.mode <= 0o7777
        if e.type == FILE:
            assert 0 <= e.size and (e.size == 0 or 0 < len(e.chunks) <= e.size)
            assert all(hex64.fullmatch(c) for c in (e.digest, *e.chunks))
        elif e.type == DIR:
            assert hex64.fullmatch(e.tree)
    assert decode_tree(encode_tree(result)) == result


@FUZZ
@given(hostile_json(RECORD))
def test_fuzz_snapshot_record(data: bytes) -> None:
    result = clean("SnapshotRecord.from_json", lambda: SnapshotRecord.from_json(data))
    if isinstance(result, SnapshotRecord):
        assert SnapshotRecord.from_json(result.to_json()) == result


@FUZZ
@given(hostile_json(CONFIG))
def test_fuzz_repo_config(data: bytes) -> None:
    result = clean("RepoConfig.from_json", lambda: RepoConfig.from_json(data))
    if isinstance(result, RepoConfig):
        result.validate()
        assert RepoConfig.from_json(result.to_json()) == result


def zstd_frame_claiming(size: int, body: bytes) -> bytes:
    """A zstd frame whose header declares ``size`` content bytes, followed by the blocks of ``body``.

    The header is single-segment with an 8-byte content size; the blocks come from a real frame
    without content size or checksum, whose header is magic, descriptor and window byte (6 bytes).
    """
    real = zstandard.ZstdCompressor(write_content_size=False, write_checksum=False).compress(body)
    assert real[4] & 0xE7 == 0, "unexpected frame header"
    return real[:4] + bytes([0xE0]) + struct.pack("<Q", size) + real[6:]


ZSTD_SAMPLE = b"model weights " * 200
ZSTD_FRAME = encode(ZSTD_SAMPLE, 3)[1]


@FUZZ
@given(
    st.one_of(
        mutated_bytes(ZSTD_FRAME),
        st.builds(zstd_frame_claiming, st.sampled_from(INTERESTING_INTS) | st.integers(0, (1 << 64) - 1),
                  st.sampled_from([b"", b"a", ZSTD_SAMPLE, b"\0" * 100_000])),
        st.binary(max_size=64),
    ),
    st.sampled_from([Codec.ZSTD, Codec.ZSTD, Codec.RAW, 2, 255]),
    st.one_of(st.just(len(ZSTD_SAMPLE)), st.integers(0, MAX_BLOB_SIZE), st.sampled_from([0, 1, MAX_BLOB_SIZE])),
)
def test_fuzz_decode(payload: bytes, codec: int, raw_length: int) -> None:
    result = clean("compression.decode", lambda: decode(codec, payload, raw_length))
    if isinstance(result, bytes):
        assert len(result) == raw_length
        if codec == Codec.RAW:
            assert result == payload


def test_zstd_frames_claiming_huge_sizes_are_refused_before_allocating() -> None:
    for claimed in (1 << 30, 1 << 40, 1 << 63):
        frame = zstd_frame_claiming(claimed, b"tiny")
        assert zstandard.frame_content_size(frame) == claimed
        before = peak_rss()
        with pytest.raises(CasError, match="claims"):
            decode(Codec.ZSTD, frame, MAX_BLOB_SIZE)
        assert peak_rss() - before < 32 << 20


def test_zstd_bomb_without_a_content_size_is_bounded_by_the_recorded_length() -> None:
    bomb = zstandard.ZstdCompressor(write_content_size=False).compress(b"\0" * (64 << 20))
    for raw_length in (0, 1, 4096):
        with pytest.raises(CasError):
            decode(Codec.ZSTD, bomb, raw_length)


# -- examples the fuzzer found (regular tests) --------------------------------------------------


def test_deeply_nested_config_is_an_integrity_error_not_a_recursion_error() -> None:
    # Found by test_fuzz_repo_config: json.loads raised RecursionError through RepoConfig.from_json.
    with pytest.raises(CasError, match="not valid JSON"):
        RepoConfig.from_json(b"[" * 30_000 + b"]" * 30_000)


@pytest.mark.parametrize("version", [b"true", b"1.0"])
def test_versions_that_only_compare_equal_to_1_are_refused(version: bytes) -> None:
    # Found by test_fuzz_decode_tree: {"v": true} and {"v": 1.0} passed the version check.
    with pytest.raises(CasError):
        decode_tree(b'{"entries":[],"v":' + version + b"}")
    record = json.loads(RECORD)
    record["v"] = json.loads(version)
    with pytest.raises(CasError):
        SnapshotRecord.from_json(json.dumps(record).encode())


@pytest.mark.parametrize("value", ["\udcff", "\ud800x", "csi\x9b2J", "nel\x85"])
def test_label_values_that_are_not_printable_text_are_refused(value: str) -> None:
    # Found by the record fuzzer: lone surrogates (undecodable command-line bytes) and C1 controls
    # passed as "printable" label values and reached the index and the --json output.
    record = json.loads(RECORD)
    record["labels"] = {"k": value}
    with pytest.raises(CasError, match="label"):
        SnapshotRecord.from_json(json.dumps(record).encode())


def test_stats_beyond_64_bits_are_refused() -> None:
    # Found by test_fuzz_sync_of_mutated_snapshot_records: a stats value of 2**63 or more passed
    # the record parser and made `cas rebuild-index` fail with SQLite's OverflowError.
    record = json.loads(RECORD)
    record["stats"]["stored_bytes"] = 1 << 63
    with pytest.raises(CasError, match="stats"):
        SnapshotRecord.from_json(json.dumps(record).encode())
    record["stats"]["stored_bytes"] = (1 << 63) - 1
    assert SnapshotRecord.from_json(json.dumps(record).encode()).stats["stored_bytes"] == (1 << 63) - 1


# -- end to end: mutated objects in a real repository -------------------------------------------


def make_project(root: Path) -> Path:
    src = root / "project"
    (src / "sub" / "deeper").mkdir(parents=True)
    (src / "big.bin").write_bytes(os.urandom(5000))  # several chunks with the tests' tiny chunk sizes
    (src / "small.txt").write_text("small\n")
    (src / "empty").write_bytes(b"")
    (src / "sub" / "x.py").write_text("print('x')\n" * 30)
    (src / "sub" / "deeper" / "y").write_bytes(b"y" * 700)
    os.chmod(src / "small.txt", 0o640)
    os.symlink("sub/x.py", src / "link")
    return src


def force_remove(path: Path) -> None:
    if not path.exists() and not path.is_symlink():
        return
    for dirpath, dirnames, _files in os.walk(path):
        for d in dirnames:
            full = os.path.join(dirpath, d)
            if not os.path.islink(full):
                os.chmod(full, 0o700)
    shutil.rmtree(path)


def files_of(root: Path) -> dict[str, bytes]:
    return {k: v[3] for k, v in describe(str(root)).items() if v[0] == "file"}  # type: ignore[misc]


class Arena:
    """A destination inside a directory whose other contents must not change."""

    def __init__(self, base: Path) -> None:
        self.base = base
        (base / "outside").mkdir(parents=True)
        (base / "outside" / "keep.txt").write_text("keep")
        os.symlink("../outside", base / "outside" / "up")
        self.n = 0

    def fresh(self) -> Path:
        self.n += 1
        return self.base / f"dest{self.n}"

    def around(self) -> dict[str, tuple[object, ...]]:
        return {k: v for k, v in describe(str(self.base)).items() if not k.startswith("dest")}


def walk_files(store: Store, execution_id: str) -> list[str]:
    try:
        return [p for p, e in store.ls(execution_id, recursive=True) if e.type == FILE]
    except CasError:
        return []


def read_stored_file(store: Store, execution_id: str, path: str) -> bytes | CasError:
    def read() -> bytes:
        with store.open_file(execution_id, path) as stream:
            return stream.read()

    return clean("open_file", read)


def no_temporaries(root: Path) -> None:
    for dirpath, dirnames, filenames in os.walk(root):
        leftovers = [n for n in dirnames + filenames if n.startswith(".cas-tmp-")]
        assert not leftovers, f"temporaries left in {dirpath}: {leftovers}"


def test_fuzz_restore_of_mutated_tree_nodes(store: Store, tmp_path: Path) -> None:
    source = make_project(tmp_path)
    store.snapshot(source, "base")
    contents = set(files_of(source).values()) | {b""}
    trees = [store.get("base").root] + [e.tree for _p, e in store.ls("base", recursive=True) if e.type == DIR]
    originals = [store.repo.read_blob(t) for t in trees]
    arena = Arena(tmp_path / "arena")
    before = arena.around()
    counter = iter(range(10**9))

    @E2E
    @given(st.sampled_from(range(len(originals))).flatmap(lambda i: st.tuples(st.just(i), hostile_json(originals[i]))))
    def run(case: tuple[int, bytes]) -> None:
        which, data = case
        execution_id = f"fz-tree-{next(counter)}"
        if which == 0:
            root = put_blob(store, data, BlobKind.TREE)
        else:
            # Swap the mutated node in for a subdirectory of an otherwise real root.
            sub = put_blob(store, data, BlobKind.TREE)
            entries = [e if e.tree != trees[which] else Entry(e.name, DIR, e.mode, e.mtime_ns, tree=sub)
                       for e in decode_tree(originals[0])]
            root = put_blob(store, encode_tree(entries), BlobKind.TREE)
        commit(store, execution_id, root)
        dest = arena.fresh()
        clean("restore(tree)", lambda: store.restore(execution_id, dest))
        assert arena.around() == before, "restore of a mutated tree changed something outside the destination"
        no_temporaries(dest)
        for rel, content in files_of(dest).items():
            assert content in contents, f"{rel} holds bytes that no stored file had"
        for path in walk_files(store, execution_id)[:5]:
            got = read_stored_file(store, execution_id, path)
            assert isinstance(got, CasError) or got in contents
        clean("diff", lambda: store.diff("base", execution_id))
        force_remove(dest)

    run()
    report = clean("verify", lambda: store.verify())
    assert not isinstance(report, CasError)


def test_fuzz_restore_and_verify_of_mutated_packs(store: Store, tmp_path: Path) -> None:
    source = make_project(tmp_path)
    store.snapshot(source, "base")
    expected = describe(str(source))
    expected_files = files_of(source)
    keys = sorted(info.key for info in store.repo.backend.list("data/"))
    originals = {key: store.repo.backend.get(key) for key in keys}
    arena = Arena(tmp_path / "arena")
    before = arena.around()

    @E2E
    @given(st.sampled_from(keys).flatmap(lambda k: st.tuples(st.just(k), mutated_bytes(originals[k]))))
    def run(case: tuple[str, bytes]) -> None:
        key, data = case
        store.repo.backend.put(key, data)
        try:
            dest = arena.fresh()
            result = clean("restore(pack)", lambda: store.restore("base", dest))
            assert arena.around() == before
            no_temporaries(dest)
            if isinstance(result, CasError):
                # Whatever did get restored is exactly what was stored: corrupt bytes never land.
                for rel, content in files_of(dest).items():
                    assert content == expected_files[rel], f"{rel} restored with corrupt content"
            else:
                assert describe(str(dest)) == expected
            for path in ("big.bin", "sub/deeper/y", "small.txt"):
                got = read_stored_file(store, "base", path)
                assert isinstance(got, CasError) or got == expected_files[path]
            report = clean("verify(read_data)", lambda: store.verify(read_data=True))
            assert not isinstance(report, CasError)
            if data != originals[key]:
                assert not report.ok, "verify --read-data passed a pack whose bytes changed"
            force_remove(dest)
        finally:
            store.repo.backend.put(key, originals[key])

    run()
    assert store.verify(read_data=True).ok


def test_fuzz_sync_of_mutated_snapshot_records(store: Store, tmp_path: Path) -> None:
    source = make_project(tmp_path)
    store.snapshot(source, "base")
    original = store.repo.backend.get("snapshots/base")
    counter = iter(range(10**9))

    @E2E
    @given(hostile_json(original))
    def run(data: bytes) -> None:
        execution_id = f"fz-rec-{next(counter)}"
        store.repo.backend.put(f"snapshots/{execution_id}", data)
        try:
            clean("sync(record)", lambda: store.sync())
            clean("get(record)", lambda: store.get(execution_id))
            clean("verify(record)", lambda: store.verify())
        finally:
            store.repo.backend.delete(f"snapshots/{execution_id}")
            for row in store.repo.index.snapshots():
                if row.execution_id != "base":
                    store.repo.index.remove_snapshot(row.execution_id)

    run()
    assert store.verify().ok


def test_fuzz_open_of_mutated_repository_config(tmp_path: Path, cas_home: Path) -> None:
    counter = iter(range(10**9))

    @settings(E2E, max_examples=max(10, E2E_EXAMPLES // 2))
    @given(hostile_json(CONFIG))
    def run(data: bytes) -> None:
        repo = tmp_path / f"repo{next(counter)}"
        repo.mkdir()
        (repo / "config").write_bytes(data)
        result = clean("Store.open(config)", lambda: Store.open(str(repo), create=False,
                                                                index=f"sqlite:///{tmp_path / 'index.sqlite'}"))
        if isinstance(result, Store):
            result.close()
        shutil.rmtree(repo)

    run()
