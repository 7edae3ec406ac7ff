"""Native probes for tests, the CLI, benchmarks and your own checks.

The four probes are described once, in this module's stub (``testing.pyi``, beside this file).
"""

from __future__ import annotations

from ._native import testing as _probes

echo = _probes.echo
sleep = _probes.sleep
pid = _probes.pid
echo_sync = _probes.echo_sync

__all__ = ["echo", "echo_sync", "pid", "sleep"]
