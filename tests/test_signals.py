"""Interruptions: when a signal stops a run at once, and when it lets answers in flight land."""

from __future__ import annotations

import signal

import pytest

from bfcl_ext.errors import EXIT_INTERRUPTED, EXIT_TERMINATED
from bfcl_ext.signals import REPEAT_WINDOW, Interrupted, Interruptions


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_outside_generation_a_signal_stops_at_once() -> None:
    interruptions = Interruptions()
    with pytest.raises(Interrupted) as caught:
        interruptions._handle(signal.SIGTERM, None)
    assert caught.value.exit_code == EXIT_TERMINATED


def test_a_sigterm_delivered_twice_is_one_request(capsys: pytest.CaptureFixture[str]) -> None:
    clock = Clock()
    interruptions = Interruptions(clock)
    with interruptions.deferred():
        interruptions._handle(signal.SIGTERM, None)  # stop after the answers in flight
        assert interruptions.stop.is_set()
        clock.now += REPEAT_WINDOW / 2
        interruptions._handle(signal.SIGTERM, None)  # the same request again (SLURM and a wrapper)
        assert "already stopping" in capsys.readouterr().err
        clock.now += REPEAT_WINDOW
        with pytest.raises(Interrupted) as caught:  # later: the user insists
            interruptions._handle(signal.SIGTERM, None)
    assert caught.value.exit_code == EXIT_TERMINATED
    with pytest.raises(Interrupted):
        interruptions.raise_if_stopped()


def test_a_second_ctrl_c_stops_at_once() -> None:
    interruptions = Interruptions(Clock())
    with interruptions.deferred():
        interruptions._handle(signal.SIGINT, None)
        with pytest.raises(Interrupted) as caught:
            interruptions._handle(signal.SIGINT, None)
    assert caught.value.exit_code == EXIT_INTERRUPTED
