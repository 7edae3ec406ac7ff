"""An extension on pyo3 0.25 / pyo3-async-runtimes 0.25 that survives fork() via forksafe.

The async functions return awaitables (``pyo3_async_runtimes.generic`` over
``forksafe::generic_runtime!``'s type); ``echo_sync`` blocks with the GIL released.
``CONTROL`` is true in the negative-control build (plain ``pyo3_async_runtimes::tokio``).
"""

from __future__ import annotations

from ._native import CONTROL, echo, echo_async, echo_blocking, echo_sync, roundtrip

__all__ = ["CONTROL", "echo", "echo_async", "echo_blocking", "echo_sync", "roundtrip"]
