"""The thread pool, rebuilt per process with forksafe.fork_local: each child gets its own pool,
so the test passes. On the paths that skip CPython's fork handling (c_fork, raw_syscall) the
child still lists the parent's pool thread, and concurrent.futures' exit hook joins it: the
child hangs at exit. No rebuild in Python can change that: fork such processes with os.fork.
"""

from __future__ import annotations

import concurrent.futures
import os

import forksafe
import pytest


@pytest.fixture(scope="module")
def pool() -> forksafe.ForkLocal[concurrent.futures.ThreadPoolExecutor]:
    executor = forksafe.fork_local(lambda: concurrent.futures.ThreadPoolExecutor(max_workers=1))
    executor.get().submit(int).result()
    return executor


def test_pool(pool: forksafe.ForkLocal[concurrent.futures.ThreadPoolExecutor]) -> None:
    assert pool.get().submit(os.getpid).result() == os.getpid()
