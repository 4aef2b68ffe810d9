"""cas.ops.restore.delete_process: removals made by a child process, on a real file system, with
the threads of this process taking over whatever the child leaves unanswered."""

from __future__ import annotations

import errno
import os
import resource
import signal
import sys
from pathlib import Path

import pytest

from cas.ops.restore.delete import Remover
from cas.ops.restore.delete_process import ProcessRemover
from cas.ops.restore.temps import TMP_PREFIX, temporary_tag


def _tree(root: Path, width: int = 40, files: int = 25) -> int:
    """A tree of ``width`` directories of ``files`` files; the entries in it and itself."""
    for i in range(width):
        d = root / f"d{i}"
        d.mkdir(parents=True)
        for j in range(files):
            (d / f"f{j}").write_bytes(b"x" * j)
    return width * (files + 1) + 1


def _open(path: Path) -> int:
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY)


def test_a_child_process_removes_what_it_is_sent_and_counts_it(tmp_path: Path) -> None:
    expected = [_tree(tmp_path / f"victim{k}") for k in range(3)]
    (tmp_path / "file").write_text("x")
    (tmp_path / "keep").write_text("keep")
    fallback = Remover()
    removals = ProcessRemover(fallback)
    fd = _open(tmp_path)
    try:
        futures = [removals.submit(fd, f"victim{k}") for k in range(3)] + [removals.submit(fd, "file")]
        futures.append(removals.submit(fd, "absent"))
        assert [f.result(timeout=60) for f in futures] == [*expected, 1, 0]
        assert removals.in_child and removals.pid != os.getpid()  # the child started and imported its module
    finally:
        removals.close()
        fallback.close()
        os.close(fd)
    assert os.listdir(tmp_path) == ["keep"]
    with pytest.raises(ProcessLookupError):
        os.kill(removals.pid, 0)  # closed: the child has exited and been waited for


def test_the_child_follows_no_symlink_and_leaves_live_temporaries(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("precious")
    dest = tmp_path / "dest"
    victim = dest / "victim"
    (victim / "sub").mkdir(parents=True)
    (victim / "sub" / "link").symlink_to(outside)
    (victim / "link-to-dir").symlink_to(outside, target_is_directory=True)
    live = victim / "sub" / f"{TMP_PREFIX}{temporary_tag()}-0"  # this process's: alive
    live.write_text("being written")
    (dest / "top-link").symlink_to(outside)
    fallback = Remover()
    removals = ProcessRemover(fallback)
    fd = _open(dest)
    try:
        assert removals.submit(fd, "victim").result(timeout=60) == 2  # the two links
        assert removals.submit(fd, "top-link").result(timeout=60) == 1
    finally:
        removals.close()
        fallback.close()
        os.close(fd)
    assert (outside / "precious").read_text() == "precious"
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*")) == [
        "victim", "victim/sub", f"victim/sub/{live.name}"]


def test_an_error_comes_back_as_the_os_error(tmp_path: Path) -> None:
    fallback = Remover()
    removals = ProcessRemover(fallback)
    fd = _open(tmp_path)
    try:
        with pytest.raises(OSError) as caught:
            removals.submit(fd, "n" * 300).result(timeout=60)  # longer than a name may be
        assert caught.value.errno == errno.ENAMETOOLONG
        assert removals.pid is not None  # the child's answer, not the fallback's
    finally:
        removals.close()
        fallback.close()
        os.close(fd)


def test_what_a_killed_child_left_unanswered_is_removed_here(tmp_path: Path) -> None:
    expected = [_tree(tmp_path / f"victim{k}", width=60) for k in range(4)]
    fallback = Remover()
    removals = ProcessRemover(fallback)
    fd = _open(tmp_path)
    try:
        first = removals.submit(fd, "victim0")
        assert removals.pid is not None
        os.kill(removals.pid, signal.SIGKILL)
        rest = [removals.submit(fd, f"victim{k}") for k in range(1, 4)]
        counts = [f.result(timeout=60) for f in [first, *rest]]
        # What the child removed before it died is not counted again; the rest is.
        assert counts[1:] == expected[1:]
        assert 0 <= counts[0] <= expected[0]
    finally:
        removals.close()
        fallback.close()
        os.close(fd)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("executable", ["no-such-python", "uwsgi"])
def test_without_a_child_the_removals_run_here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               executable: str) -> None:
    """No child when ``sys.executable`` cannot run one: a missing file, or a program embedding the
    interpreter (here `yes` named like uWSGI: it would take the child's arguments and never exit nor
    answer), which is not started at all."""
    if executable == "uwsgi":
        (tmp_path / executable).symlink_to("/usr/bin/yes")
    expected = _tree(tmp_path / "victim")
    monkeypatch.setattr(sys, "executable", str(tmp_path / executable))
    fallback = Remover()
    removals = ProcessRemover(fallback)
    fd = _open(tmp_path)
    try:
        assert removals.submit(fd, "victim").result(timeout=60) == expected
        assert removals.pid is None
    finally:
        if removals.pid is not None:  # started anyway: stop it, or closing would wait for it forever
            os.kill(removals.pid, signal.SIGKILL)
        removals.close()
        fallback.close()
        os.close(fd)
    assert os.listdir(tmp_path) == ([] if executable == "no-such-python" else [executable])


def test_more_removals_than_the_child_may_hold_descriptors_for(tmp_path: Path) -> None:
    """Each removal sent carries a descriptor that the child holds until it is done: thousands of
    names sent at once must wait in the socket, not make the child run out of descriptors (it
    would then fail and leave the work to the fallback)."""
    victim = tmp_path / "many"
    victim.mkdir()
    names = [f"f{i}" for i in range(3000)]
    for name in names:
        (victim / name).write_bytes(b"")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, hard), hard))  # the child inherits it
    fallback = Remover()
    removals = ProcessRemover(fallback)
    fd = _open(victim)
    try:
        futures = [removals.submit(fd, name) for name in names]
        assert sum(f.result(timeout=120) for f in futures) == len(names)
        assert removals.in_child
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        removals.close()
        fallback.close()
        os.close(fd)
    assert os.listdir(victim) == []


def test_the_childs_command_only_from_a_python_interpreter(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from cas.ops.restore.child import child_command

    monkeypatch.setattr(sys, "executable", str(tmp_path / "uwsgi"))
    assert child_command("pass") is None
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    monkeypatch.setattr(sys, "executable", "/usr/bin/python3")
    assert child_command("pass") is None  # a frozen application's executable is the application


def test_the_childs_command_runs_this_interpreter_isolated_on_this_package() -> None:
    import subprocess

    import blake3

    import cas
    from cas.ops.restore.child import child_code, child_command

    root = str(Path(cas.__file__).resolve().parents[1])
    code = ("import sys; paths = sys.argv[1].split(':'); sys.path[:0] = paths; import cas, blake3; "
            "print(sys.flags.isolated, sys.flags.no_site, cas.__file__, blake3.__file__, sys.argv[2:])")
    command = child_command(code, "x")
    assert command is not None and command[0] == sys.executable
    assert command[5].split(":")[0] == root  # the package's root, first on the path
    out = subprocess.run(command, capture_output=True, text=True, check=True, cwd="/").stdout
    assert out == f"1 1 {Path(cas.__file__).resolve()} {blake3.__file__} ['x']\n"
    # A helper's code: the package bare (its __init__ and the API it loads not run), and none of
    # what only the restore's side of a helper module uses.
    for module in ("cas.ops.restore.write_process", "cas.ops.restore.hash_ahead"):
        code = child_code(module).replace(
            f"from {module} import main; raise SystemExit(main(sys.argv[2:]))",
            f"import {module}; print(sorted(m for m in ('site', 'cas.errors', 'backends', 'subprocess', "
            f"'concurrent.futures', 'secrets', 'pathlib') if m in sys.modules), getattr(cas, '__file__', None))")
        command = child_command(code)
        assert command is not None
        out = subprocess.run(command, capture_output=True, text=True, check=True, cwd="/").stdout
        assert out == "[] None\n", module
