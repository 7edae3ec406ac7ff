"""API edge cases of the Python package, in the test process and in forked children."""

from __future__ import annotations

import asyncio
import inspect
import math
import os
import re
import sys
import threading
import traceback
from typing import Any

import forksafe
import forkutil
import pytest


def test_run_from_the_loop_thread_raises() -> None:
    async def nested() -> tuple[str, str]:
        inner = asyncio.sleep(0)
        try:
            forksafe.run(inner)
        except RuntimeError as error:
            return str(error), inspect.getcoroutinestate(inner)
        return "no error", inspect.getcoroutinestate(inner)

    message, state = forksafe.run(nested())
    assert "await" in message, message
    # The refused coroutine was closed, not left to warn "never awaited".
    assert state == inspect.CORO_CLOSED


def test_run_timeout_raises_and_cancels_the_task() -> None:
    cancelled = threading.Event()

    async def long_sleep() -> Any:
        try:
            return await forksafe.testing.sleep(30.0, "never")
        except asyncio.CancelledError:
            cancelled.set()
            raise

    with pytest.raises(TimeoutError):
        forksafe.run(long_sleep(), timeout=0.05)
    assert cancelled.wait(timeout=10), "the timed-out task was never cancelled"
    assert forksafe.run(forkutil.probe("after-timeout"))[0] == "after-timeout"


def test_exception_propagates_with_its_traceback() -> None:
    class Boom(Exception):
        pass

    async def failing_coroutine() -> None:
        assert await forksafe.testing.echo(1) == 1
        raise Boom("inside the coroutine")

    with pytest.raises(Boom, match="inside the coroutine") as caught:
        forksafe.run(failing_coroutine())
    assert type(caught.value) is Boom
    frames = [frame.name for frame in traceback.extract_tb(caught.value.__traceback__)]
    assert "failing_coroutine" in frames, frames


def test_fork_local_factory_error_then_success() -> None:
    calls: list[int] = []

    def factory() -> tuple[str, int]:
        calls.append(os.getpid())
        if len(calls) == 1:
            raise ConnectionError("first attempt fails")
        return ("built", len(calls))

    local = forksafe.fork_local(factory)
    assert not local.is_built()
    with pytest.raises(ConnectionError, match="first attempt fails"):
        local.get()
    assert not local.is_built()
    value = local.get()
    assert value == ("built", 2)
    assert local.get() is value
    assert local.is_built()
    assert calls == [os.getpid(), os.getpid()]


def test_fork_local_needs_a_callable() -> None:
    with pytest.raises(TypeError):
        forksafe.fork_local(42)  # type: ignore[arg-type]


@pytest.mark.parametrize("seconds", [-1, -0.5, math.nan, math.inf])
def test_sleep_rejects_bad_durations(seconds: float) -> None:
    with pytest.raises(ValueError, match="seconds"):
        forksafe.testing.sleep(seconds)

    async def inside_the_loop() -> str:
        try:
            await forksafe.testing.sleep(seconds)
        except ValueError as error:
            return str(error)
        return "no error"

    assert "seconds" in forksafe.run(inside_the_loop())


@pytest.mark.parametrize(
    "kwargs",
    [{"worker_threads": 0}, {"max_blocking_threads": 0}, {"thread_stack_size": 1024}],
    ids=lambda kwargs: next(iter(kwargs)),
)
def test_configure_rejects_invalid_values(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        forksafe.configure(**kwargs)


def test_configure_after_the_runtime_exists_raises() -> None:
    assert forksafe.testing.echo_sync("built") == "built"
    assert forksafe.runtime_info()["runtimes_built"] == 1
    with pytest.raises(RuntimeError, match="before the first use"):
        forksafe.configure(worker_threads=2)
    assert forksafe.testing.echo_sync("still") == "still"


def _configure_then_use(v: str) -> dict[str, Any]:
    before = forksafe.runtime_info()
    forksafe.configure(worker_threads=1, thread_name="fsk-child")
    report = forkutil.exercise(v)
    names = []
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/comm") as comm:
                names.append(comm.read().strip())
        except FileNotFoundError:
            pass
    late_error = None
    try:
        forksafe.configure(worker_threads=2)
    except RuntimeError as error:
        late_error = str(error)
    return {"before": before, "exercise": report, "threads": names, "late_error": late_error}


def test_a_child_configures_its_own_runtime(parent_report: dict[str, Any]) -> None:
    v = forkutil.new_value("configure")
    out = forkutil.run_child(_configure_then_use, v)
    assert out["before"]["runtimes_built"] == 0, out["before"]
    forkutil.check(out["exercise"], v, parent_report)
    # Runtime threads (workers and blocking pool) carry the child's configured name.
    assert any(re.fullmatch(r"fsk-child-\d+", name) for name in out["threads"]), out["threads"]
    assert not any(name.startswith("forksafe-") for name in out["threads"]), out["threads"]
    assert out["late_error"] is not None and "before the first use" in out["late_error"]


def test_runtime_info_shape_and_guard_mode(parent_report: dict[str, Any]) -> None:
    info = forksafe.runtime_info()
    assert set(info) == {
        "pid",
        "depth",
        "runtimes_built",
        "loops_built",
        "inherited_runtimes",
        "guard",
        "guard_reason",
        "tokio_parking_lot",
        "gil_enabled",
        "worker_threads",
        "max_blocking_threads",
    }
    assert info["worker_threads"] >= 1 and info["max_blocking_threads"] >= 1, info
    # sys._is_gil_enabled() exists from CPython 3.13; every older build has a GIL.
    assert info["gil_enabled"] is getattr(sys, "_is_gil_enabled", lambda: True)(), info
    assert info["pid"] == os.getpid()
    assert info["runtimes_built"] == 1
    assert info["loops_built"] >= 1
    assert isinstance(info["depth"], int) and info["depth"] >= 0
    assert isinstance(info["inherited_runtimes"], list)
    if os.environ.get("FORKSAFE_PID_CHECK") == "syscall":
        assert info["guard"] == "syscall", info
        assert "FORKSAFE_PID_CHECK=syscall" in info["guard_reason"], info
    else:
        assert info["guard"] == "wipeonfork", info
        assert info["guard_reason"], info


def test_run_rejects_a_negative_timeout() -> None:
    async def never() -> None:
        raise AssertionError("must not run")

    coro = never()
    with pytest.raises(ValueError, match="timeout"):
        forksafe.run(coro, timeout=-1)
    assert inspect.getcoroutinestate(coro) == inspect.CORO_CLOSED
