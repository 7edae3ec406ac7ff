"""Celery tasks for the prefork (billiard) test: forksafe is used at import, in the worker's main
process, before the pool children fork.

Broker and result backend live in one directory named by ``FORKSAFE_IT_CELERY_DIR`` (the worker)
or passed to :func:`configure` (the test process, which sends the tasks): the ``filesystem://``
transport and the ``file://`` result backend, so nothing listens on any port.
"""

from __future__ import annotations

import os
import uuid
from typing import Any

import forksafe
from celery import Celery
from forksafe import testing

PROBE_TIMEOUT = 10.0
DIR_ENV = "FORKSAFE_IT_CELERY_DIR"

app = Celery("forksafe_celery_tasks")


def configure(folder: str) -> None:
    """Points broker and result backend at ``folder``."""
    paths = {name: os.path.join(folder, name) for name in ("queue", "processed", "control")}
    results = os.path.join(folder, "results")
    for path in [*paths.values(), results]:
        os.makedirs(path, exist_ok=True)
    app.conf.update(
        broker_url="filesystem://",
        broker_transport_options={
            "data_folder_in": paths["queue"],
            "data_folder_out": paths["queue"],
            "processed_folder": paths["processed"],
            "store_processed": True,
            "control_folder": paths["control"],
            "polling_interval": 0.1,
        },
        broker_connection_retry_on_startup=True,
        result_backend="file://" + results,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        worker_prefetch_multiplier=1,
        worker_enable_remote_control=False,
    )


if os.environ.get(DIR_ENV):
    configure(os.environ[DIR_ENV])

IMPORT_PID = os.getpid()
CLIENT = forksafe.fork_local(lambda: {"pid": os.getpid(), "id": uuid.uuid4().hex})


async def _probe(value: str) -> tuple[str, str, int]:
    echoed = await testing.echo(value)
    slept = await testing.sleep(0.02, value)
    return echoed, slept, await testing.pid()


def _use_at_import() -> dict[str, str]:
    seen = forksafe.run(_probe("import"), timeout=PROBE_TIMEOUT)
    sync = testing.echo_sync("import-sync")
    client = CLIENT.get()
    if (seen, sync, client["pid"]) != (("import", "import", IMPORT_PID), "import-sync", IMPORT_PID):
        raise RuntimeError(f"forksafe misbehaved at import: {seen!r} {sync!r} {client!r}")
    return client


IMPORT_CLIENT = _use_at_import()


@app.task(name="forksafe_it.probe")
def probe(value: str) -> dict[str, Any]:
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
        "import_client_id": IMPORT_CLIENT["id"],
        "runtimes_built": info["runtimes_built"],
        "inherited_runtimes": info["inherited_runtimes"],
        "guard": info["guard"],
    }
