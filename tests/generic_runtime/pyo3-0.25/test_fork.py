"""pyo3 0.25 + pyo3-async-runtimes 0.25 through ``forksafe::generic_runtime!``, on every fork path.

Before any fork the parent uses both paths: the async one (``generic::future_into_py`` and
``generic::into_future``, which reads the task locals) and the sync one (``forksafe::block_on``).
Each child then awaits and calls again, and must return the right values (its own PID in them)
within the deadline of the hang detector (forksafe's fork engine, ``forksafe._cli.engine.calls``,
the one the repository's suite uses: deadline, stack dump, SIGKILL, failure with the child's
last words), on every fork path of the engine's ``paths.ROWS`` that forks. ``test_control.py``
runs these same cases against the control build and asserts that they hang.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import pytest
from forksafe._cli.engine import calls
from forksafe_pyo3_025 import CONTROL, echo_async, echo_sync, roundtrip

DEADLINE = float(os.environ.get("GEN025_CHILD_DEADLINE", calls.CHILD_DEADLINE))
"""Seconds a child gets (a working child needs well under one; the control run sets fewer)."""


def use_both_paths(tag: str) -> dict[str, Any]:
    """What every process does: the async path twice (once through the task locals), then sync."""
    calls.progress(f"{tag}: async echo")

    async def main() -> tuple[str, list[Any]]:
        first = await echo_async(f"{tag}-a")
        both = await roundtrip(asyncio.sleep(0.001, result=f"{tag}-py"), f"{tag}-r")
        return first, list(both)

    first, both = asyncio.run(main())
    calls.progress(f"{tag}: sync echo")
    sync = echo_sync(f"{tag}-s")
    calls.progress(f"{tag}: done")
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


@pytest.mark.parametrize("path", calls.PATHS)
def test_child_awaits_and_calls_again(path: str) -> None:
    tag = f"child-{path}"
    report = calls.spawn(use_both_paths, tag, path=path, deadline=DEADLINE)[0].require()
    check(report, tag)
    assert report["pid"] != os.getpid()


def _nested(depth: int, path: str) -> dict[str, Any]:
    mine = use_both_paths(f"depth{depth}")
    below = None
    if depth < 3:
        below = calls.spawn(_nested, depth + 1, path, path=path, deadline=DEADLINE)[0].summary()
    return {"mine": mine, "below": below}


@pytest.mark.parametrize("path", ["os_fork", "c_fork"])
def test_nested_forks_three_deep(path: str) -> None:
    """Each generation uses both paths, then forks the next: three deep."""
    report = calls.spawn(_nested, 1, path, path=path, deadline=DEADLINE)[0].require()
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
