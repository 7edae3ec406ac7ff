"""Native probes for tests, the CLI, benchmarks and your own checks.

Each goes through this process's tokio runtime. The awaitable probes need a running loop::

    async def probe():
        return await forksafe.testing.echo(1)

    forksafe.run(probe())
"""

from __future__ import annotations

from ._native import testing as _probes

echo = _probes.echo
sleep = _probes.sleep
pid = _probes.pid
echo_sync = _probes.echo_sync

__all__ = ["echo", "echo_sync", "pid", "sleep"]
