"""The Python-side alternative to ``forksafe.LOOP``: a library's own background loop whose
``run()`` checks the PID (three lines, as CPython's asyncio/events.py checks
``_running_loop.pid``) and starts a fresh loop in a child. docs/extension-authors.md ("Which way
in") shows this class; here it runs forksafe's own awaitables on every fork path."""

from __future__ import annotations

import _thread
import asyncio
import os
from collections.abc import Coroutine
from typing import Any, TypeVar

import forksafe
import forkutil
import pytest
from forksafe import _native

T = TypeVar("T")


class OwnLoop:
    """A library's background loop, as LanceDB keeps one, made fork-safe by a PID check."""

    def __init__(self) -> None:
        self._pid = -1
        self._loop: asyncio.AbstractEventLoop | None = None

    def _start(self) -> None:
        loop = asyncio.new_event_loop()
        started = _thread.allocate_lock()
        started.acquire()

        def serve() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(started.release)
            loop.run_forever()

        # _thread, not threading.Thread: a C-level fork never resets threading's locks.
        _thread.start_new_thread(serve, ())
        started.acquire()
        self._loop = loop  # the inherited loop is dropped unclosed: never close it in a child

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._pid != os.getpid():  # the three lines: a forked child (or the first call)
            self._start()
            self._pid = os.getpid()
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=10)


LOOP = OwnLoop()
_KEEP: list[object] = []  # the loops a child inherited: kept, never collected


async def _work(x: int) -> tuple[int, int]:
    # A forksafe awaitable (Rust future on this process's runtime) on the library's own loop.
    echoed = await _native.testing.echo(x)
    return echoed, os.getpid()


def _child() -> dict[str, Any]:
    _KEEP.append(LOOP._loop)
    echoed, pid = LOOP.run(_work(7))
    again, _ = LOOP.run(_work(8))
    return {"echoed": echoed, "again": again, "pid": pid, "me": os.getpid()}


@pytest.mark.parametrize("path", forkutil.PATHS)
def test_a_pid_check_in_your_own_loops_run_is_enough(path: str) -> None:
    assert LOOP.run(_work(1)) == (1, os.getpid())
    report = forkutil.run_child(_child, path=path)
    assert report["echoed"] == 7 and report["again"] == 8, report
    assert report["pid"] == report["me"] != os.getpid(), report
    # The parent's loop is untouched.
    assert LOOP.run(_work(2)) == (2, os.getpid())
    assert forksafe.runtime_info()["runtimes_built"] == 1
