"""A bridged result that arrives after its loop closed must not keep that loop alive.

Each loop is closed with bridged futures still in flight (a tokio timer, and an echo whose
result may already sit undrained in the queue). Their results reach a queue whose loop is gone:
they must be dropped (attached), and every loop must become collectable. Runs in a forked child
under the hang detector, on both wake-ups (a pipe the loop watches, and ``call_soon_threadsafe``
for a loop that cannot watch one), with and without the GIL (scripts/test free-threaded runs this
file on 3.13t).
"""

from __future__ import annotations

import asyncio
import gc
import time
import weakref
from typing import Any, Callable

import forksafe
import forkutil
import pytest

LOOPS = 1000
SETTLE = 30.0
"""How long the child waits for the in-flight tasks to finish and their loops to be freed. Paid
only by a failure: with the fix the last loop is freed within milliseconds."""


class NoReaderLoop(asyncio.SelectorEventLoop):
    """A loop that cannot watch file descriptors: the bridge wakes it with
    ``call_soon_threadsafe`` (as on Windows' ``ProactorEventLoop``)."""

    def add_reader(self, fd: Any, callback: Callable[..., Any], *args: Any) -> None:
        raise NotImplementedError("this loop cannot watch file descriptors")


KINDS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "pipe": asyncio.SelectorEventLoop,
    "call_soon_threadsafe": NoReaderLoop,
}


async def _start_in_flight(v: str) -> list[Any]:
    """Bridged futures this loop will be closed under, and one awaited so the bridge is set up."""
    assert await forksafe.testing.echo(v) == v
    return [forksafe.testing.sleep(0.002, v), forksafe.testing.echo(v)]


async def _echo(v: str) -> Any:
    return await forksafe.testing.echo(v)


def _close_loops_in_flight(kind: str, v: str) -> dict[str, Any]:
    make = KINDS[kind]
    refs: list[weakref.ref[asyncio.AbstractEventLoop]] = []
    for i in range(LOOPS):
        event_loop = make()
        try:
            in_flight = event_loop.run_until_complete(_start_in_flight(f"{v}-{i}"))
        finally:
            event_loop.close()
        refs.append(weakref.ref(event_loop))
        del event_loop, in_flight
        if i % 250 == 0:
            forkutil.progress(f"{kind}: loop {i}")
    # The in-flight tasks hold their loops until they finish and hand their results back.
    expires = time.monotonic() + SETTLE
    alive = LOOPS
    while True:
        gc.collect()
        alive = sum(ref() is not None for ref in refs)
        if alive == 0 or time.monotonic() > expires:
            forkutil.progress(f"{kind}: {alive} loops alive")
            break
        time.sleep(0.01)
    # The bridge still works afterwards, on a loop of the same kind.
    check = make()
    try:
        last = check.run_until_complete(_echo(v))
    finally:
        check.close()
    return {"alive": alive, "last": last}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_closed_loops_with_results_in_flight_are_freed(
    kind: str, parent_report: dict[str, Any]
) -> None:
    v = forkutil.new_value(f"leak-{kind}")
    out = forkutil.run_child(_close_loops_in_flight, kind, v, deadline=SETTLE + 60)
    assert out["alive"] == 0, f"{out['alive']} of {LOOPS} closed loops still alive"
    assert out["last"] == v, out
    forkutil.exercise_parent()
