"""Native probes for tests, the CLI, benchmarks and your own checks: the one description of
the four probes (``testing.py`` re-exports them from ``_native.testing``).

Each goes through this process's tokio runtime. The awaitable probes need a running loop::

    async def probe():
        return await forksafe.testing.echo(1)

    forksafe.run(probe())
"""

from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")

def echo(x: T) -> Awaitable[T]:
    """Awaitable: yields once to the tokio scheduler, then returns ``x``."""

def sleep(seconds: float, value: T | None = None) -> Awaitable[T | None]:
    """Awaitable: a tokio timer of ``seconds``, then returns ``value``."""

def pid() -> Awaitable[int]:
    """Awaitable: the PID seen by a task on a runtime worker thread."""

def echo_sync(x: T) -> T:
    """Synchronous: the ``echo`` future driven on this process's runtime, GIL released."""
