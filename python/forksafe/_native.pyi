"""Type stubs for the native extension module ``forksafe._native``."""

from collections.abc import Awaitable
from typing import Any, TypeVar

T = TypeVar("T")

__version__: str
CONTROL_PROBE: bool

def process_token() -> int:
    """An identifier of the calling process that no descendant shares."""

def runtime_info() -> dict[str, Any]:
    """This process's runtime state (pid, depth, runtimes_built, inherited_runtimes, guard,
    guard_reason, tokio_parking_lot, gil_enabled, worker_threads, max_blocking_threads)."""

def build_info() -> dict[str, Any]:
    """What the extension was built with: ``tokio_features`` and ``control_probe``."""

def configure(
    *,
    worker_threads: int | None = None,
    thread_name: str | None = None,
    max_blocking_threads: int | None = None,
    thread_stack_size: int | None = None,
) -> None:
    """Configures this process's runtime before its first use."""

class testing:  # a submodule at runtime
    """The native side of :mod:`forksafe.testing`: its probes are described there
    (``testing.pyi``)."""

    @staticmethod
    def echo(x: T) -> Awaitable[T]: ...
    @staticmethod
    def sleep(seconds: float, value: T | None = None) -> Awaitable[T | None]: ...
    @staticmethod
    def pid() -> Awaitable[int]: ...
    @staticmethod
    def echo_sync(x: T) -> T: ...
