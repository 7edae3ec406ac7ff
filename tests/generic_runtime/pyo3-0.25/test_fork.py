"""pyo3 0.25 + pyo3-async-runtimes 0.25 through ``forksafe::generic_runtime!``, on every fork path.

Before any fork the parent uses both paths: the async one (``generic::future_into_py`` and
``generic::into_future``, which reads the task locals) and the sync one (``forksafe::block_on``).
Each child then awaits and calls again, and must return the right values (its own PID in them)
within the deadline of the hang detector (tests/python/forkutil.py: deadline, SIGKILL, failure
with the child's last words). ``test_control.py`` runs these same cases against the control build
and asserts that they hang.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import threading
import time
import traceback
from typing import Any, Callable

import forkutil
import pytest
from forksafe_pyo3_025 import CONTROL, echo_async, echo_sync, roundtrip

DEADLINE = float(os.environ.get("GEN025_CHILD_DEADLINE", forkutil.CHILD_DEADLINE))
"""Seconds a child gets (a working child needs well under one; the control run sets fewer)."""

MP_FORK = multiprocessing.get_context("fork")


def use_both_paths(tag: str) -> dict[str, Any]:
    """What every process does: the async path twice (once through the task locals), then sync."""
    forkutil.progress(f"{tag}: async echo")

    async def main() -> tuple[str, list[Any]]:
        first = await echo_async(f"{tag}-a")
        both = await roundtrip(asyncio.sleep(0.001, result=f"{tag}-py"), f"{tag}-r")
        return first, list(both)

    first, both = asyncio.run(main())
    forkutil.progress(f"{tag}: sync echo")
    sync = echo_sync(f"{tag}-s")
    forkutil.progress(f"{tag}: done")
    return {"pid": os.getpid(), "async": first, "roundtrip": both, "sync": sync}


def check(report: dict[str, Any], tag: str, pid: int | None = None) -> None:
    pid = report["pid"] if pid is None else pid
    assert report["pid"] == pid
    assert report["async"] == f"{tag}-a@{pid}"
    assert report["roundtrip"] == [f"{tag}-py", f"{tag}-r@{pid}"]
    assert report["sync"] == f"{tag}-s@{pid}"


@pytest.fixture(scope="module", autouse=True)
def parent_used_both_paths() -> None:
    """The parent's runtime (and, in the control, pyo3-async-runtimes' global one) is live."""
    check(use_both_paths("parent"), "parent", os.getpid())


class MpOutcome:
    """A multiprocessing child's outcome, shaped like forkutil.ChildOutcome."""

    def __init__(self, pid: int, hung: bool, report: Any, error: str | None, words: list[str]):
        self.pid, self.hung, self.report, self.error, self.words = pid, hung, report, error, words

    @property
    def ok(self) -> bool:
        return not self.hung and self.error is None and self.report is not None

    def describe(self) -> str:
        words = "\n".join(self.words) or "(nothing)"
        if self.hung:
            return (
                f"child hung: multiprocessing child {self.pid} sent no report within "
                f"{DEADLINE:.0f} s and was killed with SIGKILL; last words:\n{words}"
            )
        return (
            f"child raised: multiprocessing child {self.pid}:\n{self.error}\nlast words:\n{words}"
        )

    def require(self) -> Any:
        if not self.ok:
            pytest.fail(self.describe(), pytrace=False)
        return self.report


def _mp_target(conn: Any, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
    forkutil.set_progress_sink(lambda line: conn.send(("progress", line)))
    try:
        conn.send(("report", fn(*args)))
    except BaseException:
        conn.send(("error", traceback.format_exc()))
    finally:
        conn.close()


def spawn_mp(fn: Callable[..., Any], *args: Any) -> MpOutcome:
    receiver, sender = MP_FORK.Pipe(duplex=False)
    process = MP_FORK.Process(target=_mp_target, args=(sender, fn, args))
    process.start()
    sender.close()
    words: list[str] = []
    report: Any = None
    error: str | None = None
    expires = time.monotonic() + DEADLINE
    try:
        while report is None and error is None:
            remaining = expires - time.monotonic()
            if remaining <= 0 or not receiver.poll(remaining):
                break
            try:
                kind, payload = receiver.recv()
            except EOFError:
                error = "the child closed its pipe without a report"
                break
            if kind == "progress":
                words.append(payload)
            elif kind == "report":
                report = payload
            else:
                error = payload
        process.join(timeout=max(0.0, expires - time.monotonic()) + 1)
    finally:
        receiver.close()
    hung = process.is_alive()
    if hung:
        process.kill()
        process.join()
    assert process.pid is not None
    return MpOutcome(process.pid, hung, report, error, words)


def spawn(method: str, fn: Callable[..., Any], *args: Any) -> Any:
    """A child by ``method`` (forkutil's three, or ``mp-fork``), under the hang detector."""
    if method == "mp-fork":
        return spawn_mp(fn, *args)
    return forkutil.spawn_child(fn, *args, method=method, deadline=DEADLINE)


@pytest.mark.parametrize("method", [*forkutil.METHODS, "mp-fork"])
def test_child_awaits_and_calls_again(method: str) -> None:
    tag = f"child-{method}"
    report = spawn(method, use_both_paths, tag).require()
    check(report, tag)
    assert report["pid"] != os.getpid()


def test_fork_from_a_thread() -> None:
    """The forking thread is not the main thread (nor the thread that built the runtime)."""
    outcome: list[Any] = []

    def fork_here() -> None:
        outcome.append(spawn("os.fork", use_both_paths, "from-thread"))

    thread = threading.Thread(target=fork_here, name="forker")
    thread.start()
    thread.join(DEADLINE + 10)
    assert outcome, "the forking thread did not return"
    check(outcome[0].require(), "from-thread")


def _nested(depth: int, method: str) -> dict[str, Any]:
    mine = use_both_paths(f"depth{depth}")
    below = None
    if depth < 3:
        below = forkutil.spawn_child(_nested, depth + 1, method, method=method, deadline=DEADLINE)
        below = below.summary()
    return {"mine": mine, "below": below}


@pytest.mark.parametrize("method", ["os.fork", "c-fork"])
def test_nested_forks_three_deep(method: str) -> None:
    """Each generation uses both paths, then forks the next: three deep."""
    report = spawn(method, _nested, 1, method).require()
    for depth in (1, 2, 3):
        check(report["mine"], f"depth{depth}")
        if depth < 3:
            below = report["below"]
            assert below["ok"], below["description"]
            report = below["report"]
    assert report["below"] is None


def test_parent_still_works_after_the_forks() -> None:
    check(use_both_paths("parent-after"), "parent-after", os.getpid())


def test_build() -> None:
    assert not CONTROL or os.environ.get("GEN025_CONTROL_RUN") == "1", (
        "the control build is installed where the real one should be"
    )
