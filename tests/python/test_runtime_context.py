"""Forks from inside tokio's runtime context: the child's thread still carries tokio's
``CONTEXT`` thread-local, which says it is inside the parent's runtime.

* Python code that a ``block_on`` future runs on the calling thread forks there
  (``call_in_block_on``): the child's thread is "entered" in the parent's runtime.
* Python code that a bridged task runs on a tokio worker forks there (``call_on_worker``): the
  child's only thread is one of the parent's workers, with the parent's scheduler in its context.

Each child must get working results from its own runtime: the synchronous probe (``block_on``),
the awaitable ones on a new loop, and a PID seen by a task of its own runtime; never tokio's
"Cannot start a runtime from within a runtime" panic, never the parent's runtime. Both guard
modes (run again with ``FORKSAFE_PID_CHECK=syscall``), with and without the GIL.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any, Callable

import forksafe
import forkutil
import pytest
from forksafe import _native

pytestmark = pytest.mark.skipif(
    not _native.CONTROL_PROBE, reason="needs the test wheel (--features control-probe)"
)


def _probe(name: str) -> Callable[..., Any]:
    probe: Callable[..., Any] = getattr(_native.testing, name)
    return probe


async def _awaitables(v: str) -> dict[str, Any]:
    return {
        "echo": await forksafe.testing.echo(v),
        "sleep": await forksafe.testing.sleep(0.001, v),
        "task_pid": await forksafe.testing.pid(),
    }


def _child_work(v: str) -> dict[str, Any]:
    """In the child, on the thread that forked inside the runtime context."""
    report: dict[str, Any] = {"os_pid": os.getpid()}
    report["echo_sync"] = forksafe.testing.echo_sync(v)
    event_loop = asyncio.new_event_loop()
    try:
        report.update(event_loop.run_until_complete(_awaitables(v)))
    finally:
        event_loop.close()
    # Again: the first call built the child's runtime; the second must find it.
    report["echo_sync_again"] = forksafe.testing.echo_sync(v)
    report["runtime_pid"] = forksafe.runtime_info()["pid"]
    return report


def _fork_here(path: str, v: str) -> dict[str, Any]:
    """Called by the probe inside the runtime context: forks there and waits for the child."""
    outcome = forkutil.spawn_child(_child_work, v, path=path)
    return {"forker_pid": os.getpid(), "child": outcome.require()}


def _check(out: dict[str, Any], v: str) -> None:
    child = out["child"]
    assert out["forker_pid"] == os.getpid(), out
    assert child["os_pid"] != os.getpid(), child
    for key in ("echo_sync", "echo_sync_again", "echo", "sleep"):
        assert child[key] == v, (key, child)
    # A task of the child's own runtime saw the child's PID, and the runtime is the child's.
    assert child["task_pid"] == child["os_pid"], child
    assert child["runtime_pid"] == child["os_pid"], child


@pytest.mark.parametrize("path", forkutil.PATHS)
def test_fork_inside_block_on(path: str, parent_report: dict[str, Any]) -> None:
    v = forkutil.new_value("in-block-on")
    out = _probe("call_in_block_on")(lambda: _fork_here(path, v))
    _check(out, v)
    forkutil.exercise_parent()


@pytest.mark.parametrize("path", forkutil.PATHS)
def test_fork_on_a_tokio_worker(path: str, parent_report: dict[str, Any]) -> None:
    v = forkutil.new_value("on-worker")

    async def main() -> Any:
        return await _probe("call_on_worker")(lambda: _fork_here(path, v))

    out = forksafe.run(main())
    _check(out, v)
    forkutil.exercise_parent()
