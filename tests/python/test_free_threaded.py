"""What the GIL used to order for us: the bridge's completers lock, and the loop counter.

Both tests run on every build. With a GIL they guard against a regression; on a free-threaded
build (``python3.13t``, scripts/test free-threaded) they are the ones that catch the races.
"""

from __future__ import annotations

import asyncio
import gc
import sys
import threading
import time
import traceback
from typing import Any

import forksafe
import forkutil
import pytest
from forksafe import _loop


def _gil_enabled() -> bool:
    probe = getattr(sys, "_is_gil_enabled", None)
    return True if probe is None else bool(probe())


THREADS = 8
ROUNDS = 60 if _gil_enabled() else 400
"""Loops each thread makes. Without a GIL the race needs many tries: with the completers fix
reverted, 400 rounds on 3.13t hung the child in its first run (60 rounds: 0 hangs in 3 runs)."""
AWAITS = 40
STRESS_DEADLINE = 300.0
"""The stress child's deadline: a deadlock fails the test after this long, it never hangs CI.
Paid only by a failure: 400 rounds took 18 to 68 s on 3.13t on the loaded 2-core machine."""


class _Finalised:
    """Counts, per process, where loops were finalised."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.total = 0
        self.elsewhere = 0  # on a thread other than the one that made the loop
        self.inside = 0  # ... while that thread ran its own loop: inside the bridge (the race)


_FINALISED = _Finalised()


class _ReentrantLoop(asyncio.SelectorEventLoop):
    """A loop whose finaliser calls back into the bridge.

    Without a GIL, a thread scanning the bridge's completers can hold the last reference to
    another thread's loop (taken with ``upgrade()``) when its owner drops its own. If that
    reference were dropped with the completers lock held, this finaliser would run under the
    lock, re-enter the bridge (``forksafe.testing.echo`` on the running loop of that thread) and
    wait for the lock its own thread holds: a deadlock, which the hang detector turns into a
    failure. Dropped after the lock is released, it just makes one more harmless future.
    """

    def __init__(self) -> None:
        super().__init__()
        self._maker = threading.get_ident()

    def __del__(self) -> None:
        foreign = threading.get_ident() != self._maker
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            running = False  # finalised where no loop runs: nothing to re-enter
        else:
            running = True
        with _FINALISED.lock:
            _FINALISED.total += 1
            _FINALISED.elsewhere += foreign
            _FINALISED.inside += foreign and running
        if running:
            # Not awaited: the point is the bridge's bookkeeping, not the value.
            forksafe.testing.echo(None)
        super().__del__()


async def _burst(value: str) -> list[Any]:
    awaits = [forksafe.testing.echo(f"{value}-{k}") for k in range(AWAITS)]
    return list(await asyncio.gather(*awaits))


def _stress_the_bridge(v: str) -> dict[str, Any]:
    """In a fresh child: threads make, use and drop loops while another thread collects."""
    stop = threading.Event()
    errors: list[str] = []
    done = [0] * THREADS
    collections = [0]

    def collector() -> None:
        # Stop the world as often as the workers can bear: on a free-threaded build each
        # collection scans the whole heap with every other thread paused, so back to back they
        # starve the workers (a full-suite process took over 300 s). Pausing as long as the last
        # collection took keeps the world stopped about half the time.
        while not stop.is_set():
            started = time.monotonic()
            gc.collect()
            collections[0] += 1
            stop.wait(time.monotonic() - started)

    def worker(i: int) -> None:
        try:
            for r in range(ROUNDS):
                value = f"{v}-{i}-{r}"
                event_loop = _ReentrantLoop()
                try:
                    got = event_loop.run_until_complete(_burst(value))
                finally:
                    event_loop.close()
                # This thread's last reference: the loop is freed now, here or on a thread
                # that is scanning the completers at this instant.
                del event_loop
                expected = [f"{value}-{k}" for k in range(AWAITS)]
                if got != expected:
                    errors.append(f"thread {i} round {r}: {got!r} != {expected!r}")
                    return
                done[i] += 1
                if r % 20 == 0:
                    forkutil.progress(f"thread {i}: round {r}")
        except BaseException:
            errors.append(f"thread {i}:\n{traceback.format_exc()}")

    forkutil.progress(f"{THREADS} threads x {ROUNDS} loops x {AWAITS} awaits, gc.collect() looping")
    gc_thread = threading.Thread(target=collector, name="collector", daemon=True)
    gc_thread.start()
    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stop.set()
    gc_thread.join()
    # A finaliser's unawaited echo holds its loop until the echo's task ends: wait for those
    # (bounded; a loop still alive after this fails the test).
    expires = time.monotonic() + 30.0
    gc.collect()
    while _FINALISED.total < THREADS * ROUNDS and time.monotonic() < expires:
        time.sleep(0.01)
        gc.collect()
    forkutil.progress("all threads joined")
    # The bridge still works on a loop of the main thread after all that.
    check = asyncio.new_event_loop()
    try:
        last = check.run_until_complete(_burst(v))
    finally:
        check.close()
    return {
        "errors": errors,
        "done": done,
        "collections": collections[0],
        "finalised": _FINALISED.total,
        "finalised_elsewhere": _FINALISED.elsewhere,
        "finalised_inside": _FINALISED.inside,
        "last": last,
        "gil": _gil_enabled(),
    }


# pytest-timeout's limit (300 s in pyproject.toml) must exceed the child's deadline, or it would
# kill the test before the hang detector reports the child's last words and threads.
@pytest.mark.timeout(STRESS_DEADLINE + 60)
def test_loops_dying_while_other_threads_scan_the_bridge(parent_report: dict[str, Any]) -> None:
    v = forkutil.new_value("bridge")
    out = forkutil.run_child(_stress_the_bridge, v, deadline=STRESS_DEADLINE)
    assert out["errors"] == [], "\n".join(out["errors"])
    assert out["done"] == [ROUNDS] * THREADS, out
    assert out["last"] == [f"{v}-{k}" for k in range(AWAITS)], out
    assert out["collections"] > 0, out
    # Every loop made was finalised, including those a finaliser's unawaited echo was left on:
    # a result that arrives after its loop closed is dropped, and the loop freed (issue 24).
    assert out["finalised"] == THREADS * ROUNDS, out
    print(
        f"GIL {'enabled' if out['gil'] else 'disabled'}: {THREADS * ROUNDS} loops, "
        f"{out['finalised_elsewhere']} finalised on a thread other than their maker's, "
        f"{out['finalised_inside']} of them inside another loop's bridge call, "
        f"{out['collections']} gc.collect() calls"
    )
    forkutil.exercise_parent()


LOOP_THREADS = 16


def _start_loops_at_once() -> dict[str, Any]:
    """In a fresh child: 16 threads each start their own BackgroundEventLoop at one instant."""
    before = _loop.loops_built()
    barrier = threading.Barrier(LOOP_THREADS)
    errors: list[str] = []
    loops: list[forksafe.BackgroundEventLoop] = []

    def start(i: int) -> None:
        try:
            barrier.wait(timeout=10)
            loops[i].loop  # noqa: B018 -- starts that instance's loop and thread
        except BaseException:
            errors.append(traceback.format_exc())

    rounds = 10
    for _ in range(rounds):
        loops = [forksafe.BackgroundEventLoop(f"counted-{i}") for i in range(LOOP_THREADS)]
        threads = [threading.Thread(target=start, args=(i,)) for i in range(LOOP_THREADS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    return {
        "before": before,
        "after": _loop.loops_built(),
        "started": rounds * LOOP_THREADS,
        "errors": errors,
    }


def test_every_loop_started_at_once_is_counted(parent_report: dict[str, Any]) -> None:
    out = forkutil.run_child(_start_loops_at_once)
    assert out["errors"] == [], "\n".join(out["errors"])
    assert out["before"] == 0, out
    assert out["after"] - out["before"] == out["started"], out
    forkutil.exercise_parent()
