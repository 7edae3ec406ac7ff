"""forksafe's object_store connectors: a store built in the parent, with a pool that is warm
when the process forks, used in children on every fork path, for both object_store minors.

Each case builds a ``Store`` with the plain ``AmazonS3Builder`` plus one connector
(``ForkLocalConnector`` or ``SpawnedConnector``, from ``forksafe::object_store::v0_13`` or
``v0_14``), reads sequentially until the keep-alive front end's log shows the parent reusing a
connection (so its pool holds an idle one), forks, and reads in the child (``get_sync`` and
``await get``), then in the parent again. Every key is read by one process only, so the log
says which process used which TCP connection: none may carry requests of two processes.

The credentials case points object_store's instance-metadata provider at a local IMDSv2
endpoint (metadata_main.py) whose credentials always need a refresh: the child must fetch its
own, on a connection of its own. The negative control builds the same store with object_store's
plain ``ReqwestConnector``: its child must fail (hang or error), and the test says so loudly
when it does not.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import objdata
import pytest
from forksafe._cli.engine import calls, paths
from forksafe_objstore import Store

HERE = Path(__file__).resolve().parent
DEADLINE = float(os.environ.get("OBJSTORE_TEST_DEADLINE", "30"))
CONTROL_DEADLINE = 5.0
"""Seconds the negative control's child gets (a working child needs well under one)."""

VERSIONS = ["0.13", "0.14"]
CONNECTORS = ["fork-local", "spawned"]

Log = list[tuple[int, str, str]]


# --------------------------------------------------------------------------------------------
# Which process used which connection
# --------------------------------------------------------------------------------------------


def connections_for(log: Log, keys: list[str]) -> set[int]:
    """The TCP connections that carried a GET of one of ``keys``."""
    return {
        n
        for n, method, path in log
        if method == "GET" and any(path.endswith("/" + k) for k in keys)
    }


def warm(
    store: Store, data: objdata.DataSet, moto: objdata.MotoServer, keys: list[str]
) -> set[int]:
    """Sequential reads in the parent (both paths); returns their connections, after checking
    that the server kept them alive: fewer connections than reads, so the pool holds one."""
    seen = len(moto.requests())
    half = len(keys) // 2
    data.require(objdata.read_sync(store, keys[:half]), keys[:half], "parent warm-up (get_sync)")
    data.require(objdata.read_async(store, keys[half:]), keys[half:], "parent warm-up (get)")
    used = connections_for(moto.requests()[seen:], keys)
    assert used, f"the server logged none of the parent's {len(keys)} reads"
    assert len(used) < len(keys), (
        f"{len(keys)} sequential reads took {len(used)} connections: the server closed each one, "
        "so the parent's pool holds nothing a child could inherit"
    )
    return used


def assert_apart(log: Log, groups: dict[str, list[str]]) -> None:
    """No connection carried the keys of two different processes."""
    used = {who: connections_for(log, keys) for who, keys in groups.items()}
    for who, numbers in used.items():
        assert numbers, f"the server logged none of the {who}'s reads"
    names = list(used)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            shared = sorted(used[a] & used[b])
            assert not shared, (
                f"TCP connection(s) {shared} carried requests of both the {a} and the {b}: "
                f"connections by process: {used}"
            )


# --------------------------------------------------------------------------------------------
# The children
# --------------------------------------------------------------------------------------------


def _reads(store: Store, keys: list[str]) -> dict[str, Any]:
    both = objdata.read_both(store, keys, calls.progress)
    return {"pid": os.getpid(), "read": both["sync"] + both["async"]}


def _nested(
    store: Store, keys: list[str], grandchild_keys: list[str], after: list[str]
) -> dict[str, Any]:
    """A child that reads, forks a grandchild that reads, then reads again."""
    report = _reads(store, keys)
    calls.progress("forking the grandchild")
    outcome = calls.spawn(_reads, store, grandchild_keys, deadline=DEADLINE)[0]
    report["grandchild"] = outcome.summary()
    calls.progress("reading after the grandchild")
    report["after"] = objdata.read_sync(store, after)
    return report


def run_child(
    path: str, store: Store, keys: dict[str, list[str]], deadline: float
) -> tuple[bool, Any]:
    """Forks by ``path``; the child reads ``keys["child"]`` (a chain: its child reads
    ``keys["grandchild"]``, then it reads again)."""
    row = paths.PATHS[path]
    if row.stale:
        busy = [t.name for t in threading.enumerate() if t is not threading.current_thread()]
        assert not busy, f"cannot fork from C with Python threads running: {busy}"
    if row.chain:
        args = (store, keys["child"], keys["grandchild"], keys["child after"])
        outcome = calls.spawn(_nested, *args, deadline=2 * deadline)[0]
    else:
        outcome = calls.spawn(_reads, store, keys["child"], path=path, deadline=deadline)[0]
    return (True, outcome.report) if outcome.ok else (False, outcome.describe())


KEYS = {
    "parent": list(range(600, 608)),
    "child": list(range(610, 616)),
    "grandchild": list(range(620, 626)),
    "child after": list(range(630, 634)),
    "parent after": list(range(640, 646)),
}


def keys_of(data: objdata.DataSet) -> dict[str, list[str]]:
    return {who: [data.keys[i] for i in indices] for who, indices in KEYS.items()}


# --------------------------------------------------------------------------------------------
# Every fork path, both minors, both connectors
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", calls.PATHS)
@pytest.mark.parametrize("connector", CONNECTORS)
@pytest.mark.parametrize("version", VERSIONS)
def test_store_built_in_parent_works_in_child(
    version: str, connector: str, path: str, moto: objdata.MotoServer, data: objdata.DataSet
) -> None:
    keys = keys_of(data)
    store = Store.s3(objdata.BUCKET, **data.config, connector=connector, object_store=version)
    seen = len(moto.requests())
    warm(store, data, moto, keys["parent"])

    ok, report = run_child(path, store, keys, DEADLINE)
    if not ok:
        got = connections_for(moto.requests()[seen:], keys["child"])
        pytest.fail(
            f"{report}\nconnections that carried the child's reads: {sorted(got)}", pytrace=False
        )
    data.require(report["read"], keys["child"], f"{path} child {report['pid']}")
    assert report["pid"] != os.getpid()
    groups = {"parent": keys["parent"] + keys["parent after"], "child": keys["child"]}
    if paths.PATHS[path].chain:
        grandchild = report["grandchild"]
        assert grandchild["ok"], f"the grandchild failed: {grandchild['description']}"
        data.require(grandchild["report"]["read"], keys["grandchild"], "grandchild")
        data.require(report["after"], keys["child after"], "child after its grandchild")
        groups["child"] = keys["child"] + keys["child after"]
        groups["grandchild"] = keys["grandchild"]

    half = len(keys["parent after"]) // 2
    after = keys["parent after"]
    data.require(objdata.read_sync(store, after[:half]), after[:half], "parent after (get_sync)")
    data.require(objdata.read_async(store, after[half:]), after[half:], "parent after (get)")
    assert_apart(moto.requests()[seen:], groups)


# --------------------------------------------------------------------------------------------
# Credentials through the connector: the child fetches its own token through its own client
# --------------------------------------------------------------------------------------------


class MetadataServer:
    """metadata_main.py in a subprocess; ``requests()`` reads its connection log."""

    def __init__(self, deadline: float = 30.0) -> None:
        self.log = tempfile.NamedTemporaryFile(prefix="objstore-imds-")
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "metadata_main.py"), self.log.name],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], deadline)
        line = self.proc.stdout.readline().decode() if ready else ""
        if not line.startswith("PORT "):
            self.stop()
            raise RuntimeError(f"metadata server did not start: {line!r}")
        self.endpoint = f"http://127.0.0.1:{int(line.split()[1])}"

    def requests(self) -> Log:
        with open(self.log.name, encoding="utf-8") as log:
            lines = [line.split(" ", 2) for line in log.read().splitlines()]
        return [(int(n), method, path) for n, method, path in lines]

    def stop(self) -> None:
        objdata.stop_server(self.proc)
        self.log.close()


@pytest.fixture(scope="module")
def imds() -> Iterator[MetadataServer]:
    server = MetadataServer()
    try:
        yield server
    finally:
        server.stop()


def credential_fetches(log: Log) -> tuple[int, set[int]]:
    """How many credential sets were fetched, and on which connections (token, role, creds)."""
    fetches = sum(
        1
        for _, method, path in log
        if method == "GET" and path.endswith("/" + "forksafe-test-role")
    )
    return fetches, {n for n, _, _ in log}


@pytest.mark.parametrize("version", VERSIONS)
def test_child_fetches_its_own_credentials(
    version: str, imds: MetadataServer, moto: objdata.MotoServer, data: objdata.DataSet
) -> None:
    keys = keys_of(data)
    config = dict(data.config, access_key_id="", secret_access_key="")
    store = Store.s3(
        objdata.BUCKET, **config, object_store=version, metadata_endpoint=imds.endpoint
    )
    start = len(imds.requests())
    warm(store, data, moto, keys["parent"])
    parent_fetches, parent_conns = credential_fetches(imds.requests()[start:])
    assert parent_fetches >= 1, "the parent fetched no credentials from the metadata endpoint"
    parent_requests = len(imds.requests()) - start
    assert len(parent_conns) < parent_requests, (
        f"the metadata endpoint saw {parent_requests} requests on {len(parent_conns)} connections: "
        "the parent's metadata client holds no idle connection"
    )
    time.sleep(0.3)  # past object_store's 100 ms back-off: the next request must refresh

    before_child = len(imds.requests())
    ok, report = run_child("os_fork", store, keys, DEADLINE)
    assert ok, report
    data.require(report["read"], keys["child"], f"child {report['pid']}")
    child_fetches, child_conns = credential_fetches(imds.requests()[before_child:])
    assert child_fetches >= 1, "the child fetched no credentials of its own"
    shared = sorted(child_conns & parent_conns)
    assert not shared, f"the child fetched its credentials on the parent's connection(s) {shared}"

    time.sleep(0.3)
    before_after = len(imds.requests())
    after = keys["parent after"]
    data.require(objdata.read_sync(store, after), after, "parent after")
    again, conns_after = credential_fetches(imds.requests()[before_after:])
    assert again >= 1, "the parent did not refresh its credentials after the child"
    assert not conns_after & child_conns, "the parent used the child's metadata connection"


# --------------------------------------------------------------------------------------------
# Negative control: object_store's plain ReqwestConnector must fail the child
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_negative_control_plain_reqwest_connector_fails_the_child(
    version: str, moto: objdata.MotoServer, data: objdata.DataSet
) -> None:
    keys = keys_of(data)
    store = Store.s3(objdata.BUCKET, **data.config, connector="reqwest", object_store=version)
    seen = len(moto.requests())
    parent = warm(store, data, moto, keys["parent"])
    ok, report = run_child("os_fork", store, keys, CONTROL_DEADLINE)
    reached = connections_for(moto.requests()[seen:], keys["child"])
    print(
        f"\nnegative control (object_store {version}, plain ReqwestConnector): child "
        f"{'SUCCEEDED' if ok else 'failed as expected'}: "
        f"{report if not ok else 'read ' + str(len(report['read'])) + ' objects'}; "
        f"connections that carried its reads: {sorted(reached)}, parent's: {sorted(parent)}"
    )
    if ok:
        pytest.fail(
            f"NEGATIVE CONTROL DID NOT FAIL: with object_store {version}'s plain ReqwestConnector "
            "a child read through the pool it inherited. The connector tests above no longer "
            "show that ForkLocalConnector is what makes them pass.",
            pytrace=False,
        )
