"""Everything that runs in a child, from the fork to its exit. Nothing here imports the parent
side: a child talks to the parent only through :mod:`.events` on its pipe.

Every child leads its own process group (so nothing it starts outlives its launch), sends its
stdout and stderr into the pipe, dumps its Python stacks there when the parent signals, runs the
:class:`Work` once, forks the next generation of a chain, and leaves.
"""

from __future__ import annotations

import atexit
import ctypes
import faulthandler
import multiprocessing.connection
import multiprocessing.process
import os
import sys
import threading
import time
import traceback
from collections.abc import Iterable
from typing import Any, Callable, NoReturn

from . import events
from .paths import ForkPath


class Work:
    """What every child runs once. Subclasses must be picklable (spawn and forkserver)."""

    exit_check = False
    """Leave through the interpreter's normal exit (and judge it) rather than ``os._exit``."""

    subject = "CODE"
    """What the reports call this work (check's ``CODE``; the pytest plugin's test function)."""

    def prepare_fresh(self) -> None:
        """In a fresh interpreter (spawn, forkserver): build what a forked child inherits."""

    def run(self, value: int) -> dict[str, Any]:
        """In a child: the work. Returns a JSON-able payload with ``ok`` (bool), and ``detail``
        when not ok; ``first_ns`` (``time.monotonic_ns()``) if the first result came earlier
        than the return. An exception counts as ``wrong`` with its traceback."""
        raise NotImplementedError

    def exit_info(self, multiprocessing_exit: bool) -> dict[str, Any]:
        """In a child about to exit: what its exit will run (JSON-able), for a hang report."""
        return {}


# --------------------------------------------------------------------------------------------
# What the engine itself started in the parent, which a plain fork of the user's program would
# not inherit: the multiprocessing children of earlier launches, and the forkserver and resource
# tracker the fresh paths started (recorded by the parent, forgotten by each child).
# --------------------------------------------------------------------------------------------

_engine_processes: list[Any] = []
_engine_helpers: set[str] = set()


def helpers_running() -> set[str]:
    """Which of multiprocessing's helper processes are running (before a launch starts)."""
    from multiprocessing import forkserver, resource_tracker

    running = set()
    if getattr(forkserver._forkserver, "_forkserver_pid", None) is not None:
        running.add("forkserver_helper")
    if getattr(resource_tracker._resource_tracker, "_pid", None) is not None:
        running.add("resource_tracker")
    return running


def claim(process: Any, before: set[str]) -> None:
    """In the parent: records a multiprocessing child the engine started, and the helpers its
    start started (they are the engine's, not the user's)."""
    _engine_processes.append(process)
    _engine_helpers.update(helpers_running() - before)


def _forget_engine_state() -> None:
    """In a child: drops the engine's multiprocessing children (multiprocessing's exit would try
    to join them: "can only join a child process") and closes the engine's helpers' pipes."""
    children = getattr(multiprocessing.process, "_children", None)
    if isinstance(children, set):
        for process in _engine_processes:
            children.discard(process)
    _engine_processes.clear()
    if not _engine_helpers:
        return
    from multiprocessing import forkserver, resource_tracker

    helpers = {
        "forkserver_helper": (forkserver._forkserver, "_forkserver_alive_fd",
                       ("_forkserver_address", "_forkserver_pid")),
        "resource_tracker": (resource_tracker._resource_tracker, "_fd", ("_pid",)),
    }  # fmt: skip
    for name in _engine_helpers:
        helper, fd_name, others = helpers[name]
        fd = getattr(helper, fd_name, None)
        if isinstance(fd, int):
            try:
                os.close(fd)
            except OSError:
                pass
        for attribute in (fd_name, *others):
            if hasattr(helper, attribute):
                setattr(helper, attribute, None)
    _engine_helpers.clear()


def forked(
    path: ForkPath, fd: int, close: Iterable[int], work: Work, value: int, depth: int
) -> NoReturn:
    """The body of a child the engine forked itself (os.fork, C-level, raw clone, from a
    thread, a chain's first generation). ``close``: the parent's descriptors it must drop."""
    code = _run(fd, close, work, value, depth, 1, fresh=False, stale=path.stale)
    _leave(fd, work, code, path.finalizes)


def multiprocessing_target(
    conn: multiprocessing.connection.Connection,
    work: Work,
    value: int,
    fresh: bool,
    close: Iterable[int],
) -> None:
    """The target of a multiprocessing child (fork, forkserver, spawn)."""
    fd = conn.fileno()
    code = _run(fd, close, work, value, 1, 1, fresh=fresh, stale=False)
    if code != 0 or not work.exit_check:
        os._exit(code)
    # multiprocessing's own normal exit: SystemExit reaches Process._bootstrap, which runs
    # util._exit_function() and threading._shutdown(), then os._exit (atexit does not run).
    events.send(fd, events.EXITING, **work.exit_info(True))
    frame: Any = sys._getframe()
    while frame is not None and frame.f_code.co_name != "_bootstrap":
        frame = frame.f_back
    if frame is not None:
        sys.setprofile(_exit_tracker(fd, frame))
    sys.exit(0)


def _enter(fd: int, close: Iterable[int], generation: int, stale: bool) -> None:
    """Sets up a child: own process group (leader), stdio into the pipe, stack dumps."""
    if generation == 1:
        try:
            os.setpgid(0, 0)
        except OSError:
            pass  # the parent may have done it already
        _forget_engine_state()
    for other in close:
        if other != fd:
            try:
                os.close(other)
            except OSError:
                pass
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    faulthandler.enable(file=fd, all_threads=True)
    faulthandler.register(events.DUMP_SIGNAL, file=fd, all_threads=True, chain=False)
    if stale:
        faulthandler.register(events.DUMP_MAIN_SIGNAL, file=fd, all_threads=False, chain=False)
    events.send(fd, events.STARTED, gen=generation)


def _attempt(work: Work, value: int) -> dict[str, Any]:
    try:
        return work.run(value)
    except BaseException:  # SystemExit and KeyboardInterrupt from the work are results too
        return {"ok": False, "detail": traceback.format_exc(), "raised": True}


def _run(
    fd: int,
    close: Iterable[int],
    work: Work,
    value: int,
    depth: int,
    generation: int,
    fresh: bool,
    stale: bool,
) -> int:
    """Runs a child (and the rest of its chain); returns the exit code it should leave with."""
    try:
        _enter(fd, close, generation, stale)
        if fresh:
            work.prepare_fresh()
            events.send(fd, events.PREPARED)
        events.send(fd, events.RESULT, **_attempt(work, value))
        if depth > 1:
            started = time.monotonic_ns()
            pid = os.fork()
            if pid == 0:
                code = _run(fd, (), work, value, depth - 1, generation + 1, False, False)
                _leave(fd, work, code)
            events.send(fd, events.FORKED, child=pid, started_ns=started)
            _, status = os.waitpid(pid, 0)
            events.send(fd, events.REAPED, child=pid, code=os.waitstatus_to_exitcode(status))
        return 0
    except BaseException:
        try:
            events.send(fd, events.ERROR, detail=traceback.format_exc())
        except BaseException:
            pass
        return 70


def _exit_tracker(fd: int, anchor: Any) -> Callable[..., None]:
    """A profile function that reports every call made straight from ``anchor``'s frame, i.e.
    each step of the exit: ``threading._shutdown``, each atexit handler, finalisers.

    It runs while the interpreter is being torn down, so it binds everything it needs."""
    send_step = events.step_sender(fd)

    def track(frame: Any, event: str, _arg: object) -> None:
        if event != "call" or frame.f_back is not anchor:
            return
        try:
            code = frame.f_code
            name = getattr(code, "co_qualname", code.co_name)
            send_step(f"{frame.f_globals.get('__name__') or '?'}.{name}")
        except BaseException:
            pass

    return track


def _leave(fd: int, work: Work, code: int, finalize: bool = True) -> NoReturn:
    """Ends a child the engine forked itself.

    With the exit check, the child exits the way ``sys.exit()`` ends a program: ``Py_Exit``
    runs threading's shutdown, the atexit handlers, finalisation and C ``exit()``. Raising
    SystemExit instead would unwind through the parent's frames that the child inherited (the
    CLI, this engine), running their ``finally`` blocks in the child. Without ``finalize`` (see
    ``paths.FINALIZES_AFTER_THREAD_FORK``) it runs the steps of that exit that call Python code,
    in the same order, then leaves through ``os._exit``."""
    if code == 0 and work.exit_check:
        try:
            info = work.exit_info(False)
            if not finalize:
                info["finalisation"] = (
                    "skipped, CPython 3.13+ cannot finalise a child forked from a thread "
                    "(threading's shutdown and the atexit handlers ran, then os._exit)"
                )
            events.send(fd, events.EXITING, **info)
            py_exit = ctypes.pythonapi.Py_Exit  # looked up before the tracker starts
            py_exit.argtypes = [ctypes.c_int]
            py_exit.restype = None
            sys.setprofile(_exit_tracker(fd, sys._getframe()))
            if finalize:
                py_exit(0)
            # Py_FinalizeEx's steps that run Python code, called from this frame (the tracker
            # reports them): threading's shutdown, then the atexit handlers.
            threading._shutdown()  # type: ignore[attr-defined]
            atexit._run_exitfuncs()
            sys.setprofile(None)
            code = _flush_std()
        except BaseException:
            code = 70
    os._exit(code)


def _flush_std() -> int:
    """Flushes sys.stdout and sys.stderr as finalisation does; 120 (Py_Exit's code) on failure."""
    code = 0
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except Exception:
            code = 120
    return code
