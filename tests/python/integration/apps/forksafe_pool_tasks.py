"""The task run by multiprocessing / concurrent.futures workers, and the module the forkserver
preloads.

Importing this module uses forksafe (runtime, loop and fork-local client) in the importing
process: in the test process before it creates a fork-context pool, and in the forkserver
process when it is preloaded there, so the forkserver's children also fork from a process with
live forksafe threads.
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


async def _probe(value: str) -> tuple[str, str, int]:
    echoed = await testing.echo(value)
    slept = await testing.sleep(0.001, value)
    return echoed, slept, await testing.pid()


def use_forksafe(value: str) -> dict[str, Any]:
    """Runs every probe in this process; returns what it saw."""
    echoed, slept, tokio_pid = forksafe.run(_probe(value), timeout=PROBE_TIMEOUT)
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


IMPORT_REPORT = use_forksafe("import")
if (IMPORT_REPORT["echo"], IMPORT_REPORT["tokio_pid"], IMPORT_REPORT["client_pid"]) != (
    "import",
    IMPORT_PID,
    IMPORT_PID,
):
    raise RuntimeError(f"forksafe misbehaved at import: {IMPORT_REPORT!r}")
