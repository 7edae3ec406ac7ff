"""The loop and the connection, rebuilt per process with forksafe.LOOP and forksafe.fork_local:
they pass on every fork path. (The pool is in rebuilt_pool.py: its threads change what a
C-level fork of this process can do, see there.)"""

from __future__ import annotations

import http.client
import os
from collections.abc import Iterator

import forksafe
import keepalive_server
import pytest


@pytest.fixture(scope="module")
def connection() -> Iterator[forksafe.ForkLocal[http.client.HTTPConnection]]:
    server = keepalive_server.start()
    port = server.server_address[1]
    pooled = forksafe.fork_local(lambda: http.client.HTTPConnection("127.0.0.1", port, timeout=30))
    keepalive_server.ask(pooled.get(), str(os.getpid()))
    yield pooled
    server.shutdown()


def test_loop() -> None:
    async def pid() -> int:
        return os.getpid()

    assert forksafe.LOOP.run(pid()) == os.getpid()


def test_connection(connection: forksafe.ForkLocal[http.client.HTTPConnection]) -> None:
    me = str(os.getpid())
    assert keepalive_server.ask(connection.get(), me) == (me, me)
