"""The fork suite's hang detector and the work every forked child does.

``spawn_child(fn, *args, method=...)`` forks (``os.fork``, a C-level ``fork()`` through
``ctypes.PyDLL``, or a raw ``clone`` system call), runs ``fn`` in the child and waits for it with
a deadline. The child streams JSON lines into a pipe -- progress lines as it goes, then its report
or the traceback of what it raised -- and leaves with ``os._exit`` (after a C-level or raw fork
CPython never ran ``PyOS_AfterFork_Child``, and no test-runner teardown may run twice). The parent
polls the pipe and ``waitpid(WNOHANG)``; on expiry it SIGKILLs the child. ``ChildOutcome.require()``
turns a hang, an error or a missing report into ``pytest.fail`` with everything the child wrote.

``exercise(v)`` is the work every child does (both layers: the background loop with native
awaitables, the sync native path, a fork-local value); ``check(report, v)`` verifies its report
against ``v`` and against the state of the process that forked it (or, for nested forks, against
the report of the generation above: ``check(report, v, parent)``).
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import json
import os
import platform
import select
import signal
import threading
import time
import traceback
import uuid
import warnings
from typing import Any, Callable

import forksafe
import pytest

CHILD_DEADLINE = 20.0
"""Seconds a forked child gets before the detector kills it and fails the test."""

METHODS = ("os.fork", "c-fork", "raw-syscall")
"""Fork paths: Python's os.fork; libc fork() from C (no Python at-fork machinery and no
PyOS_AfterFork_Child); a raw clone system call (no pthread_atfork handlers either)."""

# PyDLL, not CDLL: the GIL stays held across the call, so no other Python thread can own it at
# the instant of fork (the child could never take it back).
_LIBC = ctypes.PyDLL(None, use_errno=True)
_LIBC.fork.restype = ctypes.c_int
_LIBC.fork.argtypes = []
_LIBC.syscall.restype = ctypes.c_long

C_FORK_SETTLE = 0.1
"""Seconds ``spawn_child`` sleeps (GIL released) before a C-level or raw fork: see there."""

_SYS_CLONE = {"x86_64": 56, "amd64": 56, "aarch64": 220, "arm64": 220}
_SIGCHLD = 17  # on x86_64 and aarch64

# --------------------------------------------------------------------------------------------
# Fork paths
# --------------------------------------------------------------------------------------------


def _os_fork() -> int:
    with warnings.catch_warnings():
        # Python >= 3.12 warns about forking a multi-threaded process; forking one is the point.
        warnings.simplefilter("ignore", DeprecationWarning)
        return os.fork()


def _c_fork() -> int:
    pid = _LIBC.fork()
    if pid < 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"fork() failed: {os.strerror(errno)}")
    return pid


def _raw_fork() -> int:
    machine = platform.machine().lower()
    number = _SYS_CLONE.get(machine)
    if number is None:
        raise RuntimeError(f"no clone system call number known for machine {machine!r}")
    zero = ctypes.c_long(0)
    # clone(SIGCHLD, 0, 0, 0, 0): a plain fork that bypasses glibc's fork() wrapper entirely.
    pid = _LIBC.syscall(ctypes.c_long(number), ctypes.c_long(_SIGCHLD), zero, zero, zero, zero)
    if pid < 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"clone system call failed: {os.strerror(errno)}")
    return pid


_FORKS: dict[str, Callable[[], int]] = {
    "os.fork": _os_fork,
    "c-fork": _c_fork,
    "raw-syscall": _raw_fork,
}

# --------------------------------------------------------------------------------------------
# Progress lines
# --------------------------------------------------------------------------------------------

_sink: Callable[[str], None] | None = None


def set_progress_sink(sink: Callable[[str], None] | None) -> None:
    """Where ``progress()`` goes in this process (a forked child's pipe, an mp connection)."""
    global _sink
    _sink = sink


def progress(message: str) -> None:
    """Reports how far this child got; shown as its last words if it hangs."""
    sink = _sink
    if sink is not None:
        sink(f"[pid {os.getpid()}] {message}")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _send(fd: int, message: dict[str, Any]) -> None:
    _write_all(fd, json.dumps(message).encode() + b"\n")


# --------------------------------------------------------------------------------------------
# The hang detector
# --------------------------------------------------------------------------------------------


class ChildOutcome:
    """What a forked child did: its report, or its error, or that it hung."""

    def __init__(
        self, pid: int, method: str, deadline: float, hung: bool, status: int, raw: bytes
    ) -> None:
        self.pid = pid
        self.method = method
        self.deadline = deadline
        self.hung = hung
        self.exit_code = None if hung else os.waitstatus_to_exitcode(status)
        self.raw = raw
        self.progress: list[str] = []
        self.report: Any = None
        self.has_report = False
        self.error: str | None = None
        self.garbled: list[str] = []
        for line in raw.decode(errors="replace").splitlines():
            try:
                message = json.loads(line)
            except ValueError:
                self.garbled.append(line)
                continue
            if "progress" in message:
                self.progress.append(message["progress"])
            elif "report" in message:
                self.report = message["report"]
                self.has_report = True
            elif "error" in message:
                self.error = message["error"]

    def last_words(self) -> str:
        lines = list(self.progress) + [f"(unparsed) {line}" for line in self.garbled]
        if self.error is not None:
            lines.append(f"error:\n{self.error}")
        return "\n".join(lines) if lines else "(nothing)"

    def describe(self) -> str:
        if self.hung:
            return (
                f"child hung: pid {self.pid} ({self.method}) sent no report within "
                f"{self.deadline:.0f} s and was killed with SIGKILL; last words:\n"
                f"{self.last_words()}"
            )
        if self.error is not None:
            return (
                f"child raised: pid {self.pid} ({self.method}), exit code {self.exit_code}; "
                f"last words:\n{self.last_words()}"
            )
        if not self.has_report or self.exit_code != 0:
            return (
                f"child died without a clean report: pid {self.pid} ({self.method}), exit code "
                f"{self.exit_code}, report present: {self.has_report}; last words:\n"
                f"{self.last_words()}"
            )
        return f"child ok: pid {self.pid} ({self.method})"

    @property
    def ok(self) -> bool:
        return not self.hung and self.error is None and self.has_report and self.exit_code == 0

    def require(self) -> Any:
        """The child's report; ``pytest.fail`` on a hang, an error or a missing report."""
        if not self.ok:
            pytest.fail(self.describe(), pytrace=False)
        return self.report

    def summary(self) -> dict[str, Any]:
        """A JSON-able summary, for a child that reports its own children upward."""
        return {
            "pid": self.pid,
            "method": self.method,
            "ok": self.ok,
            "hung": self.hung,
            "exit_code": self.exit_code,
            "report": self.report,
            "description": self.describe(),
        }


def _child_main(fd: int, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
    """Runs in the forked child; never returns."""
    code = 70
    try:
        set_progress_sink(lambda line: _send(fd, {"progress": line}))
        try:
            progress(f"child started ({fn.__name__})")
            report = fn(*args)
            _send(fd, {"report": report})
            code = 0
        except BaseException:
            _send(fd, {"error": traceback.format_exc()})
            code = 1
    finally:
        os._exit(code)


def spawn_child(
    fn: Callable[..., Any],
    *args: Any,
    method: str = "os.fork",
    deadline: float = CHILD_DEADLINE,
) -> ChildOutcome:
    """Forks with ``method``, runs ``fn(*args)`` in the child, waits at most ``deadline`` s.

    Never raises for what the child did: a hang, an error or a crash is in the outcome.
    """
    fork = _FORKS[method]
    if method != "os.fork":
        # Only os.fork's child runs PyOS_AfterFork_Child, which recreates the GIL. After a
        # C-level or raw fork, a thread that was *waiting* for the GIL at the instant of fork
        # (the GIL is held: PyDLL) leaves a phantom waiter in the GIL's condition variable, and
        # the child's first GIL hand-off (e.g. to its new loop thread) deadlocks in glibc. That is
        # CPython's hazard, with or without forksafe: let every other thread go idle first.
        time.sleep(C_FORK_SETTLE)
    rfd, wfd = os.pipe()
    try:
        pid = fork()
    except BaseException:
        os.close(rfd)
        os.close(wfd)
        raise
    if pid == 0:
        os.close(rfd)
        _child_main(wfd, fn, args)
    os.close(wfd)
    try:
        return _wait(pid, rfd, method, deadline)
    finally:
        os.close(rfd)


def _drain(fd: int, into: bytearray) -> bool:
    """Reads what is available; True at end of file."""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            return False
        if not chunk:
            return True
        into.extend(chunk)


def _wait(pid: int, rfd: int, method: str, deadline: float) -> ChildOutcome:
    os.set_blocking(rfd, False)
    received = bytearray()
    expires = time.monotonic() + deadline
    eof = False
    while True:
        remaining = expires - time.monotonic()
        if not eof:
            readable, _, _ = select.select([rfd], [], [], max(0.0, min(0.05, remaining)))
            if readable:
                eof = _drain(rfd, received)
        else:
            time.sleep(min(0.01, max(0.0, remaining)))
        done, status = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            # A descendant may still hold the write end: read what is there, do not wait for EOF.
            _drain(rfd, received)
            return ChildOutcome(pid, method, deadline, False, status, bytes(received))
        if remaining <= 0:
            os.kill(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
            _drain(rfd, received)
            return ChildOutcome(pid, method, deadline, True, status, bytes(received))


def run_child(
    fn: Callable[..., Any],
    *args: Any,
    method: str = "os.fork",
    deadline: float = CHILD_DEADLINE,
) -> Any:
    """``spawn_child(...).require()``: the child's report, or the test fails."""
    return spawn_child(fn, *args, method=method, deadline=deadline).require()


# --------------------------------------------------------------------------------------------
# The work every child does, and its check
# --------------------------------------------------------------------------------------------


def _make_client() -> tuple[str, int]:
    return ("client", os.getpid())


CLIENT = forksafe.fork_local(_make_client)
"""A per-process "client": the parent builds its own first, every child must build a new one."""


def new_value(tag: str) -> str:
    """A value unique to one child (or one parent check)."""
    return f"{tag}-{uuid.uuid4().hex[:12]}"


async def probe(v: Any) -> tuple[Any, Any, int]:
    """Native awaitables through this process's runtime, awaited on this process's loop."""
    echoed = await forksafe.testing.echo(v)
    slept = await forksafe.testing.sleep(0.01, v)
    worker_pid = await forksafe.testing.pid()
    return echoed, slept, worker_pid


def exercise(v: Any) -> dict[str, Any]:
    """Both layers, with progress lines; returns a JSON-able report for ``check``."""
    progress(f"exercise({v!r}): forksafe.run(probe)")
    echoed, slept, worker_pid = forksafe.run(probe(v))
    progress("exercise: forksafe.testing.echo_sync")
    echoed_sync = forksafe.testing.echo_sync(v)
    progress("exercise: fork_local")
    client = CLIENT.get()
    progress("exercise: runtime_info")
    report = {
        "v": v,
        "pid": os.getpid(),
        "echo": echoed,
        "sleep": slept,
        "worker_pid": worker_pid,
        "echo_sync": echoed_sync,
        "fork_local": list(client),
        "loop_id": id(forksafe.LOOP.loop),
        "info": forksafe.runtime_info(),
    }
    progress("exercise: done")
    # Tuples become lists: the same shape whether it crossed a pipe as JSON or a pickle.
    return json.loads(json.dumps(report))


def check_values(report: dict[str, Any], v: Any) -> None:
    """The values a process computed with ``exercise(v)`` are right for that process."""
    assert isinstance(report, dict), f"not a report: {report!r}"
    pid = report["pid"]
    assert report["v"] == v, report
    assert report["echo"] == v, f"forksafe.run(echo) returned {report['echo']!r}, not {v!r}"
    assert report["sleep"] == v, f"awaited sleep returned {report['sleep']!r}, not {v!r}"
    assert report["echo_sync"] == v, f"echo_sync returned {report['echo_sync']!r}, not {v!r}"
    assert report["worker_pid"] == pid, (
        f"a tokio worker of process {pid} saw PID {report['worker_pid']}"
    )
    assert report["fork_local"] == ["client", pid], (
        f"process {pid} got fork_local value {report['fork_local']!r}"
    )
    info = report["info"]
    assert info["pid"] == pid, info
    assert info["runtimes_built"] == 1, info
    assert info["guard"] in ("wipeonfork", "syscall"), info


def snapshot() -> dict[str, Any]:
    """The calling process's own state, in the shape of an ``exercise`` report (no probes)."""
    return json.loads(
        json.dumps(
            {
                "pid": os.getpid(),
                "fork_local": list(CLIENT.get()),
                "loop_id": id(forksafe.LOOP.loop),
                "info": forksafe.runtime_info(),
            }
        )
    )


def check(report: dict[str, Any], v: Any, parent: dict[str, Any] | None = None) -> None:
    """Verifies a child's ``exercise(v)`` report against ``v`` and its parent's own report.

    ``parent`` defaults to the calling process (which must have built its state before the
    fork, as the ``parent_report`` fixture does); nested tests pass the generation above.
    """
    if parent is None:
        parent = snapshot()
    check_values(report, v)
    pid = report["pid"]
    assert pid != parent["pid"], f"the child reported its parent's PID {pid}"
    # The parent built its own client earlier; the child must not have reused it.
    assert parent["fork_local"] == ["client", parent["pid"]], parent
    assert report["fork_local"] != parent["fork_local"], report
    # A new loop object in the child (the parent's stays alive in the child's memory, leaked).
    assert report["loop_id"] != parent["loop_id"], "the child reused its parent's loop"
    info, parent_info = report["info"], parent["info"]
    assert info["loops_built"] == 1, f"child {pid} started {info['loops_built']} loops"
    assert info["depth"] == parent_info["depth"] + 1, (info, parent_info)
    expected_inherited = [[parent["pid"], 1]] + [
        [ancestor, back + 1] for ancestor, back in parent_info["inherited_runtimes"]
    ]
    assert info["inherited_runtimes"] == expected_inherited, (info, parent_info)
    assert info["guard"] == parent_info["guard"], (info, parent_info)
    assert info["guard_reason"] == parent_info["guard_reason"], (info, parent_info)


def check_parent(report: dict[str, Any], v: Any) -> None:
    """Verifies ``exercise(v)`` run in the calling process itself."""
    check_values(report, v)
    assert report["pid"] == os.getpid(), report
    assert report["info"]["loops_built"] >= 1, report


def exercise_parent() -> dict[str, Any]:
    """Runs ``exercise`` in this process (building its runtime, loop and client), checked."""
    v = new_value("parent")
    report = exercise(v)
    check_parent(report, v)
    return report


# --------------------------------------------------------------------------------------------
# Before a raw fork system call
# --------------------------------------------------------------------------------------------


def quiesce() -> None:
    """Lets every other thread of this process go idle before a raw ``clone``.

    A raw fork skips glibc's fork handlers (malloc's arena locks are not reset), so no other
    thread may be doing anything at that instant. Python threads other than the caller must be
    gone; forksafe's loop thread and tokio workers must be parked.
    """
    me = threading.current_thread()
    for thread in threading.enumerate():
        if thread is not me:
            thread.join(timeout=10)
    busy = [t.name for t in threading.enumerate() if t is not me]
    if busy:
        pytest.fail(f"cannot quiesce before a raw fork: Python threads still running: {busy}")
    # One round trip through the loop and the runtime, then let both park.
    assert forksafe.run(asyncio.sleep(0, "idle")) == "idle"
    assert forksafe.testing.echo_sync("idle") == "idle"
    gc.collect()
    time.sleep(0.3)
