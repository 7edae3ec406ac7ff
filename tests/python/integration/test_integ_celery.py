"""Celery prefork (billiard) pool: the worker's main process uses forksafe at import, the pool
children fork from it, and every task runs native awaitables in a child.

The broker is kombu's ``filesystem://`` transport and results go to the ``file://`` backend, both
in the test's temporary directory: no server, no port.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import celery.exceptions
import forksafe
import integ_support
import pytest
from integ_support import Service

TASKS = 20
RESULT_DEADLINE = 60.0


@pytest.fixture
def celery_worker(tmp_path: Path) -> Iterator[tuple[Service, Any]]:
    # Imported here, not at collection: importing the tasks module uses forksafe in this process.
    tasks = integ_support.app("forksafe_celery_tasks")
    folder = str(tmp_path / "celery")
    tasks.configure(folder)
    service = Service(
        "celery",
        [
            integ_support.python(), "-m", "celery",
            "-A", "forksafe_celery_tasks",
            "worker",
            "--pool=prefork", "-c", "2",
            "--loglevel=INFO",
            "--hostname", f"forksafe-it-{uuid.uuid4().hex[:8]}@localhost",
            "--without-gossip", "--without-mingle", "--without-heartbeat",
        ],
        tmp_path,
        env=integ_support.subprocess_env(**{tasks.DIR_ENV: folder}),
    )  # fmt: skip
    try:
        service.start()
        yield service, tasks
    finally:
        service.stop(graceful=20.0)
        tasks.app.close()


def _problems(result: dict[str, Any], value: str, main: int, guard: str) -> list[str]:
    problems = integ_support.report_problems(result, value, main, guard)
    if result["client_id"] == result["import_client_id"]:
        problems.append("the pool child got the main process's fork-local client")
    return problems


@pytest.mark.timeout(180)
def test_celery_prefork_pool(celery_worker: tuple[Service, Any]) -> None:
    service, tasks = celery_worker
    main = service.pid
    guard = forksafe.runtime_info()["guard"]
    values = [f"task-{i}-{uuid.uuid4().hex[:12]}" for i in range(TASKS)]
    pending = [tasks.probe.delay(v) for v in values]

    deadline = time.monotonic() + RESULT_DEADLINE
    results: list[dict[str, Any]] = []
    for value, async_result in zip(values, pending):
        while True:
            service.require_running()
            try:
                results.append(async_result.get(timeout=1.0, interval=0.05))
                break
            except celery.exceptions.TimeoutError:
                if time.monotonic() > deadline:
                    service.fail(
                        f"task {value} had no result after {RESULT_DEADLINE:.0f} s "
                        f"({len(results)}/{TASKS} done)"
                    )
            except Exception as exc:
                service.fail(f"task {value} raised {exc!r}")

    bad = [(v, p) for v, r in zip(values, results) if (p := _problems(r, v, main, guard))]
    if bad:
        service.fail(f"{len(bad)}/{TASKS} wrong results, e.g. {bad[:3]!r}")
    children = {r["pid"] for r in results}
    for pid in children:
        ids = {r["client_id"] for r in results if r["pid"] == pid}
        assert len(ids) == 1, f"pool child {pid} rebuilt its fork-local client: {ids}"

    # Warm shutdown: the main process and its pool children (each used forksafe) exit on SIGTERM.
    service.stop(graceful=20.0)
    assert not service.stopped_by_sigkill, f"celery ignored SIGTERM\n{service.output()}"
    assert service.exit_code == 0, f"celery exit code {service.exit_code}\n{service.output()}"
    alive = [pid for pid in children if integ_support.is_alive(pid)]
    assert not alive, f"pool children {alive} outlived the worker"
    print(f"celery: {TASKS} tasks on pool children {sorted(children)} of main {main}")
