"""The connection pool across fork: a child never sends a request on its parent's connection.

The server's front end (moto_main.py) keeps connections alive and logs which TCP connection
carried each request. The parent reads until its client's pool holds an idle, open connection,
forks a child that reads other keys through the inherited ``Store``, then reads again itself.
Each key is read by one process only, so the log tells which process used which connection:
no connection may carry requests of both. The parent's client (and its pool) must stay the
parent's: a child whose ``Store`` reused it would find the pooled connection, whose hyper task
lives on the parent's runtime, and either write on the parent's socket or wait for a task that
never runs in the child.
"""

from __future__ import annotations

import os
from typing import Any

import objdata
import pytest
from forksafe._cli.engine import calls
from forksafe_objstore import Store

DEADLINE = float(os.environ.get("OBJSTORE_TEST_DEADLINE", "30"))


def _child(store: Store, keys: list[str]) -> dict[str, Any]:
    calls.progress(f"get_sync x{len(keys) // 2} then get x{len(keys) - len(keys) // 2}")
    both = objdata.read_both(store, keys, calls.progress)
    calls.progress("done")
    return {"pid": os.getpid(), "read": both["sync"] + both["async"]}


def _connections(requests: list[tuple[int, str, str]], keys: list[str]) -> dict[str, list[int]]:
    """For each key, the TCP connections its GET requests came on."""
    found: dict[str, list[int]] = {key: [] for key in keys}
    for number, method, path in requests:
        for key in keys:
            if method == "GET" and path.endswith("/" + key):
                found[key].append(number)
    return found


@pytest.mark.parametrize("path", ["os_fork", "c_fork"])
def test_child_never_uses_a_parent_connection(
    path: str, moto: objdata.MotoServer, data: objdata.DataSet, store: Store
) -> None:
    offset = {"os_fork": 0, "c_fork": 50}[path]
    before = data.keys[300 + offset : 308 + offset]
    in_child = data.keys[400 + offset : 410 + offset]
    after = data.keys[500 + offset : 506 + offset]
    seen = len(moto.requests())

    # Sequential reads on one thread: each request finds the previous one's connection idle.
    data.require(objdata.read_sync(store, before[:4]), before[:4], "parent before (get_sync)")
    data.require(objdata.read_async(store, before[4:]), before[4:], "parent before (get)")
    used = _connections(moto.requests()[seen:], before)
    parent_before = {n for numbers in used.values() for n in numbers}
    assert all(used.values()), f"the server logged no request for some parent keys: {used}"
    # The premise: the server keeps connections alive, so the pool holds one at fork time.
    assert len(parent_before) < len(before), (
        f"{len(before)} sequential reads took {len(parent_before)} connections: the server "
        "closed each one, so the parent's pool holds nothing a child could inherit"
    )

    outcome = calls.spawn(_child, store, in_child, path=path, deadline=DEADLINE)[0]
    if not outcome.ok:
        reached = _connections(moto.requests()[seen:], in_child)
        got = {key: numbers for key, numbers in reached.items() if numbers}
        pytest.fail(
            f"{outcome.describe()}\nthe server received {len(got)} of the child's "
            f"{len(in_child)} requests (key: connections): {got}; the parent's connections "
            f"before the fork: {sorted(parent_before)}",
            pytrace=False,
        )
    report = outcome.report
    data.require(report["read"], in_child, f"{path} child {report['pid']}")

    data.require(objdata.read_sync(store, after[:3]), after[:3], "parent after (get_sync)")
    data.require(objdata.read_async(store, after[3:]), after[3:], "parent after (get)")

    log = moto.requests()[seen:]
    child = {n for numbers in _connections(log, in_child).values() for n in numbers}
    parent = {n for numbers in _connections(log, before + after).values() for n in numbers}
    assert child, f"the server logged none of the child's {len(in_child)} reads"
    shared = sorted(child & parent)
    assert not shared, (
        f"TCP connection(s) {shared} carried requests of both the parent and its {path} "
        f"child {report['pid']}: the child used the parent's pooled connection"
    )
