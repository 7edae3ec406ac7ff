"""gunicorn --preload, 2 sync workers, serving the bucket's objects: 200 requests, all correct.

The master builds and warms the Store at import (apps/objstore_wsgi_app.py); the workers inherit
it. Requests read through the inherited Store (``get_sync`` and ``get``) and through a Store built
in the worker; every body's checksum is checked.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import forksafe_objstore
import objdata
import pytest
import served
from served import Gunicorn as Service

APPS = Path(__file__).resolve().parent / "apps"
REQUESTS = 200
CLIENT_THREADS = 4
REQUEST_TIMEOUT = float(os.environ.get("OBJSTORE_TEST_DEADLINE", "15"))
READY_DEADLINE = 4 * REQUEST_TIMEOUT
PATHS = ("sync", "async", "fresh")


@pytest.fixture
def gunicorn(data: objdata.DataSet, tmp_path: Path) -> Iterator[tuple[Service, str]]:
    config = {"bucket": objdata.BUCKET, "store": data.config, "warm": data.sample(2)}
    env = {**os.environ, "OBJSTORE_TEST_CONFIG": json.dumps(config)}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(APPS), env.get("PYTHONPATH")]))
    with served.gunicorn("objstore_wsgi_app:app", tmp_path, cwd=APPS, env=env) as running:
        yield running


def _get(base: str, key: str, path: str) -> tuple[bytes, dict[str, Any]]:
    url = f"{base}/?{urlencode({'key': key, 'path': path})}"
    try:
        with urllib.request.urlopen(url, timeout=REQUEST_TIMEOUT) as response:
            return response.read(), dict(response.headers)
    except urllib.error.HTTPError as exc:
        body = exc.read().decode(errors="replace")
        raise AssertionError(f"HTTP {exc.code} for {key} ({path}):\n{body}") from None


def _wait_ready(service: Service, base: str, key: str) -> None:
    deadline = time.monotonic() + READY_DEADLINE
    while True:
        try:
            _get(base, key, "sync")
            return
        except TimeoutError:
            service.fail(
                f"the first request ({key}) got no answer within {REQUEST_TIMEOUT:.0f} s: "
                "the worker that accepted it is hung"
            )
        except (OSError, urllib.error.URLError) as exc:
            service.require_running()
            if time.monotonic() > deadline:
                service.fail(f"gunicorn did not answer within {READY_DEADLINE:.0f} s: {exc!r}")
            time.sleep(0.1)


@pytest.mark.timeout(240)
def test_gunicorn_preload_serves_objects(
    gunicorn: tuple[Service, str], data: objdata.DataSet
) -> None:
    service, base = gunicorn
    master = service.pid
    _wait_ready(service, base, data.keys[0])

    requests = [(data.keys[(i * 37) % objdata.COUNT], PATHS[i % 3]) for i in range(REQUESTS)]
    requests[0] = (data.keys[1], "sync")  # the 1 MiB object, through each path
    requests[1] = (data.keys[1], "async")
    requests[2] = (data.keys[1], "fresh")

    failing = threading.Event()  # after the first failure, send no more (fail in seconds)

    def one(request: tuple[str, str]) -> tuple[str, str, Any]:
        key, path = request
        if failing.is_set():
            return key, path, RuntimeError("not sent: an earlier request failed")
        try:
            body, headers = _get(base, key, path)
            return key, path, (objdata.digest(key, body), headers)
        except Exception as exc:
            failing.set()
            return key, path, exc

    with concurrent.futures.ThreadPoolExecutor(CLIENT_THREADS) as pool:
        results = list(pool.map(one, requests))
    failed = [(k, p, r) for k, p, r in results if isinstance(r, Exception)]
    if failed:
        sent = [f for f in failed if "not sent" not in str(f[2])]
        service.fail(
            f"{len(sent)} of {REQUESTS - len(failed) + len(sent)} requests sent failed "
            f"(then {len(failed) - len(sent)} not sent), e.g. {sent[:3]!r}"
        )
    read = [r[0] for _, _, r in results]
    wrong = data.problems(read)
    if wrong:
        service.fail(f"{len(wrong)}/{REQUESTS} wrong objects:\n" + "\n".join(wrong[:10]))
    workers: set[int] = set()
    for _, _, (_, headers) in results:
        worker = int(headers["X-Worker-Pid"])
        assert worker != master and int(headers["X-Master-Pid"]) == master, headers
        assert served.parent_of(worker) == master, f"{worker} is not the master's worker"
        workers.add(worker)
        if not forksafe_objstore.CONTROL:
            objdata.check_child_info(json.loads(headers["X-Objstore-Info"]), master)
    assert len(workers) == 2, f"expected both workers to serve, saw {sorted(workers)}"
    print(f"gunicorn: {REQUESTS} objects, all correct, served by workers {sorted(workers)}")
