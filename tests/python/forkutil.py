"""The fork suite's pytest adapter over the engine's hang detector, and the work every child does.

The forking, the fork paths and the child's wire format are the engine's
(``forksafe._cli.engine``: :mod:`~forksafe._cli.engine.calls` over ``paths.ROWS`` and
``events``). ``spawn_child(fn, *args, path=...)`` runs ``fn`` in a child started by one of
:data:`PATHS` (every row of ``paths.ROWS`` that forks) and waits for it with a deadline: at the
deadline the child's stacks are dumped and it is killed. ``ChildOutcome.require()`` turns a
hang, an error or a missing report into ``pytest.fail`` with everything the child wrote.

``exercise(v)`` is the work every child does (both layers: the background loop with native
awaitables, the sync native path, a fork-local value); ``check(report, v)`` verifies its report
against ``v`` and against the state of the process that forked it (or, for nested forks, against
the report of the generation above: ``check(report, v, parent)``).
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import threading
import time
import uuid
from typing import Any, Callable

import forksafe
import pytest
from forksafe._cli.engine import calls

CHILD_DEADLINE = calls.CHILD_DEADLINE
"""Seconds a forked child gets before the detector kills it and fails the test."""

PATHS = calls.PATHS
"""The fork paths, one per row of the engine's ``paths.ROWS`` that forks (``os_fork``,
``c_fork``, ``raw_syscall``, ...): parametrize over these, never over a list of your own."""

progress = calls.progress
set_progress_sink = calls.set_progress_sink


class ChildOutcome(calls.ChildOutcome):
    """What a forked child did (the engine's), with the pytest verdict."""

    def require(self) -> Any:
        """The child's report; ``pytest.fail`` on a hang, an error or a missing report."""
        if not self.ok:
            pytest.fail(self.describe(), pytrace=False)
        return self.report


def spawn_child(
    fn: Callable[..., Any],
    *args: Any,
    path: str = calls.DEFAULT_PATH,
    deadline: float = CHILD_DEADLINE,
) -> ChildOutcome:
    """Forks by ``path``, runs ``fn(*args)`` in the child, waits at most ``deadline`` s.

    Never raises for what the child did: a hang, an error or a crash is in the outcome.
    """
    return calls.spawn(fn, *args, path=path, deadline=deadline, kind=ChildOutcome)[0]


def run_child(
    fn: Callable[..., Any],
    *args: Any,
    path: str = calls.DEFAULT_PATH,
    deadline: float = CHILD_DEADLINE,
) -> Any:
    """``spawn_child(...).require()``: the child's report, or the test fails."""
    return spawn_child(fn, *args, path=path, deadline=deadline).require()


def run_children(
    count: int,
    fn: Callable[..., Any],
    *args: Any,
    path: str = calls.DEFAULT_PATH,
    deadline: float = CHILD_DEADLINE,
    together: bool = True,
) -> list[ChildOutcome]:
    """Forks ``count`` children at once; child ``i`` runs ``fn(i, *args)``. With ``together``
    each waits until all are forked, so their work overlaps. Returns their outcomes in order
    (each has ``report`` and ``pid``), or fails the test with every failed child's last words."""
    outcomes = calls.spawn(
        fn, *args, path=path, count=count, indexed=True, together=together,
        deadline=deadline, kind=ChildOutcome,
    )  # fmt: skip
    problems = calls.failures(outcomes)
    if problems:
        pytest.fail(problems, pytrace=False)
    return outcomes


# --------------------------------------------------------------------------------------------
# The work every child does, and its check
# --------------------------------------------------------------------------------------------


def _make_client() -> tuple[str, int]:
    return ("client", os.getpid())


CLIENT = forksafe.fork_local(_make_client)
"""A per-process "client": the parent builds its own first, every child must build a new one."""


def new_value(tag: str) -> str:
    """A value unique to one child (or one parent check)."""
    return f"{tag}-{uuid.uuid4().hex[:12]}"


async def probe(v: Any) -> tuple[Any, Any, int]:
    """Native awaitables through this process's runtime, awaited on this process's loop."""
    echoed = await forksafe.testing.echo(v)
    slept = await forksafe.testing.sleep(0.01, v)
    worker_pid = await forksafe.testing.pid()
    return echoed, slept, worker_pid


def exercise(v: Any) -> dict[str, Any]:
    """Both layers, with progress lines; returns a JSON-able report for ``check``."""
    progress(f"exercise({v!r}): forksafe.run(probe)")
    echoed, slept, worker_pid = forksafe.run(probe(v))
    progress("exercise: forksafe.testing.echo_sync")
    echoed_sync = forksafe.testing.echo_sync(v)
    progress("exercise: fork_local")
    client = CLIENT.get()
    progress("exercise: runtime_info")
    report = {
        "v": v,
        "pid": os.getpid(),
        "echo": echoed,
        "sleep": slept,
        "worker_pid": worker_pid,
        "echo_sync": echoed_sync,
        "fork_local": list(client),
        "loop_id": id(forksafe.LOOP.loop),
        "info": forksafe.runtime_info(),
    }
    progress("exercise: done")
    # Tuples become lists: the same shape whether it crossed a pipe as JSON or a pickle.
    return json.loads(json.dumps(report))


def check_values(report: dict[str, Any], v: Any) -> None:
    """The values a process computed with ``exercise(v)`` are right for that process."""
    assert isinstance(report, dict), f"not a report: {report!r}"
    pid = report["pid"]
    assert report["v"] == v, report
    assert report["echo"] == v, f"forksafe.run(echo) returned {report['echo']!r}, not {v!r}"
    assert report["sleep"] == v, f"awaited sleep returned {report['sleep']!r}, not {v!r}"
    assert report["echo_sync"] == v, f"echo_sync returned {report['echo_sync']!r}, not {v!r}"
    assert report["worker_pid"] == pid, (
        f"a tokio worker of process {pid} saw PID {report['worker_pid']}"
    )
    assert report["fork_local"] == ["client", pid], (
        f"process {pid} got fork_local value {report['fork_local']!r}"
    )
    info = report["info"]
    assert info["pid"] == pid, info
    assert info["runtimes_built"] == 1, info
    assert info["guard"] in ("wipeonfork", "syscall"), info


def snapshot() -> dict[str, Any]:
    """The calling process's own state, in the shape of an ``exercise`` report (no probes)."""
    return json.loads(
        json.dumps(
            {
                "pid": os.getpid(),
                "fork_local": list(CLIENT.get()),
                "loop_id": id(forksafe.LOOP.loop),
                "info": forksafe.runtime_info(),
            }
        )
    )


def check(report: dict[str, Any], v: Any, parent: dict[str, Any] | None = None) -> None:
    """Verifies a child's ``exercise(v)`` report against ``v`` and its parent's own report.

    ``parent`` defaults to the calling process (which must have built its state before the
    fork, as the ``parent_report`` fixture does); nested tests pass the generation above.
    """
    if parent is None:
        parent = snapshot()
    check_values(report, v)
    pid = report["pid"]
    assert pid != parent["pid"], f"the child reported its parent's PID {pid}"
    # The parent built its own client earlier; the child must not have reused it.
    assert parent["fork_local"] == ["client", parent["pid"]], parent
    assert report["fork_local"] != parent["fork_local"], report
    # A new loop object in the child (the parent's stays alive in the child's memory, leaked).
    assert report["loop_id"] != parent["loop_id"], "the child reused its parent's loop"
    info, parent_info = report["info"], parent["info"]
    assert info["loops_built"] == 1, f"child {pid} started {info['loops_built']} loops"
    assert info["depth"] == parent_info["depth"] + 1, (info, parent_info)
    expected_inherited = [[parent["pid"], 1]] + [
        [ancestor, back + 1] for ancestor, back in parent_info["inherited_runtimes"]
    ]
    assert info["inherited_runtimes"] == expected_inherited, (info, parent_info)
    assert info["guard"] == parent_info["guard"], (info, parent_info)
    assert info["guard_reason"] == parent_info["guard_reason"], (info, parent_info)


def check_parent(report: dict[str, Any], v: Any) -> None:
    """Verifies ``exercise(v)`` run in the calling process itself."""
    check_values(report, v)
    assert report["pid"] == os.getpid(), report
    assert report["info"]["loops_built"] >= 1, report


def exercise_parent() -> dict[str, Any]:
    """Runs ``exercise`` in this process (building its runtime, loop and client), checked."""
    v = new_value("parent")
    report = exercise(v)
    check_parent(report, v)
    return report


# --------------------------------------------------------------------------------------------
# Before a raw fork system call
# --------------------------------------------------------------------------------------------


def quiesce() -> None:
    """Lets every other thread of this process go idle before a raw ``clone``.

    A raw fork skips glibc's fork handlers (malloc's arena locks are not reset), so no other
    thread may be doing anything at that instant. Python threads other than the caller must be
    gone; forksafe's loop thread and tokio workers must be parked.
    """
    me = threading.current_thread()
    # A dummy thread is a thread Python did not start (a tokio worker or forksafe's relay that
    # called into Python): it cannot be joined, and it parks on its own below.
    others = [t for t in threading.enumerate() if t is not me]
    for thread in others:
        if not isinstance(thread, threading._DummyThread):
            thread.join(timeout=10)
    busy = [t.name for t in others if t.is_alive() and not isinstance(t, threading._DummyThread)]
    if busy:
        pytest.fail(f"cannot quiesce before a raw fork: Python threads still running: {busy}")
    # One round trip through the loop and the runtime, then let both park.
    assert forksafe.run(asyncio.sleep(0, "idle")) == "idle"
    assert forksafe.testing.echo_sync("idle") == "idle"
    gc.collect()
    time.sleep(0.3)
