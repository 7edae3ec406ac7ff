"""forksafe: async Rust inside Python extensions that survives ``fork()``.

No at-fork hooks: every access compares the calling process with the one that built the cached
state (the tokio runtime, the background loop, a :func:`fork_local` value) and builds fresh
state in a child, whatever the fork path.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any, TypeVar

from . import _native, testing
from ._fork_local import ForkLocal, fork_local
from ._loop import BackgroundEventLoop, loops_built
from ._native import configure

__version__: str = _native.__version__

T = TypeVar("T")

LOOP = BackgroundEventLoop()
"""The default background loop."""


def run(coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
    """Runs ``coro`` on :data:`LOOP` and blocks for its result (see BackgroundEventLoop.run)."""
    return LOOP.run(coro, timeout)


def runtime_info() -> dict[str, Any]:
    """This process's state: pid, runtimes and loops built here, inherited entries, guard mode.

    Keys: ``pid``, ``depth``, ``runtimes_built`` (0 or 1), ``loops_built``,
    ``inherited_runtimes`` (list of ``(pid, generations_back)``), ``guard``
    (``"wipeonfork"``, ``"syscall"``, or ``"nofork"`` on Windows), ``guard_reason``,
    ``tokio_parking_lot`` (``True`` when a dependency turned tokio's ``parking_lot`` feature on in
    this binary, ``None`` before the first runtime or where the probe cannot tell),
        ``gil_enabled`` (``False`` on a free-threaded CPython running without its GIL),
    ``worker_threads`` and ``max_blocking_threads`` (the size of this process's runtime: what
    it was built with, or will be on first use).
    """
    info: dict[str, Any] = _native.runtime_info()
    info["loops_built"] = loops_built()
    return info


__all__ = [
    "LOOP",
    "BackgroundEventLoop",
    "ForkLocal",
    "__version__",
    "configure",
    "fork_local",
    "run",
    "runtime_info",
    "testing",
]
