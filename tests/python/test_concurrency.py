"""Forks that race: many threads at a child's first access, and forks during in-flight work."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import traceback
from typing import Any

import forksafe
import forkutil
import pytest

THREADS = 16


def _sixteen_threads(v: str) -> dict[str, Any]:
    """In a fresh child: 16 threads hit forksafe's first access at once, behind a barrier."""
    barrier = threading.Barrier(THREADS)
    results: list[dict[str, Any] | None] = [None] * THREADS
    errors: list[str] = []

    def worker(i: int) -> None:
        try:
            value = f"{v}-{i}"
            barrier.wait(timeout=10)
            # Half start with the loop, half with the sync path: both first builds race.
            if i % 2:
                echoed, slept, worker_pid = forksafe.run(forkutil.probe(value))
                echoed_sync = forksafe.testing.echo_sync(value)
            else:
                echoed_sync = forksafe.testing.echo_sync(value)
                echoed, slept, worker_pid = forksafe.run(forkutil.probe(value))
            client = forkutil.CLIENT.get()
            results[i] = {
                "value": value,
                "echo": echoed,
                "sleep": slept,
                "echo_sync": echoed_sync,
                "worker_pid": worker_pid,
                "loop_id": id(forksafe.LOOP.loop),
                "client_id": id(client),
                "client": list(client),
            }
        except BaseException:
            errors.append(traceback.format_exc())

    forkutil.progress(f"starting {THREADS} threads")
    threads = [
        threading.Thread(target=worker, args=(i,), name=f"racer-{i}", daemon=True)
        for i in range(THREADS)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=15)
    stuck = [thread.name for thread in threads if thread.is_alive()]
    forkutil.progress(f"threads joined; stuck: {stuck}")
    info = forksafe.runtime_info()
    return {
        "results": results,
        "errors": errors,
        "stuck": stuck,
        "info": info,
        "exercise": forkutil.exercise(v),
    }


def test_sixteen_threads_race_in_a_fresh_child(parent_report: dict[str, Any]) -> None:
    # forksafe.LOOP was used by this process (parent_report), so the child must restart it.
    v = forkutil.new_value("race")
    out = forkutil.run_child(_sixteen_threads, v)
    assert out["errors"] == [], "\n".join(out["errors"])
    assert out["stuck"] == []
    forkutil.check(out["exercise"], v, parent_report)
    pid = out["exercise"]["pid"]
    results = out["results"]
    assert all(result is not None for result in results), results
    for i, result in enumerate(results):
        value = f"{v}-{i}"
        assert result["value"] == value
        assert result["echo"] == value
        assert result["sleep"] == value
        assert result["echo_sync"] == value
        assert result["worker_pid"] == pid
        assert result["client"] == ["client", pid]
    assert {result["loop_id"] for result in results} == {out["exercise"]["loop_id"]}
    assert len({result["client_id"] for result in results}) == 1
    info = out["info"]
    assert info["pid"] == pid
    assert info["runtimes_built"] == 1, info
    assert info["loops_built"] == 1, info
    forkutil.exercise_parent()


IN_FLIGHT = 1000


def _durations(base: float) -> list[float]:
    # Completions spread over ~0.7 s after ``base``, so forks can land while results stream in.
    return [base + (i % 100) * 0.007 for i in range(IN_FLIGHT)]


async def _many(durations: list[float], started: threading.Event) -> list[Any]:
    # Each native sleep is a tokio timer from the moment it is created.
    awaitables = [forksafe.testing.sleep(seconds, i) for i, seconds in enumerate(durations)]
    started.set()
    return await asyncio.gather(*awaitables)


@pytest.mark.parametrize("path", ["os_fork", "c_fork"])
def test_fork_with_a_thousand_awaits_in_flight(path: str, parent_report: dict[str, Any]) -> None:
    # os.fork: fork again and again while the 1,000 results stream in (tokio workers pushing
    # completions, the loop thread draining them). c_fork: once, while every await is still a
    # pending timer -- a C-level fork while the loop thread waits for the GIL would hang the
    # child whatever forksafe does (see forkutil.spawn_child).
    base = 0.1 if path == "os_fork" else 0.8
    started = threading.Event()
    future = forksafe.LOOP.submit(_many(_durations(base), started))
    assert started.wait(timeout=10), "the in-flight batch never started"
    children = []
    while not children or (path == "os_fork" and not future.done() and len(children) < 40):
        v = forkutil.new_value(f"in-flight-{path}-{len(children)}")
        children.append((v, forkutil.spawn_child(forkutil.exercise, v, path=path)))
    # The parent's batch completes with every value, whatever happened in the children.
    try:
        values = future.result(timeout=forkutil.CHILD_DEADLINE)
    except concurrent.futures.TimeoutError:
        future.cancel()
        pytest.fail("the parent's in-flight batch never completed after the fork", pytrace=False)
    assert values == list(range(IN_FLIGHT))
    for v, outcome in children:
        forkutil.check(outcome.require(), v, parent_report)
    forkutil.exercise_parent()


@pytest.mark.parametrize("path", ["os_fork", "c_fork"])
def test_fork_while_a_thread_is_blocked_in_run(path: str, parent_report: dict[str, Any]) -> None:
    late = forkutil.new_value("late")
    blocked = threading.Event()
    results: list[Any] = []

    async def slow() -> Any:
        blocked.set()
        return await forksafe.testing.sleep(1.5, late)

    def caller() -> None:
        try:
            results.append(("value", forksafe.run(slow())))
        except BaseException as error:
            results.append(("error", repr(error)))

    thread = threading.Thread(target=caller, name="blocked-in-run")
    thread.start()
    assert blocked.wait(timeout=10), "the blocked call never started"
    v = forkutil.new_value(f"blocked-{path}")
    outcome = forkutil.spawn_child(forkutil.exercise, v, path=path)
    thread.join(timeout=forkutil.CHILD_DEADLINE)
    assert not thread.is_alive(), "the parent's blocked run() never returned after the fork"
    assert results == [("value", late)]
    forkutil.check(outcome.require(), v, parent_report)
    forkutil.exercise_parent()
