"""A WSGI app for ``gunicorn --preload``: it uses forksafe at import time, in the master.

With ``--preload`` gunicorn imports this module in the master before it forks the workers, so
every worker starts with the master's tokio runtime, background loop and fork-local client in
memory (and their threads gone). Each request runs native awaitables through ``forksafe.run``
and reports what it saw as JSON; the test checks every value.
"""

from __future__ import annotations

import json
from typing import Any, Callable
from urllib.parse import parse_qs

from forksafe_probe import IMPORT_PID, observe, use_at_import

MASTER = use_at_import()


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    query = parse_qs(environ.get("QUERY_STRING", ""))
    value = query.get("v", [""])[0]
    delay = float(query.get("sleep", ["0"])[0])
    seen = observe(value, delay)
    body = {
        **seen,
        "worker_pid": seen["pid"],
        "worker_ppid": seen["ppid"],
        "master_pid": IMPORT_PID,
        "master_client_pid": MASTER["client_pid"],
        "master_client_id": MASTER["client_id"],
    }
    data = json.dumps(body).encode()
    start_response(
        "200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(data)))]
    )
    return [data]
