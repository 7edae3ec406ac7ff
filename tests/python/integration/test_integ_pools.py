"""Worker pools from the standard library, created by a process that already uses forksafe.

multiprocessing.Pool and concurrent.futures.ProcessPoolExecutor with the fork context inherit the
test process's live runtime, loop and fork-local client; the forkserver context forks its workers
from a freshly exec'd server that preloads a module using forksafe, so they inherit the
server's live state instead. 100 tasks each; every result is checked.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import multiprocessing.forkserver
import multiprocessing.resource_tracker
import os
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any, Callable

import integ_support
import pytest

TASKS = 100
WORKERS = 2
RESULT_DEADLINE = 60.0
SHUTDOWN_DEADLINE = 30.0


def _tasks() -> Any:
    """The tasks module, imported on first use (importing it uses forksafe in this process,
    which must not happen at collection time, under other tests)."""
    return integ_support.app("forksafe_pool_tasks")


def _values(tag: str) -> list[str]:
    return [f"{tag}-{i}-{uuid.uuid4().hex[:10]}" for i in range(TASKS)]


def _warm_parent() -> dict[str, Any]:
    """Uses forksafe in the test process right before it creates a pool, and checks it."""
    report = _tasks().use_forksafe(f"parent-{uuid.uuid4().hex[:8]}")
    me = os.getpid()
    assert (report["tokio_pid"], report["client_pid"], report["echo"]) == (
        me,
        me,
        report["value"],
    ), report
    return report


def _check_all(
    results: dict[str, dict[str, Any]], values: list[str], forked_from: int, guard: str
) -> set[int]:
    assert sorted(results) == sorted(values), "results missing or duplicated"
    check = integ_support.report_problems
    bad = [(v, p) for v in values if (p := check(results[v], v, forked_from, guard))]
    assert not bad, f"{len(bad)}/{len(values)} wrong results, e.g. {bad[:3]!r}"
    workers = {r["pid"] for r in results.values()}
    for pid in workers:
        ids = {r["client_id"] for r in results.values() if r["pid"] == pid}
        assert len(ids) == 1, f"worker {pid} rebuilt its fork-local client: {ids}"
    assert 1 <= len(workers) <= WORKERS, workers
    return workers


def _bounded(action: Callable[[], Any], what: str, before: set[int]) -> None:
    """Runs ``action`` (a pool shutdown) with a deadline; on expiry kills the pool's processes
    and fails the test."""
    thread = threading.Thread(target=action, name=f"bounded {what}", daemon=True)
    thread.start()
    thread.join(SHUTDOWN_DEADLINE)
    if thread.is_alive():
        left = integ_support.live_descendants(os.getpid()) - before
        text = integ_support.describe(left)
        integ_support.kill_all(left)
        thread.join(10)
        pytest.fail(f"{what} did not finish within {SHUTDOWN_DEADLINE:.0f} s; killed:\n{text}")


def _run_pool(ctx: Any, values: list[str], before: set[int]) -> dict[str, dict[str, Any]]:
    """multiprocessing.Pool: 100 tasks, each result awaited with the deadline."""
    pool = ctx.Pool(WORKERS)
    ok = False
    results: dict[str, dict[str, Any]] = {}
    try:
        deadline = time.monotonic() + RESULT_DEADLINE
        it = pool.imap_unordered(_tasks().use_forksafe, values)
        for _ in values:
            try:
                result = it.next(timeout=max(0.0, deadline - time.monotonic()))
            except multiprocessing.TimeoutError:
                missing = sorted(set(values) - set(results))
                live = integ_support.live_descendants(os.getpid()) - before
                pytest.fail(
                    f"pool hung: {len(results)}/{len(values)} results after "
                    f"{RESULT_DEADLINE:.0f} s; missing e.g. {missing[:3]}; live workers:\n"
                    + integ_support.describe(live),
                    pytrace=False,
                )
            results[result["value"]] = result
        ok = True
    finally:
        _bounded(pool.close if ok else pool.terminate, "Pool.close/terminate", before)
        _bounded(pool.join, "Pool.join", before)
    return results


@pytest.mark.timeout(120)
def test_multiprocessing_pool_fork() -> None:
    parent = _warm_parent()
    me = os.getpid()
    before = integ_support.live_descendants(me)
    values = _values("mp_fork")
    results = _run_pool(multiprocessing.get_context("fork"), values, before)
    workers = _check_all(results, values, me, parent["guard"])
    assert not {r["client_id"] for r in results.values()} & {parent["client_id"]}
    # The parent never notices: its own runtime, loop and client still work, unchanged.
    again = _warm_parent()
    assert again["client_id"] == parent["client_id"] and again["runtimes_built"] == 1
    print(f"mp fork pool: {TASKS} tasks on workers {sorted(workers)}")


@pytest.mark.timeout(120)
def test_process_pool_executor_fork() -> None:
    parent = _warm_parent()
    me = os.getpid()
    before = integ_support.live_descendants(me)
    values = _values("ppe-fork")
    executor = concurrent.futures.ProcessPoolExecutor(
        max_workers=WORKERS, mp_context=multiprocessing.get_context("fork")
    )
    ok = False
    try:
        futures = {executor.submit(_tasks().use_forksafe, v): v for v in values}
        done, not_done = concurrent.futures.wait(futures, timeout=RESULT_DEADLINE)
        if not_done:
            live = integ_support.live_descendants(me) - before
            pytest.fail(
                f"executor hung: {len(done)}/{len(values)} done after {RESULT_DEADLINE:.0f} s; "
                f"live workers:\n" + integ_support.describe(live),
                pytrace=False,
            )
        results = {futures[f]: f.result(timeout=0) for f in done}
        ok = True
    finally:
        if ok:
            _bounded(lambda: executor.shutdown(wait=True), "executor shutdown", before)
        else:
            executor.shutdown(wait=False, cancel_futures=True)
            integ_support.kill_all(integ_support.live_descendants(me) - before)
    workers = _check_all(results, values, me, parent["guard"])
    again = _warm_parent()
    assert again["client_id"] == parent["client_id"] and again["runtimes_built"] == 1
    print(f"ProcessPoolExecutor fork: {TASKS} tasks on workers {sorted(workers)}")


def _stop_forkserver(before: set[int]) -> None:
    # multiprocessing keeps one forkserver per process and has no public way to stop it;
    # ForkServer._stop() is what CPython's own tests use (present in 3.8 through 3.14).
    server = multiprocessing.forkserver._forkserver  # type: ignore[attr-defined]
    _bounded(server._stop, "stopping the forkserver", before)


@pytest.fixture
def fresh_forkserver(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A forkserver started by this test, preloading the tasks module (which uses forksafe at
    import), so its workers fork from a process with live forksafe threads. Stopped afterwards."""
    before = integ_support.live_descendants(os.getpid())
    _stop_forkserver(before)  # one left running by an earlier test would not preload
    # The forkserver is a fresh interpreter (exec): it finds the preloaded module on PYTHONPATH.
    monkeypatch.setenv("PYTHONPATH", integ_support.subprocess_env()["PYTHONPATH"])
    # CPython >= 3.13's forkserver replaces its path with this process's before it preloads (and
    # ignores a preload that fails to import): the apps directory must be on it, for this test.
    monkeypatch.syspath_prepend(str(integ_support.APPS))
    ctx = multiprocessing.get_context("forkserver")
    server = multiprocessing.forkserver._forkserver  # type: ignore[attr-defined]
    saved = list(getattr(server, "_preload_modules", ["__main__"]))
    ctx.set_forkserver_preload(["forksafe_pool_tasks"])
    try:
        yield ctx
    finally:
        _stop_forkserver(before)
        ctx.set_forkserver_preload(saved)
        # Starting the forkserver also started multiprocessing's resource tracker (another
        # per-process helper): stop it too if this test started it.
        tracker = multiprocessing.resource_tracker._resource_tracker  # type: ignore[attr-defined]
        if getattr(tracker, "_pid", None) not in (None, *before):
            _bounded(tracker._stop, "stopping the resource tracker", before)


@pytest.mark.timeout(120)
def test_forkserver_pool(fresh_forkserver: Any) -> None:
    parent = _warm_parent()  # the test process uses forksafe too; the forkserver shares nothing
    me = os.getpid()
    before = integ_support.live_descendants(me)
    values = _values("forkserver")
    results = _run_pool(fresh_forkserver, values, before)
    servers = {r["ppid"] for r in results.values()}
    assert len(servers) == 1, f"workers have several parents: {servers}"
    server = servers.pop()
    assert server != me, "forkserver workers are not the forkserver's children"
    workers = _check_all(results, values, server, parent["guard"])
    for r in results.values():
        # exec'd fresh: nothing of the test process is in the forkserver's lineage
        assert all(pid != me for pid, _ in r["inherited_runtimes"]), r
    again = _warm_parent()
    assert again["client_id"] == parent["client_id"] and again["runtimes_built"] == 1
    print(f"forkserver {server}: {TASKS} tasks on workers {sorted(workers)}")
