"""Proof that the suite can fail: the same child work without a PID guard is caught hanging.

Control 1: ``forksafe._native.testing.control_echo`` goes through plain
``pyo3_async_runtimes::tokio`` (its global runtime, no PID guard), awaited through forksafe.run.
Control 2: forksafe's own native echo, awaited on a naive background loop without the PID check.
Both work in the parent and must be reported as hung by the detector in a forked child.
"""

from __future__ import annotations

import asyncio
import os
import threading
from typing import Any

import forksafe
import forkutil
import pytest

CONTROL_DEADLINE = 3.0


def _control_echo() -> Any:
    if not forksafe._native.CONTROL_PROBE:
        pytest.fail(
            "forksafe._native was built without the control probe: the fork suite needs the test "
            "wheel, built with `maturin build --features control-probe`",
            pytrace=False,
        )
    return forksafe._native.testing.control_echo


class NaiveLoop:
    """A background loop as extensions write it: started once, no PID check."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="naive-loop", daemon=True)
        self.thread.start()

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        assert not self.thread.is_alive()
        self.loop.close()


async def _await_control(v: str) -> Any:
    return await _control_echo()(v)


async def _await_echo(v: str) -> Any:
    return await forksafe.testing.echo(v)


def _child_control_echo(v: str) -> dict[str, Any]:
    report = forkutil.exercise(v)  # forksafe itself works in this very child
    forkutil.progress("control: awaiting control_echo through forksafe.run")
    return {"exercise": report, "control": forksafe.run(_await_control(v))}


def _child_naive_loop(naive: NaiveLoop, v: str) -> dict[str, Any]:
    report = forkutil.exercise(v)
    forkutil.progress("control: awaiting forksafe.testing.echo on the naive loop")
    return {"exercise": report, "control": naive.run(_await_echo(v))}


def _assert_hung(outcome: forkutil.ChildOutcome, waiting_for: str) -> None:
    assert outcome.hung, f"the control child was expected to hang but did not: {outcome.describe()}"
    assert outcome.exit_code is None
    assert not outcome.has_report, outcome.report
    # Its last words show it got through forksafe's own work and stopped at the control call.
    assert any("exercise: done" in line for line in outcome.progress), outcome.last_words()
    assert waiting_for in outcome.progress[-1], outcome.last_words()
    assert f"[pid {outcome.pid}]" in outcome.progress[-1]
    with pytest.raises(pytest.fail.Exception, match=f"child hung: pid {outcome.pid}"):
        outcome.require()


def test_control_echo_without_pid_guard_hangs_in_child(parent_report: dict[str, Any]) -> None:
    v = forkutil.new_value("control")
    # Used once in the parent, so pyo3-async-runtimes' global runtime exists before the fork.
    assert forksafe.run(_await_control(v)) == v
    outcome = forkutil.spawn_child(_child_control_echo, v, deadline=CONTROL_DEADLINE)
    _assert_hung(outcome, "control_echo")
    # The parent's control runtime and forksafe are both fine.
    assert forksafe.run(_await_control(v)) == v
    forkutil.exercise_parent()


def test_naive_loop_without_pid_check_hangs_in_child(parent_report: dict[str, Any]) -> None:
    v = forkutil.new_value("naive")
    naive = NaiveLoop()
    try:
        assert naive.run(_await_echo(v)) == v
        outcome = forkutil.spawn_child(_child_naive_loop, naive, v, deadline=CONTROL_DEADLINE)
        _assert_hung(outcome, "naive loop")
        assert naive.run(_await_echo(v)) == v
    finally:
        naive.close()
    forkutil.exercise_parent()


def _raise_in_child(v: str) -> None:
    forkutil.progress(f"about to raise for {v}")
    raise ValueError(f"boom {v}")


def _exit_without_report() -> None:
    forkutil.progress("leaving without a report")
    os._exit(3)


def test_detector_reports_an_exception_raised_in_the_child() -> None:
    v = forkutil.new_value("raise")
    outcome = forkutil.spawn_child(_raise_in_child, v)
    assert not outcome.ok and not outcome.hung
    # The engine's verdict: the work raised ("wrong"); the child itself left cleanly.
    assert outcome.status == "wrong" and outcome.exit_code == 0
    assert outcome.error is not None
    assert f"ValueError: boom {v}" in outcome.error
    assert "_raise_in_child" in outcome.error
    assert any(f"about to raise for {v}" in line for line in outcome.progress)
    with pytest.raises(pytest.fail.Exception, match=f"child raised(.|\n)*boom {v}"):
        outcome.require()


def test_detector_reports_a_child_without_report() -> None:
    outcome = forkutil.spawn_child(_exit_without_report)
    assert not outcome.ok and not outcome.hung
    assert outcome.status == "crashed" and outcome.exit_code == 3
    assert not outcome.has_report
    assert outcome.progress[-1].endswith("leaving without a report")
    with pytest.raises(pytest.fail.Exception, match="without a clean report"):
        outcome.require()
