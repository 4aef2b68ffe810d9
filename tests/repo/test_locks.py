"""Host locks that remove their file: mutual exclusion holds across the remove-and-recreate race."""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from pathlib import Path

from cas.repo.locks import exclusive


def _contend(path: str, rounds: int, inside: str, errors: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    """Enter the lock ``rounds`` times; a marker file proves nobody else is inside."""
    for _ in range(rounds):
        with exclusive(path):
            try:
                fd = os.open(inside, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                errors.put("two holders at once")
                continue
            os.close(fd)
            time.sleep(0.001)  # stay inside long enough for an intruder to be caught
            os.unlink(inside)


def test_threads_and_processes_exclude_each_other_and_leave_no_file(tmp_path: Path) -> None:
    path, inside = str(tmp_path / "the.lock"), str(tmp_path / "inside")
    ctx = multiprocessing.get_context("spawn")
    errors = ctx.Queue()
    procs = [ctx.Process(target=_contend, args=(path, 150, inside, errors)) for _ in range(3)]
    threads = [threading.Thread(target=_contend, args=(path, 150, inside, errors)) for _ in range(3)]
    for worker in [*procs, *threads]:
        worker.start()
    for p in procs:
        p.join(120)
    for t in threads:
        t.join(120)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    assert errors.empty()
    assert os.listdir(tmp_path) == []  # every holder removed the lock file


def test_not_waiting_yields_false_while_held(tmp_path: Path) -> None:
    path = str(tmp_path / "x.lock")
    with exclusive(path) as held:
        assert held
        outcome: list[bool] = []
        thread = threading.Thread(target=lambda: outcome.append(exclusive(path, wait=False).__enter__()))
        thread.start()
        thread.join(10)
        assert outcome == [False]
    with exclusive(path, wait=False) as held:
        assert held
    assert not os.path.exists(path)


def test_a_file_left_by_a_killed_holder_is_taken_over(tmp_path: Path) -> None:
    path = tmp_path / "left.lock"
    path.write_bytes(b"")  # what SIGKILL between creating and removing leaves: unlocked
    with exclusive(str(path), wait=False) as held:
        assert held
    assert not path.exists()
