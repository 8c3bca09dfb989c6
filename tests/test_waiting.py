"""tests.support.waiting: the one wait of the tests, on an injected clock."""

from __future__ import annotations

import pytest

from tests.support.waiting import WaitFailed, wait_until


class Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_returns_what_the_condition_returned_once_it_holds() -> None:
    clock = Clock()
    answers = iter([0, 0, 7])
    assert wait_until(lambda: next(answers), within=10, what="x", poll=0.5, clock=clock, sleep=clock.sleep) == 7
    assert clock.sleeps == [0.5, 0.5]


def test_fails_at_the_deadline_naming_what_it_waited_for_and_its_context() -> None:
    clock = Clock()
    with pytest.raises(WaitFailed, match=r"(?s)the answers: not after 3 s\nlog tail"):
        wait_until(lambda: False, within=3, what="the answers", poll=1, explain=lambda: "log tail",
                   clock=clock, sleep=clock.sleep)
    assert clock.now == 3


def test_fails_at_once_when_what_it_waits_on_is_gone_with_the_chosen_error() -> None:
    clock = Clock()
    with pytest.raises(RuntimeError, match="server: exited with code 1"):
        wait_until(lambda: False, within=60, what="server", gone=lambda: "exited with code 1",
                   failure=RuntimeError, clock=clock, sleep=clock.sleep)
    assert clock.sleeps == []
