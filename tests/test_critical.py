"""Critical sections (:mod:`cas.critical`): a SIGINT handler that asks while the main thread is
inside one gets the interrupt deferred to the section's end; elsewhere it raises as usual."""

from __future__ import annotations

import threading

import pytest

from cas.critical import critical, defer_interrupt


def test_outside_any_section_the_handler_raises_itself() -> None:
    assert defer_interrupt() is False


def test_an_interrupt_during_a_section_is_raised_at_its_end_and_only_once() -> None:
    after: list[str] = []
    with pytest.raises(KeyboardInterrupt), critical():
        assert defer_interrupt() is True
        after.append("the section ran to its end")
    assert after == ["the section ran to its end"]
    with critical():
        pass  # nothing pending any more
    assert defer_interrupt() is False


def test_nested_sections_raise_at_the_outermost_end() -> None:
    reached: list[str] = []
    with pytest.raises(KeyboardInterrupt), critical():
        with critical():
            assert defer_interrupt() is True
        reached.append("the inner end raised nothing")
    assert reached == ["the inner end raised nothing"]


def test_an_exception_leaving_the_section_gives_way_to_the_interrupt() -> None:
    with pytest.raises(KeyboardInterrupt) as caught, critical():
        defer_interrupt()
        raise ValueError("the section's own failure")
    assert isinstance(caught.value.__context__, ValueError)


def test_a_section_on_another_thread_defers_nothing() -> None:
    inside, leave = threading.Event(), threading.Event()

    def other() -> None:
        with critical():
            inside.set()
            leave.wait(10)

    thread = threading.Thread(target=other)
    thread.start()
    try:
        assert inside.wait(10)
        assert defer_interrupt() is False  # the main thread is in no section
    finally:
        leave.set()
        thread.join()
