"""The fork paths: one row per way a child can be started, with everything the engine and the
reports need to know about it. Code asks the row (``path.stale``, ``path.fresh``...), never the
name."""

from __future__ import annotations

import ctypes
import os
import platform
import signal
import sys
import threading
from dataclasses import dataclass
from typing import Callable, NoReturn

ChildBody = Callable[[], NoReturn]
"""What a forked child runs: it never returns (it leaves through ``os._exit`` or ``Py_Exit``)."""

Fork = Callable[[ChildBody], int]
"""Forks; the child runs the body, the parent gets the child's PID."""

FINALIZES_AFTER_THREAD_FORK = sys.version_info < (3, 13)
"""Whether a child forked from a non-main thread can leave through ``Py_Exit``.

Not on CPython 3.13 and later: ``Py_Finalize`` (``resolve_final_tstate``, gh-120838) carries on
with ``_PyRuntime.main_tstate``, the thread state of the thread that started the interpreter.
A fork from another thread makes the forking thread the child's main thread
(``PyOS_AfterFork_Child`` resets ``_PyRuntime.main_thread``) and deletes every other thread
state, but leaves ``main_tstate`` pointing at the deleted one. Finalisation then swaps to a dead
thread state: the child dies of SIGSEGV before its first exit step. If a thread started in the
child has been given that (preallocated) thread state again, as forksafe's loop thread is,
finalisation runs on that thread's state instead: on 3.15 the child hangs in
``threading._shutdown``. Measured on 3.13.18, 3.14.10 and 3.15.2. Only ``Py_Exit`` (from C, or
here) meets it: when the forking thread of a Python program returns, the child ends without
finalising. Such children run the exit's Python steps themselves (``child._leave``)."""

_SYS_CLONE = {"x86_64": 56, "aarch64": 220}.get(platform.machine())

_FRESH_HINT = (
    "a fresh interpreter (setup, then CODE): this fails without any fork, so it is not a fork "
    "problem (or --setup lacks what CODE needs)"
)


@dataclass(frozen=True)
class ForkPath:
    """One way to start a child."""

    name: str
    hint: str
    """Who starts children this way (check's report)."""
    fork: Fork | None = None
    """Forks the child (paths the engine forks itself); None for multiprocessing's paths."""
    context: str | None = None
    """multiprocessing's start method, for the paths multiprocessing starts."""
    fresh: bool = False
    """The child is a fresh interpreter (it inherits nothing; it builds what it needs)."""
    stale: bool = False
    """The child never ran ``PyOS_AfterFork_Child``: Python's thread states are still the
    parent's (it lists threads that do not exist here, and another thread's state may still be
    attached to the interpreter)."""
    finalizes: bool = True
    """The child can leave through ``Py_Exit`` (see :data:`FINALIZES_AFTER_THREAD_FORK`)."""
    chain: bool = False
    """A launch is a chain of ``depth`` generations, each forked by the one above."""
    own_child: bool = True
    """The child is the engine's own child (a forkserver worker is the server's)."""
    python_hooks: bool = True
    """The fork runs the ``os.register_at_fork`` handlers (CPython's fork handling)."""
    c_hooks: bool = True
    """The fork runs the ``pthread_atfork`` handlers (libc's ``fork()``)."""


def _plain(fork: Callable[[], int]) -> Fork:
    """A fork function that returns 0 in the child, as one that runs the child's body."""

    def start(body: ChildBody) -> int:
        pid = fork()
        if pid == 0:
            body()
        return pid

    return start


def _c_fork() -> int:
    # PyDLL keeps this thread attached to the interpreter across the call (holding the GIL on a
    # GIL build), so the child's one thread needs nothing from the threads fork() left behind.
    # With CDLL it would detach, and attaching again in the child could wait for one of them:
    # the GIL's owner, or a free-threaded build's stop-the-world pause.
    return int(ctypes.PyDLL(None).fork())


def _raw_clone() -> int:
    if _SYS_CLONE is None:
        raise OSError(f"raw clone is not wired up for {platform.machine()}")
    libc = ctypes.PyDLL(None)
    libc.syscall.restype = ctypes.c_long
    # Full-width longs: a bare Python int goes into a variadic call as a 32-bit int.
    zero = ctypes.c_long(0)
    pid = libc.syscall(
        ctypes.c_long(_SYS_CLONE), ctypes.c_long(signal.SIGCHLD), zero, zero, zero, zero
    )
    if pid < 0:
        raise OSError(ctypes.get_errno(), "raw clone failed")
    return int(pid)


def _from_a_thread(body: ChildBody) -> int:
    """os.fork() from a new thread: in the child that thread becomes the main thread."""
    pids: list[int] = []
    errors: list[BaseException] = []

    def fork_here() -> None:
        try:
            pid = os.fork()
        except BaseException as exc:
            errors.append(exc)
            return
        if pid == 0:
            body()
        pids.append(pid)

    thread = threading.Thread(target=fork_here, name="forksafe-forker")
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return pids[0]


ROWS = (
    ForkPath(
        "os_fork",
        "os.fork(): gunicorn --preload workers, celery prefork, PySpark workers",
        fork=_plain(os.fork),
    ),
    ForkPath(
        "mp_fork",
        "multiprocessing's fork start method (Pool, Process, PyTorch DataLoader workers); "
        "get_context('forkserver') or 'spawn' does not inherit threads",
        context="fork",
    ),
    ForkPath(
        "c_fork",
        "a C-level fork() that skips Python's fork handling: uWSGI workers (uWSGI's "
        "--lazy-apps loads the app in each worker, after the fork)",
        fork=_plain(_c_fork),
        stale=True,
        python_hooks=False,
    ),
    ForkPath(
        "raw_syscall",
        "a raw clone system call that skips every fork handler, C and Python",
        fork=_plain(_raw_clone),
        stale=True,
        python_hooks=False,
        c_hooks=False,
    ),
    ForkPath(
        "thread_fork",
        "os.fork() called from a thread other than the main thread",
        fork=_from_a_thread,
        finalizes=FINALIZES_AFTER_THREAD_FORK,
    ),
    ForkPath(
        "nested",
        "a forked child that forks again (a DataLoader inside a celery task)",
        fork=_plain(os.fork),
        chain=True,
    ),
    ForkPath("forkserver", _FRESH_HINT, context="forkserver", fresh=True, own_child=False),
    ForkPath("spawn", _FRESH_HINT, context="spawn", fresh=True),
)

PATHS = {row.name: row for row in ROWS}
"""Every path by name, in the order of the reports."""

FORK_PATHS = tuple(row.name for row in ROWS if not row.fresh)
"""The paths that fork: children inherit the parent's memory (stress runs these)."""

FRESH_PATHS = tuple(row.name for row in ROWS if row.fresh)
"""The start methods that begin from a fresh interpreter: for comparison, nothing inherited."""
