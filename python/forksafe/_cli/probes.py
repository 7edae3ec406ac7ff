"""forksafe's own probes, the work of ``stress`` and ``doctor``: async work through both layers
(the tokio runtime and the background loop) and a fork-local value, checked against the PID of
the process that runs them."""

from __future__ import annotations

import json
import os
import time
from typing import Any

import forksafe
from forksafe import testing

from .engine import Work

# The child's per-process client: proves fork_local rebuilds (its value carries the builder's PID).
_CLIENT = forksafe.fork_local(lambda: ("client", os.getpid()))


def warm_up() -> None:
    """Uses every layer in this process, so that children inherit live state to recover from."""
    check_layers(0)


def check_layers(value: int) -> dict[str, Any]:
    """Runs async work through both layers; returns what was seen and when the first result came."""

    async def first() -> int:
        return await testing.echo(value)

    async def more() -> tuple[int | None, int]:
        return await testing.sleep(0.001, value), await testing.pid()

    echoed = forksafe.run(first())
    first_ns = time.monotonic_ns()
    slept, worker_pid = forksafe.run(more())
    pid = os.getpid()
    seen: dict[str, Any] = {
        "echo": echoed,
        "sleep": slept,
        "worker_pid": worker_pid,
        "echo_sync": testing.echo_sync(value),
        "client_pid": _CLIENT.get()[1],
        "pid": pid,
        "first_ns": first_ns,
    }
    expected = {"echo": value, "sleep": value, "echo_sync": value, "worker_pid": pid}
    expected["client_pid"] = pid
    seen["ok"] = all(seen[k] == v for k, v in expected.items())
    return seen


class ProbeWork(Work):
    """forksafe's probes: both layers, checked against the child's own PID."""

    def run(self, value: int) -> dict[str, Any]:
        seen = check_layers(value)
        if not seen["ok"]:
            seen["detail"] = json.dumps(seen)
        return seen
