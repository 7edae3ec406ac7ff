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
    (``"wipeonfork"`` or ``"syscall"``), ``guard_reason``.
    """
    info: dict[str, Any] = _native.runtime_info()
    info["loops_built"] = loops_built()
    return info


def configure(
    *,
    worker_threads: int | None = None,
    thread_name: str | None = None,
    max_blocking_threads: int | None = None,
    thread_stack_size: int | None = None,
) -> None:
    """Configures the tokio runtime before its first use in this process (children inherit).

    Raises ``ValueError`` for invalid values and ``RuntimeError`` once the runtime exists.
    """
    _native.configure(
        worker_threads=worker_threads,
        thread_name=thread_name,
        max_blocking_threads=max_blocking_threads,
        thread_stack_size=thread_stack_size,
    )


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
