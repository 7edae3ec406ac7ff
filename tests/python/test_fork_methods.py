"""A child made by each fork path works at once, with no at-fork hook anywhere.

The paths are the engine's rows (``forkutil.PATHS``: ``paths.ROWS``, each with its hint), e.g.
``os_fork`` (Python's own fork: its at-fork machinery runs, forksafe registers nothing there),
``c_fork`` (libc ``fork()`` from C: CPython never runs ``PyOS_AfterFork_Child`` or any
``os.register_at_fork`` callback) and ``raw_syscall`` (a ``clone(SIGCHLD)`` system call: not
even ``pthread_atfork`` handlers run).
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import forkutil
import pytest


@pytest.mark.parametrize("path", forkutil.PATHS)
def test_child_works_after_fork(path: str, parent_report: dict[str, Any]) -> None:
    if path == "raw_syscall":
        # No glibc fork handlers run: nothing else may be running at the instant of fork.
        forkutil.quiesce()
    v = forkutil.new_value(path)
    report = forkutil.run_child(forkutil.exercise, v, path=path)
    forkutil.check(report, v, parent_report)
    # The parent is untouched: same runtime, loop and client, still working.
    after = forkutil.exercise_parent()
    assert after["loop_id"] == parent_report["loop_id"]
    assert after["fork_local"] == parent_report["fork_local"]
    assert after["info"]["runtimes_built"] == 1
    assert after["info"]["inherited_runtimes"] == parent_report["info"]["inherited_runtimes"]


@pytest.mark.parametrize("path", ["os_fork", "c_fork"])
def test_fork_from_a_non_main_thread(path: str, parent_report: dict[str, Any]) -> None:
    v = forkutil.new_value(f"thread-{path}")
    outcomes: list[forkutil.ChildOutcome] = []
    errors: list[BaseException] = []

    def fork_here() -> None:
        try:
            outcomes.append(forkutil.spawn_child(forkutil.exercise, v, path=path))
        except BaseException as error:
            errors.append(error)

    forker = threading.Thread(target=fork_here, name="forker")
    forker.start()
    # The detector inside the thread kills a hung child after CHILD_DEADLINE.
    forker.join(timeout=forkutil.CHILD_DEADLINE + 15)
    assert not forker.is_alive(), "the forking thread itself is stuck"
    assert not errors, f"forking from a thread raised: {errors!r}"
    assert len(outcomes) == 1
    report = outcomes[0].require()
    forkutil.check(report, v, parent_report)
    forkutil.exercise_parent()


def _own_asyncio_run(v: str) -> dict[str, Any]:
    report = forkutil.exercise(v)
    forkutil.progress("asyncio.run(probe) on a loop of the child's own")
    return {"exercise": report, "own_loop": list(asyncio.run(forkutil.probe(v)))}


@pytest.mark.parametrize("path", ["os_fork", "c_fork"])
def test_child_awaits_on_its_own_asyncio_run(path: str, parent_report: dict[str, Any]) -> None:
    v = forkutil.new_value(f"asyncio-run-{path}")
    out = forkutil.run_child(_own_asyncio_run, v, path=path)
    forkutil.check(out["exercise"], v, parent_report)
    assert out["own_loop"] == [v, v, out["exercise"]["pid"]]
