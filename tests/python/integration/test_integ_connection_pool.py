"""An inherited keep-alive connection pool, with and without fork_local.

A local server (apps/pid_echo_server.py, a subprocess on 127.0.0.1) echoes the PID each request
carries in a header and records which PIDs used each TCP connection. The parent fills a
keep-alive pool, then forks 8 children that use it at the same time.

* With the pool held in ``forksafe.fork_local``, every child builds its own pool: every response
  carries the child's PID and arrived on the child's own connection, no connection is used by two
  processes, and the parent's connection still works afterwards (the children never closed it).
* The negative control shares the parent's ``HTTPConnection`` (a plain module-level object): the
  same checks must find the damage (one TCP connection used by several PIDs, responses read by
  the wrong process, broken reads). This proves the checks can fail.
"""

from __future__ import annotations

import http.client
import json
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import forksafe
import forkutil
import integ_support
import pytest
from integ_support import Service

CHILDREN = 8
THREADS_PER_CHILD = 3
REQUESTS_PER_THREAD = 4
SHARED_REQUESTS_PER_CHILD = 3
SOCKET_TIMEOUT = 10.0
SHARED_SOCKET_TIMEOUT = 2.0  # a child whose response another child swallowed waits this long
CHILD_DEADLINE = 30.0


@pytest.fixture
def pid_server(tmp_path: Path) -> Iterator[tuple[Service, str, int]]:
    sock = integ_support.listening_socket()
    host, port = sock.getsockname()
    service = Service(
        "pid-echo-server",
        [
            integ_support.python(),
            str(integ_support.APPS / "pid_echo_server.py"),
            "--fd",
            str(sock.fileno()),
        ],
        tmp_path,
        pass_fds=[sock.fileno()],
    )
    try:
        service.start()
        sock.close()
        yield service, host, port
    finally:
        sock.close()
        service.stop()


def _request(conn: http.client.HTTPConnection, tag: str) -> dict[str, Any]:
    """One GET on ``conn`` carrying this process's PID; what came back and on which socket."""
    conn.request("GET", f"/echo?{tag}", headers={"X-Client-Pid": str(os.getpid())})
    assert conn.sock is not None
    host, port = conn.sock.getsockname()[:2]
    local = f"{host}:{port}"
    response = conn.getresponse()
    raw = response.read()
    return {"status": response.status, "body": json.loads(raw), "local": local, "tag": tag}


def _server_stats(service: Service, host: str, port: int) -> dict[str, Any]:
    conn = http.client.HTTPConnection(host, port, timeout=SOCKET_TIMEOUT)
    try:
        conn.request("GET", "/stats", headers={"Connection": "close"})
        stats = json.loads(conn.getresponse().read())
    except OSError as exc:
        service.fail(f"GET /stats failed: {exc!r}")
    finally:
        conn.close()
    return stats


def _violations(
    parent_pid: int, responses: dict[int, list[Any]], errors: dict[int, list[str]], stats: Any
) -> list[str]:
    """Everything that shows processes sharing a connection. ``responses[pid]`` are the results
    of ``_request`` in process ``pid``; ``errors[pid]`` what its requests raised."""
    found = []
    for pid, errs in errors.items():
        found += [f"pid {pid}: request failed: {e}" for e in errs]
    for pid, got in responses.items():
        for r in got:
            if r["status"] != 200:
                found.append(f"pid {pid}: HTTP {r['status']} for {r['tag']}")
            elif r["body"]["pid"] != pid:
                found.append(
                    f"pid {pid}: response carries pid {r['body']['pid']} "
                    f"(read another process's response) for {r['tag']}"
                )
            elif r["body"]["conn"] != r["local"]:
                found.append(f"pid {pid}: response for connection {r['body']['conn']}")
    for conn, pids in stats["connections"].items():
        if len(set(pids)) > 1:
            found.append(f"server: connection {conn} used by PIDs {sorted(set(pids))}")
    for conn, errs in stats["errors"].items():
        found.append(f"server: errors on connection {conn}: {errs}")
    return found


class KeepAlivePool:
    """A minimal keep-alive HTTP/1.1 connection pool, like the ones inside real clients."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.owner = os.getpid()
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    @contextmanager
    def connection(self) -> Iterator[http.client.HTTPConnection]:
        with self._lock:
            conn = self._idle.pop() if self._idle else None
        if conn is None:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=SOCKET_TIMEOUT)
        try:
            yield conn
        except BaseException:
            conn.close()
            raise
        with self._lock:
            self._idle.append(conn)

    def request(self, tag: str) -> dict[str, Any]:
        with self.connection() as conn:
            return _request(conn, tag)


# The objects children inherit (set by the tests, read in the forked children).
_POOL: forksafe.ForkLocal[KeepAlivePool] | None = None
_SHARED_CONNECTION: http.client.HTTPConnection | None = None


def _fork_local_child(index: int) -> dict[str, Any]:
    assert _POOL is not None
    pool = _POOL.get()
    responses: list[dict[str, Any]] = []
    errors: list[str] = []

    def work(thread: int) -> None:
        for j in range(REQUESTS_PER_THREAD):
            try:
                responses.append(pool.request(f"child={index}&thread={thread}&req={j}"))
            except Exception as exc:
                errors.append(repr(exc))

    threads = [threading.Thread(target=work, args=(t,)) for t in range(THREADS_PER_CHILD)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(CHILD_DEADLINE / 2)
        if t.is_alive():
            forkutil.progress(f"thread {t.name} still waiting for the server")
            errors.append(f"thread {t.name} did not finish")
    forkutil.progress(f"{len(responses)} responses, {len(errors)} errors")
    return {
        "pid": os.getpid(),
        "pool_owner": pool.owner,
        "pool_id": id(pool),
        "responses": responses,
        "errors": errors,
    }


@pytest.mark.timeout(120)
def test_fork_local_pool_is_per_process(pid_server: tuple[Service, str, int]) -> None:
    global _POOL
    service, host, port = pid_server
    parent = os.getpid()
    _POOL = forksafe.fork_local(lambda: KeepAlivePool(host, port))
    try:
        parent_pool = _POOL.get()
        before = [parent_pool.request(f"parent-before={i}") for i in range(3)]
        parent_conns = {r["local"] for r in before}
        assert len(parent_conns) == 1, "the parent's pool did not keep its connection alive"

        children = forkutil.run_children(CHILDREN, _fork_local_child, deadline=CHILD_DEADLINE)

        after = [parent_pool.request(f"parent-after={i}") for i in range(3)]
        assert {r["local"] for r in after} == parent_conns, (
            "the parent's keep-alive connection did not survive the children "
            f"(before {parent_conns}, after {[r['local'] for r in after]})"
        )
        assert _POOL.get() is parent_pool
    finally:
        _POOL = None

    reports = {c.report["pid"]: c.report for c in children}
    assert sorted(reports) == sorted(c.pid for c in children)
    responses = {pid: r["responses"] for pid, r in reports.items()}
    responses[parent] = before + after
    errors = {pid: r["errors"] for pid, r in reports.items()}
    stats = _server_stats(service, host, port)
    found = _violations(parent, responses, errors, stats)
    assert not found, "\n".join(found)

    # Each child built its own pool and its own connections; nobody else's.
    owners: dict[str, int] = {}
    for pid, report in reports.items():
        assert report["pool_owner"] == pid, report
        # The parent's pool is still in the child's memory (never freed), so a new pool
        # cannot sit at its address: a different id means a different object.
        assert report["pool_id"] != id(parent_pool), f"child {pid} used the parent's pool"
        assert len(report["responses"]) == THREADS_PER_CHILD * REQUESTS_PER_THREAD
        for r in report["responses"]:
            assert owners.setdefault(r["local"], pid) == pid
    assert not parent_conns & set(owners), "a child used the parent's connection"
    seen = {pid for pids in stats["connections"].values() for pid in pids}
    assert seen == set(reports) | {parent}, seen
    per_pid_conns = {pid: {c for c, o in owners.items() if o == pid} for pid in reports}
    print(
        f"fork_local pool: {CHILDREN} children, connections per child "
        f"{sorted(len(c) for c in per_pid_conns.values())}, parent kept {parent_conns}"
    )


def _shared_child(index: int) -> dict[str, Any]:
    conn = _SHARED_CONNECTION
    assert conn is not None
    responses: list[dict[str, Any]] = []
    errors: list[str] = []
    for j in range(SHARED_REQUESTS_PER_CHILD):
        try:
            responses.append(_request(conn, f"child={index}&req={j}"))
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
            forkutil.progress(f"request {j} failed: {exc!r}")
            break  # the connection's state is broken from here on; one failure is enough
    return {"pid": os.getpid(), "responses": responses, "errors": errors}


@pytest.mark.timeout(120)
def test_shared_connection_without_fork_local_is_detected(
    pid_server: tuple[Service, str, int],
) -> None:
    """Negative control: the same checks catch a connection shared across fork."""
    global _SHARED_CONNECTION
    service, host, port = pid_server
    parent = os.getpid()
    _SHARED_CONNECTION = http.client.HTTPConnection(host, port, timeout=SHARED_SOCKET_TIMEOUT)
    parent_errors: list[str] = []
    try:
        before = [_request(_SHARED_CONNECTION, "parent-before=0")]
        # All children start together and fire their requests down the one inherited socket.
        children = forkutil.run_children(CHILDREN, _shared_child, deadline=CHILD_DEADLINE)
        try:
            before.append(_request(_SHARED_CONNECTION, "parent-after=0"))
        except Exception as exc:
            parent_errors.append(f"{type(exc).__name__}: {exc}")
    finally:
        _SHARED_CONNECTION.close()
        _SHARED_CONNECTION = None

    reports = {c.report["pid"]: c.report for c in children}
    responses = {pid: r["responses"] for pid, r in reports.items()}
    responses[parent] = before
    errors = {pid: r["errors"] for pid, r in reports.items()}
    errors[parent] = parent_errors
    stats = _server_stats(service, host, port)
    found = _violations(parent, responses, errors, stats)

    assert found, "the shared connection went unnoticed: the checks cannot fail"
    shared = [v for v in found if v.startswith("server: connection") and "used by PIDs" in v]
    assert shared, "the server did not see one connection used by several processes:\n" + (
        "\n".join(found)
    )
    kinds = {
        "connection used by several PIDs (server)": len(shared),
        "response carrying another PID": sum("response carries pid" in v for v in found),
        "request failed in the client": sum("request failed" in v for v in found),
        "server-side errors": sum(v.startswith("server: errors") for v in found),
    }
    print(f"negative control detected {len(found)} violations: {kinds}")
    for v in shared + [v for v in found if v not in shared][:12]:
        print("  " + v)
