"""`Periodic`, the loop behind the extender's telemetry refresher, learner and state saver."""

from __future__ import annotations

import threading
import time

import pytest
from perllm_extender.periodic import Periodic


def _wait(cond: threading.Event, timeout: float = 5.0) -> bool:
    return cond.wait(timeout)


def test_immediate_first_pass_then_every_interval() -> None:
    calls: list[float] = []
    third = threading.Event()

    def tick() -> None:
        calls.append(time.monotonic())
        if len(calls) == 3:
            third.set()

    p = Periodic("t", tick, lambda: 0.01, immediate=True)
    p.start()
    p.start()  # a second start is a no-op, not a second thread
    assert _wait(third)
    p.stop()
    assert not p.running
    n = len(calls)
    time.sleep(0.05)
    assert len(calls) == n  # stopped means no more passes


def test_delayed_first_pass_and_prompt_stop() -> None:
    calls: list[int] = []
    p = Periodic("t", lambda: calls.append(1), lambda: 60.0)
    p.start()
    t0 = time.monotonic()
    p.stop(timeout=5)
    assert calls == []  # the first pass waits an interval
    assert time.monotonic() - t0 < 5  # the wait is cut short by stop


def test_a_failing_pass_is_logged_and_the_loop_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    n = 0
    again = threading.Event()

    def tick() -> None:
        nonlocal n
        n += 1
        if n == 1:
            raise RuntimeError("boom")
        again.set()

    p = Periodic("perllm-test", tick, lambda: 0.01, immediate=True)
    p.start()
    assert _wait(again)
    p.stop()
    assert any("perllm-test: pass failed" in r.getMessage() for r in caplog.records)
