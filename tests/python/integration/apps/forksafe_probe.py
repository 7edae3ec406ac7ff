"""What every integration app does with forksafe: a fork-local client and the native probes.

Imported by the app modules, so ``IMPORT_PID`` is the process that imported the app: gunicorn's
master (``--preload``), celery's main worker process, the pool's parent or the forkserver.
"""

from __future__ import annotations

import os
import uuid
from typing import Any

import forksafe
from forksafe import testing

PROBE_TIMEOUT = 10.0

IMPORT_PID = os.getpid()
CLIENT = forksafe.fork_local(lambda: {"pid": os.getpid(), "id": uuid.uuid4().hex})


async def _probe(value: str, delay: float) -> tuple[str, str, int]:
    echoed = await testing.echo(value)
    slept = await testing.sleep(delay, value)
    return echoed, slept, await testing.pid()


def observe(value: str, delay: float = 0.001) -> dict[str, Any]:
    """Runs every probe in this process through both layers; returns what it saw."""
    echoed, slept, tokio_pid = forksafe.run(_probe(value, delay), timeout=PROBE_TIMEOUT)
    client = CLIENT.get()
    info = forksafe.runtime_info()
    return {
        "pid": os.getpid(),
        "ppid": os.getppid(),
        "import_pid": IMPORT_PID,
        "value": value,
        "echo": echoed,
        "sleep": slept,
        "echo_sync": testing.echo_sync(value),
        "tokio_pid": tokio_pid,
        "client_pid": client["pid"],
        "client_id": client["id"],
        "runtimes_built": info["runtimes_built"],
        "inherited_runtimes": [list(entry) for entry in info["inherited_runtimes"]],
        "guard": info["guard"],
    }


def use_at_import() -> dict[str, Any]:
    """Builds this process's runtime, loop and client, checks them, and returns the report."""
    report = observe("import")
    seen = (report["echo"], report["sleep"], report["echo_sync"], report["tokio_pid"])
    if seen != ("import", "import", "import", IMPORT_PID) or report["client_pid"] != IMPORT_PID:
        raise RuntimeError(f"forksafe misbehaved at import: {report!r}")
    return report
