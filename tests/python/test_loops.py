"""Loops other than asyncio's selector loop: one whose ``add_reader`` raises, and uvloop.

A loop that cannot watch a file descriptor (Windows' ``ProactorEventLoop``, or any loop whose
``add_reader`` raises ``NotImplementedError``) gets its completions through one
``call_soon_threadsafe`` per batch instead of a pipe. These tests run on Linux, where
``NoReaderLoop`` stands in for the Proactor loop, and on uvloop (a pipe it watches itself).
"""

from __future__ import annotations

import asyncio
import gc
import os
import weakref
from typing import Any, Callable

import forksafe
import forkutil
import pytest
from forksafe import _native

AWAITS = 1000


class NoReaderLoop(asyncio.SelectorEventLoop):
    """A loop that cannot watch file descriptors; counts how it is woken from other threads."""

    def __init__(self) -> None:
        super().__init__()
        self.add_reader_calls = 0
        self.wakes = 0

    def add_reader(self, fd: Any, callback: Callable[..., Any], *args: Any) -> None:
        self.add_reader_calls += 1
        raise NotImplementedError("this loop cannot watch file descriptors")

    def call_soon_threadsafe(self, callback: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        self.wakes += 1
        return super().call_soon_threadsafe(callback, *args, **kw)


def _uvloop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError as error:
        pytest.skip(f"uvloop is not installed for this Python: {error}")
    return uvloop.new_event_loop()


LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "no-add_reader": NoReaderLoop,
    "uvloop": _uvloop,
}


class Token:
    """An object whose release (by whichever thread drops it) a weakref can observe."""


async def _scenario() -> dict[str, Any]:
    """1,000 gathered awaits, a cancelled one and a panicking one, on the running loop."""
    threads_before = len(os.listdir("/proc/self/task"))
    values = await asyncio.gather(*(_native.testing.echo(i) for i in range(AWAITS)))
    threads_after = len(os.listdir("/proc/self/task"))

    token = Token()
    released = weakref.ref(token)
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(_native.testing.sleep(30.0, token), timeout=0.05)
    del token
    # The cancelled task stops at its next poll and hands its objects back through the queue;
    # the loop drops them when it drains the batch.
    for _ in range(500):
        gc.collect()
        if released() is None:
            break
        await asyncio.sleep(0.01)

    panic_message = ""
    try:
        await _native.testing.panic("boom from a tokio task")
    except BaseException as error:  # pyo3's RustPanic derives from BaseException
        panic_message = f"{type(error).__name__}: {error}"

    after = await _native.testing.echo("still works")
    return {
        "values_ok": values == list(range(AWAITS)),
        "thread_growth": threads_after - threads_before,
        "cancelled_released": released() is None,
        "panic": panic_message,
        "after": after,
    }


async def _warm_up() -> None:
    await _native.testing.echo(None)


def _run_on(make_loop: Callable[[], asyncio.AbstractEventLoop]) -> dict[str, Any]:
    loop = make_loop()
    try:
        # Build the runtime first, so its worker threads are not counted as growth.
        loop.run_until_complete(_warm_up())
        report = loop.run_until_complete(_scenario())
        if isinstance(loop, NoReaderLoop):
            report["add_reader_calls"] = loop.add_reader_calls
            report["wakes"] = loop.wakes
        return report
    finally:
        loop.close()


def _check(report: dict[str, Any]) -> None:
    assert report["values_ok"], report
    # No thread per await: the runtime's workers were already running.
    assert report["thread_growth"] <= 0, report
    assert report["cancelled_released"], f"the cancelled task's objects never came back: {report}"
    assert report["panic"] == "RustPanic: rust future panicked: boom from a tokio task", report
    assert report["after"] == "still works", report
    if "wakes" in report:
        # The pipe was refused once, then one call_soon_threadsafe per batch, not per await.
        assert report["add_reader_calls"] == 1, report
        assert 1 <= report["wakes"] < AWAITS, report
        print(f"no-add_reader loop: {AWAITS} awaits completed in {report['wakes']} wake-ups")


@pytest.mark.parametrize("kind", LOOPS)
def test_awaits_on_loops_without_a_selector_pipe(kind: str) -> None:
    _check(_run_on(LOOPS[kind]))


def _in_child(kind: str) -> dict[str, Any]:
    return _run_on(LOOPS[kind])


@pytest.mark.parametrize("kind", LOOPS)
def test_the_same_in_a_forked_child(kind: str) -> None:
    # The parent's loop of this kind (and its completer) exists and is inherited; the child
    # builds its own.
    _check(_run_on(LOOPS[kind]))
    report = forkutil.run_child(_in_child, kind)
    _check(report)
    assert forksafe.runtime_info()["pid"] == os.getpid()
