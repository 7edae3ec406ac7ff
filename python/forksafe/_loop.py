"""BackgroundEventLoop: an asyncio loop on a daemon thread that a forked child restarts in place."""

from __future__ import annotations

import _thread
import asyncio
import concurrent.futures
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar, cast

from ._owner import PerProcess

T = TypeVar("T")

# Loops started by each process: a child's record starts at zero without resetting anything.
# Its lock makes the count exact without a GIL (two instances may start loops at once), and was
# made by the process that counts, so no parent thread can be holding it after a fork.
_loops_started: PerProcess[int] = PerProcess()


def loops_built() -> int:
    """Loops started by this process (across all BackgroundEventLoop instances)."""
    return _loops_started.record().state or 0


def _count_loop() -> None:
    record = _loops_started.record()
    with record.lock:
        record.state = (record.state or 0) + 1


class _Running:
    """One process's loop and the ident of the thread that runs it."""

    __slots__ = ("loop", "thread_id")

    def __init__(self, loop: asyncio.AbstractEventLoop, thread_id: int) -> None:
        self.loop = loop
        self.thread_id = thread_id


class BackgroundEventLoop:
    """An asyncio event loop running on a daemon thread, one per process.

    ``run()`` checks which process is calling. In a forked child (by any fork path) it starts a
    new loop and thread in place, so every module that imported this instance keeps working.
    The inherited loop is never closed or used: its thread does not exist in the child, even
    though ``loop.is_running()`` still says True there.
    """

    def __init__(self, name: str = "forksafe-loop") -> None:
        self._name = name
        self._per_process: PerProcess[_Running] = PerProcess()

    def _running(self) -> _Running:
        record = self._per_process.record()
        running = record.state
        if running is not None:
            return running
        # The lock was created by this process: no parent thread can be holding it.
        with record.lock:
            if record.state is None:
                record.state = self._start()
            return record.state

    def _start(self) -> _Running:
        loop = asyncio.new_event_loop()
        started = _thread.allocate_lock()
        started.acquire()
        ident: list[int] = []

        def serve() -> None:
            ident.append(threading.get_ident())
            asyncio.set_event_loop(loop)
            started.release()
            loop.run_forever()

        # _thread, not threading.Thread: threading's module-level locks may have been held by
        # a parent thread at the instant of a C-level fork, which never resets them.
        _thread.start_new_thread(serve, ())
        started.acquire()
        _count_loop()
        return _Running(loop, ident[0])

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """This process's loop, started on first use."""
        return self._running().loop

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Schedules ``coro`` on this process's loop and returns a concurrent future."""
        running = self._running()
        try:
            return asyncio.run_coroutine_threadsafe(coro, running.loop)
        except TypeError:
            _close(coro)
            raise

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Runs ``coro`` on this process's loop and blocks for its result.

        On timeout (``TimeoutError``) or ``KeyboardInterrupt`` the task is cancelled and the
        exception re-raised. An exception inside the coroutine propagates with its traceback.
        Calling it from the loop's own thread raises ``RuntimeError``: ``await`` instead.
        """
        if not asyncio.iscoroutine(coro):
            raise TypeError(f"run() needs a coroutine object, got {type(coro).__name__}")
        if timeout is not None and not timeout >= 0:
            _close(coro)
            raise ValueError(f"timeout must be None or a number >= 0, got {timeout!r}")
        running = self._running()
        if threading.get_ident() == running.thread_id:
            _close(coro)
            raise RuntimeError(
                "BackgroundEventLoop.run() was called from the loop's own thread, where it "
                "would deadlock; `await` the coroutine instead"
            )
        # Lighter than run_coroutine_threadsafe (no concurrent.futures.Future, no Condition):
        # one lock handed from the loop thread back to the caller.
        call = _Call(coro)
        running.loop.call_soon_threadsafe(call.start, running.loop)
        try:
            finished = call.done.acquire(True, -1 if timeout is None else timeout)
        except BaseException:  # KeyboardInterrupt while waiting
            call.cancel(running.loop)
            raise
        if not finished:
            call.cancel(running.loop)
            raise TimeoutError(f"the coroutine did not finish within {timeout} s; it was cancelled")
        return cast(T, call.result())  # _Call holds the result of a Coroutine[Any, Any, T]

    def __repr__(self) -> str:
        return f"<BackgroundEventLoop {self._name!r}>"


class _Call:
    """One run(): started on the loop thread, finished by releasing ``done``."""

    __slots__ = ("cancelled", "coro", "done", "task")

    def __init__(self, coro: Coroutine[Any, Any, Any]) -> None:
        self.coro: Coroutine[Any, Any, Any] | None = coro
        self.done = _thread.allocate_lock()
        self.done.acquire()
        self.task: asyncio.Task[Any] | None = None
        self.cancelled = False

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        coro, self.coro = self.coro, None
        assert coro is not None
        if self.cancelled:
            coro.close()
            self.done.release()
            return
        try:
            self.task = loop.create_task(coro)
        except BaseException:
            coro.close()
            self.done.release()
            raise
        self.task.add_done_callback(self._finish)

    def _finish(self, _task: asyncio.Task[Any]) -> None:
        self.done.release()

    def cancel(self, loop: asyncio.AbstractEventLoop) -> None:
        def cancel_on_loop() -> None:
            self.cancelled = True
            if self.task is not None:
                self.task.cancel()

        loop.call_soon_threadsafe(cancel_on_loop)

    def result(self) -> Any:
        if self.task is None:
            raise concurrent.futures.CancelledError()
        return self.task.result()


def _close(coro: object) -> None:
    """Closes a coroutine we refuse to run, so it does not warn 'never awaited'."""
    close = getattr(coro, "close", None)
    if callable(close):
        close()
