"""The fork engine in this process: every child is killed, reaped and its pipe closed, whether
it hangs or the caller stops early."""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import pytest
from forksafe._cli import engine


class _Hang(engine.Work):
    """In-process engine test: every child hangs."""

    def run(self, value: int) -> dict[str, Any]:
        threading.Event().wait()
        return {"ok": True}


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def _assert_gone(outcomes: list[engine.Outcome]) -> None:
    """Every process of these launches was reaped (children) or no longer exists."""
    for outcome in outcomes:
        for process in outcome.processes:
            if process.generation == 1:
                with pytest.raises(ChildProcessError):
                    os.waitpid(process.pid, os.WNOHANG)  # already reaped: no zombie left
            assert not os.path.exists(f"/proc/{process.pid}"), process


def test_the_engine_kills_reaps_and_closes_everything() -> None:
    jobs = ["os_fork", "mp_fork", "c_fork", "thread_fork", "nested"]
    before = _open_fds()
    outcomes = list(engine.run_forks(_Hang(), jobs, concurrency=len(jobs), depth=2, deadline=1))
    assert sorted(o.path for o in outcomes) == sorted(jobs)
    for outcome in outcomes:
        assert outcome.status == "hung", outcome
        assert outcome.culprit is not None and " in run" in outcome.culprit.stack, outcome
    assert _open_fds() == before, "the engine left file descriptors open"
    _assert_gone(outcomes)


class _Stop(Exception):
    pass


def test_stopping_the_engine_early_kills_the_children_in_flight() -> None:
    before = _open_fds()
    launched: list[int] = []

    def stop() -> None:  # the first tick comes once every child is running
        launched.extend(int(fd) for fd in _open_fds() - before)
        raise _Stop

    started = time.monotonic()
    with pytest.raises(_Stop):
        list(engine.run_forks(_Hang(), ["os_fork"] * 3, concurrency=3, deadline=60, on_tick=stop))
    assert time.monotonic() - started < 30  # killed, not waited for
    assert len(launched) == 3, launched  # three pipes were open
    assert _open_fds() == before, "the engine left file descriptors open"
    with pytest.raises(ChildProcessError):
        os.waitpid(-1, os.WNOHANG)  # fork children only: none left, not even a zombie
