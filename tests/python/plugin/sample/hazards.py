"""The sample suite: fixtures that hold state a forked child cannot use. Every test passes
without the plugin; with it, each fails in the children."""

from __future__ import annotations

import asyncio
import concurrent.futures
import http.client
import os
import threading
from collections.abc import Iterator

import keepalive_server
import pytest


@pytest.fixture(scope="module")
def pool() -> Iterator[concurrent.futures.ThreadPoolExecutor]:
    executor = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    executor.submit(int).result()  # its worker thread exists before any fork
    yield executor
    executor.shutdown()


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """A background loop as extensions write it: started once, no PID check."""
    background = asyncio.new_event_loop()
    thread = threading.Thread(target=background.run_forever, name="naive-loop", daemon=True)
    thread.start()
    yield background
    background.call_soon_threadsafe(background.stop)
    thread.join()
    background.close()


@pytest.fixture(scope="module")
def connection() -> Iterator[http.client.HTTPConnection]:
    """A keep-alive connection pool of one, opened by the parent."""
    server = keepalive_server.start()
    pooled = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=30)
    keepalive_server.ask(pooled, str(os.getpid()))
    yield pooled
    pooled.close()
    server.shutdown()


def test_pool(pool: concurrent.futures.ThreadPoolExecutor) -> None:
    assert pool.submit(os.getpid).result() == os.getpid()


def test_loop(loop: asyncio.AbstractEventLoop) -> None:
    async def pid() -> int:
        return os.getpid()

    assert asyncio.run_coroutine_threadsafe(pid(), loop).result() == os.getpid()


def test_connection(connection: http.client.HTTPConnection) -> None:
    me = str(os.getpid())
    assert keepalive_server.ask(connection, me) == (me, me), "answered on another's connection"
