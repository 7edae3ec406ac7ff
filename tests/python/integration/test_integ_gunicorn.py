"""gunicorn --preload with sync workers: the master uses forksafe at import, the workers fork.

The app (apps/forksafe_wsgi_app.py) builds the tokio runtime, the background loop and a
fork-local client in the master. Every request then runs native awaitables in a worker, which
must rebuild all three for itself. A worker killed with SIGKILL is replaced by a fresh fork of
the (still multi-threaded) master, which must serve correctly too.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import forksafe
import integ_support
import pytest
from integ_support import Service

REQUESTS = 200
CLIENT_THREADS = 4
REQUEST_TIMEOUT = 10.0
READY_DEADLINE = 30.0
RESPAWN_DEADLINE = 30.0


@pytest.fixture
def gunicorn(tmp_path: Path) -> Iterator[tuple[Service, str]]:
    with integ_support.gunicorn_preload("forksafe_wsgi_app:app", tmp_path) as served:
        yield served


def _get(base: str, value: str, sleep: float = 0.0) -> dict[str, Any]:
    url = f"{base}/?{urlencode({'v': value, 'sleep': sleep})}"
    with urllib.request.urlopen(url, timeout=REQUEST_TIMEOUT) as response:
        if response.status != 200:
            raise AssertionError(f"HTTP {response.status} for {url}")
        return json.loads(response.read())


def _problems(body: dict[str, Any], value: str, master: int, guard: str) -> list[str]:
    """Everything wrong with one response (empty if it is right): the shared checks, with the
    app imported in the master (--preload), plus the master's own client left alone."""
    problems = integ_support.report_problems(body, value, master, guard)
    if body["master_client_pid"] != master:
        problems.append(f"master_client_pid: expected {master}, got {body['master_client_pid']}")
    if body["client_id"] == body["master_client_id"]:
        problems.append("the worker got the master's fork-local client")
    return problems


def _wait_ready(service: Service, base: str) -> dict[str, Any]:
    deadline = time.monotonic() + READY_DEADLINE
    attempt = 0
    while True:
        attempt += 1
        try:
            return _get(base, f"ready-{attempt}")
        except (OSError, urllib.error.URLError) as exc:
            service.require_running()
            if time.monotonic() > deadline:
                service.fail(f"gunicorn did not answer within {READY_DEADLINE:.0f} s: {exc!r}")
            time.sleep(0.1)


def _concurrent_slow_pair(base: str, tag: str) -> list[tuple[str, dict[str, Any]]]:
    """Two overlapping slow requests: a busy sync worker cannot take both, so both workers
    (or the replacement of a killed one) get to answer."""
    values = [f"{tag}-{i}-{uuid.uuid4().hex[:8]}" for i in range(2)]
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        bodies = list(pool.map(lambda v: _get(base, v, sleep=0.3), values))
    return list(zip(values, bodies))


def _answers_until(
    service: Service, base: str, tag: str, done: Any, deadline_s: float
) -> list[tuple[str, dict[str, Any]]]:
    """Sends slow pairs until ``done(answers)`` holds; bounded by a deadline and 200 rounds."""
    answers: list[tuple[str, dict[str, Any]]] = []
    deadline = time.monotonic() + deadline_s
    for round_ in range(200):
        try:
            answers += _concurrent_slow_pair(base, f"{tag}{round_}")
        except (OSError, urllib.error.URLError) as exc:
            service.require_running()
            answers_seen = sorted({b["worker_pid"] for _, b in answers})
            service.fail(f"{tag}: request failed: {exc!r}; workers seen {answers_seen}")
        if done(answers):
            return answers
        if time.monotonic() > deadline:
            break
    seen = sorted({b["worker_pid"] for _, b in answers})
    service.fail(f"{tag}: condition not reached within {deadline_s:.0f} s; workers seen {seen}")
    raise AssertionError("unreachable")


@pytest.mark.timeout(180)
def test_gunicorn_preload_sync_workers(gunicorn: tuple[Service, str]) -> None:
    service, base = gunicorn
    master = service.pid
    guard = forksafe.runtime_info()["guard"]  # the test's own mode: the same env reaches gunicorn
    if os.environ.get("FORKSAFE_PID_CHECK") == "syscall":
        assert guard == "syscall"

    first = _wait_ready(service, base)
    assert not _problems(first, first["value"], master, guard), (first, service.output())

    # 200 requests from 4 client threads, every one checked.
    values = [f"req-{i}-{uuid.uuid4().hex[:12]}" for i in range(REQUESTS)]

    def one(value: str) -> tuple[str, Any]:
        try:
            return value, _get(base, value)
        except Exception as exc:
            return value, exc

    with concurrent.futures.ThreadPoolExecutor(CLIENT_THREADS) as pool:
        results = list(pool.map(one, values))
    failures = [(v, r) for v, r in results if isinstance(r, Exception)]
    if failures:
        service.fail(f"{len(failures)}/{REQUESTS} requests failed, e.g. {failures[:3]!r}")
    bad = [(v, p) for v, body in results if (p := _problems(body, v, master, guard))]
    if bad:
        service.fail(f"{len(bad)}/{REQUESTS} wrong answers, e.g. {bad[:3]!r}")
    answers = [(v, body) for v, body in results]

    # Both initial workers must have served (slow overlapping pairs force the second one in).
    if len({b["worker_pid"] for _, b in answers}) < 2:
        answers += _answers_until(
            service, base, "both", lambda a: len({b["worker_pid"] for _, b in a}) >= 2, 20.0
        )
        bad = [(v, p) for v, body in answers if (p := _problems(body, v, master, guard))]
        assert not bad, bad
    clients: dict[int, set[str]] = {}
    for _, body in answers:
        clients.setdefault(body["worker_pid"], set()).add(body["client_id"])
    workers = set(clients)
    assert len(workers) == 2, f"expected 2 workers, saw {sorted(workers)}"
    for pid, ids in clients.items():
        assert len(ids) == 1, f"worker {pid} rebuilt its fork-local client: {ids}"
        assert integ_support.is_alive(pid) and integ_support.parent_of(pid) == master
    assert len({next(iter(ids)) for ids in clients.values()}) == 2, clients

    # SIGKILL one worker; the master forks a replacement, which must serve correctly.
    victim = min(workers)
    os.kill(victim, signal.SIGKILL)
    if not integ_support.wait_until(lambda: not integ_support.is_alive(victim), 10):
        service.fail(f"worker {victim} still alive 10 s after SIGKILL")
    after = _answers_until(
        service,
        base,
        "respawn",
        lambda a: any(b["worker_pid"] not in workers for _, b in a),
        RESPAWN_DEADLINE,
    )
    bad = [(v, p) for v, body in after if (p := _problems(body, v, master, guard))]
    assert not bad, bad
    served_by = {b["worker_pid"] for _, b in after}
    assert victim not in served_by, f"the killed worker {victim} answered"
    new_workers = served_by - workers
    assert new_workers, served_by
    for pid in new_workers:
        assert integ_support.parent_of(pid) == master, f"replacement {pid} is not the master's"
        ids = {b["client_id"] for _, b in after if b["worker_pid"] == pid}
        assert len(ids) == 1 and not ids & set().union(*clients.values()), ids

    # Graceful shutdown: every worker (each used forksafe) exits on its own after SIGTERM.
    everyone = workers | new_workers
    service.stop()
    assert not service.stopped_by_sigkill, f"gunicorn ignored SIGTERM\n{service.output()}"
    assert service.exit_code == 0, f"gunicorn exit code {service.exit_code}\n{service.output()}"
    alive = [pid for pid in everyone if integ_support.is_alive(pid)]
    assert not alive, f"workers {alive} outlived the master"
    print(
        f"gunicorn: {len(answers)} answers from workers {sorted(workers)}, "
        f"replacement {sorted(new_workers)} for killed {victim}"
    )
