"""A WSGI app for ``gunicorn --preload``: it uses forksafe at import time, in the master.

With ``--preload`` gunicorn imports this module in the master before it forks the workers, so
every worker starts with the master's tokio runtime, background loop and fork-local client in
memory (and their threads gone). Each request runs native awaitables through ``forksafe.run``
and reports what it saw as JSON; the test checks every value.
"""

from __future__ import annotations

import json
import os
import uuid
from typing import Any, Callable
from urllib.parse import parse_qs

import forksafe
from forksafe import testing

PROBE_TIMEOUT = 10.0

MASTER_PID = os.getpid()
CLIENT = forksafe.fork_local(lambda: {"pid": os.getpid(), "id": uuid.uuid4().hex})


async def _probe(value: str, delay: float) -> tuple[str, str, int]:
    echoed = await testing.echo(value)
    slept = await testing.sleep(delay, value)
    return echoed, slept, await testing.pid()


def _use_at_import() -> dict[str, str]:
    """Builds the master's runtime, loop and client, and checks they work here."""
    seen = forksafe.run(_probe("import", 0.0), timeout=PROBE_TIMEOUT)
    sync = testing.echo_sync("import-sync")
    client = CLIENT.get()
    expected = (("import", "import", MASTER_PID), "import-sync", MASTER_PID)
    if (seen, sync, client["pid"]) != expected:
        raise RuntimeError(f"forksafe misbehaved at import: {seen!r} {sync!r} {client!r}")
    return client


MASTER_CLIENT = _use_at_import()


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    query = parse_qs(environ.get("QUERY_STRING", ""))
    value = query.get("v", [""])[0]
    delay = float(query.get("sleep", ["0"])[0])
    echoed, slept, tokio_pid = forksafe.run(_probe(value, delay), timeout=PROBE_TIMEOUT)
    client = CLIENT.get()
    info = forksafe.runtime_info()
    body = {
        "worker_pid": os.getpid(),
        "worker_ppid": os.getppid(),
        "master_pid": MASTER_PID,
        "value": value,
        "echo": echoed,
        "sleep": slept,
        "echo_sync": testing.echo_sync(value),
        "tokio_pid": tokio_pid,
        "client_pid": client["pid"],
        "client_id": client["id"],
        "master_client_pid": MASTER_CLIENT["pid"],
        "master_client_id": MASTER_CLIENT["id"],
        "runtimes_built": info["runtimes_built"],
        "inherited_runtimes": info["inherited_runtimes"],
        "guard": info["guard"],
    }
    data = json.dumps(body).encode()
    start_response(
        "200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(data)))]
    )
    return [data]
