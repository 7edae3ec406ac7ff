"""Celery tasks for the prefork (billiard) test: forksafe is used at import, in the worker's main
process, before the pool children fork.

Broker and result backend live in one directory named by ``FORKSAFE_IT_CELERY_DIR`` (the worker)
or passed to :func:`configure` (the test process, which sends the tasks): the ``filesystem://``
transport and the ``file://`` result backend, so nothing listens on any port.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery
from forksafe_probe import observe, use_at_import

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

IMPORT_CLIENT_ID = use_at_import()["client_id"]


@app.task(name="forksafe_it.probe")
def probe(value: str) -> dict[str, Any]:
    return {**observe(value, delay=0.02), "import_client_id": IMPORT_CLIENT_ID}
