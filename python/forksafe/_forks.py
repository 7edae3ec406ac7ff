"""Every fork path forksafe covers, and a child that proves both layers work after it.

Shared by ``python -m forksafe stress`` and ``doctor``. Each fork runs its child under a hang
detector: the parent waits on a pipe with a deadline, SIGKILLs a child that misses it, and keeps
whatever the child wrote last. Children always leave with ``os._exit``: after a C-level or raw
fork CPython never ran its after-fork code, and nothing of the parent's must run twice.
"""

from __future__ import annotations

import ctypes
import json
import multiprocessing
import os
import platform
import select
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Callable

import forksafe
from forksafe import testing

METHODS = ("os_fork", "mp_fork", "c_fork", "raw_syscall", "thread_fork", "nested")

_SYS_CLONE = {"x86_64": 56, "aarch64": 220}.get(platform.machine())

# The child's per-process client: proves fork_local rebuilds (its value carries the builder's PID).
_CLIENT = forksafe.fork_local(lambda: ("client", os.getpid()))


def warm_up() -> None:
    """Uses every layer in this process, so that children inherit live state to recover from."""
    check_layers(0)


def check_layers(value: int) -> dict[str, object]:
    """Runs async work through both layers; returns what was seen and when the first result came."""

    async def first() -> int:
        return await testing.echo(value)

    async def more() -> tuple[int, int]:
        return await testing.sleep(0.001, value), await testing.pid()

    echoed = forksafe.run(first())
    first_ns = time.monotonic_ns()
    slept, worker_pid = forksafe.run(more())
    pid = os.getpid()
    seen = {
        "echo": echoed,
        "sleep": slept,
        "worker_pid": worker_pid,
        "echo_sync": testing.echo_sync(value),
        "client_pid": _CLIENT.get()[1],
        "pid": pid,
        "first_ns": first_ns,
    }
    expected = {"echo": value, "sleep": value, "echo_sync": value, "worker_pid": pid}
    expected["client_pid"] = pid
    seen["ok"] = all(seen[k] == v for k, v in expected.items())
    return seen


@dataclass
class Outcome:
    """What one forked child did."""

    method: str
    value: int
    status: str  # "ok", "hung", "wrong", "crashed"
    forks: int = 1  # a nested chain is several forks
    latency_ms: float | None = None
    detail: str = ""
    reports: list[dict[str, object]] = field(default_factory=list)


def _write(fd: int, report: dict[str, object]) -> None:
    os.write(fd, (json.dumps(report) + "\n").encode())


def _child(fd: int, value: int, depth: int = 1) -> None:
    """The body of every child; never returns."""
    code = 0
    try:
        _write(fd, {"progress": "started", "pid": os.getpid()})
        report = check_layers(value)
        report["depth"] = depth
        _write(fd, report)
        if depth > 1:
            pid = os.fork()
            if pid == 0:
                _child(fd, value, depth - 1)
            code = _reap(pid, deadline=time.monotonic() + 10.0)
    except BaseException as exc:  # report everything, including SystemExit
        try:
            _write(fd, {"error": f"{type(exc).__name__}: {exc}"})
        finally:
            code = 1
    os._exit(code)


def _reap(pid: int, deadline: float) -> int:
    """Waits for ``pid`` until ``deadline``; kills it on expiry. Returns 0 if it exited cleanly."""
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return 0 if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0 else 1
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return 1
        time.sleep(0.001)


def _c_fork() -> int:
    # PyDLL keeps the GIL held across the call, so no other Python thread owns it at the instant
    # of fork (with CDLL the child could never take the GIL back).
    return int(ctypes.PyDLL(None).fork())


def _raw_fork() -> int:
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


class _Child:
    """A forked child: its PID and how to reap it."""

    def __init__(self, pid: int, process: multiprocessing.process.BaseProcess | None = None):
        self.pid = pid
        self._process = process

    def reap(self, deadline: float) -> int:
        """Waits until ``deadline``, killing the child on expiry; 0 if it exited cleanly."""
        if self._process is None:
            return _reap(self.pid, deadline)
        # multiprocessing keeps its own books: reap through it, or it waits on the PID later.
        self._process.join(max(0.0, deadline - time.monotonic()))
        if self._process.exitcode is None:
            self._process.kill()
            self._process.join()
            return 1
        return 0 if self._process.exitcode == 0 else 1


def _spawn(method: str, fd: int, value: int, depth: int) -> _Child:
    """Forks one child by ``method``; the child runs ``_child`` and never returns here."""
    if method == "mp_fork":
        ctx = multiprocessing.get_context("fork")
        proc = ctx.Process(target=_child, args=(fd, value), daemon=True)
        proc.start()
        assert proc.pid is not None
        return _Child(proc.pid, proc)
    if method == "thread_fork":
        box: list[int] = []

        def fork_here() -> None:
            pid = os.fork()
            if pid == 0:
                _child(fd, value)
            box.append(pid)

        thread = threading.Thread(target=fork_here, name="forksafe-forker")
        thread.start()
        thread.join()
        return _Child(box[0])
    fork: Callable[[], int] = {"c_fork": _c_fork, "raw_syscall": _raw_fork}.get(method, os.fork)
    pid = fork()
    if pid == 0:
        _child(fd, value, depth if method == "nested" else 1)
    return _Child(pid)


@dataclass
class _Running:
    method: str
    value: int
    child: _Child
    fd: int
    started_ns: int
    deadline: float
    expected_reports: int
    buffer: bytes = b""


def run_forks(
    method: str,
    count: int,
    *,
    concurrency: int = 4,
    depth: int = 4,
    deadline: float = 10.0,
    first_value: int = 1,
) -> Iterator[Outcome]:
    """Forks ``count`` children by ``method`` (``count`` chains of ``depth`` for "nested"),
    at most ``concurrency`` at once, and yields each child's outcome as it ends."""
    if method not in METHODS:
        raise ValueError(f"unknown fork method {method!r}; choose from {', '.join(METHODS)}")
    running: dict[int, _Running] = {}
    next_value = first_value
    launched = 0
    reports_per_child = depth if method == "nested" else 1
    while launched < count or running:
        while launched < count and len(running) < max(1, concurrency):
            read_fd, write_fd = os.pipe()
            started = time.monotonic_ns()
            spawned = _spawn(method, write_fd, next_value, depth)
            os.close(write_fd)
            running[read_fd] = _Running(
                method, next_value, spawned, read_fd, started,
                time.monotonic() + deadline * reports_per_child, reports_per_child,
            )  # fmt: skip
            next_value += 1
            launched += 1
        ready, _, _ = select.select(list(running), [], [], 0.05)
        for fd in ready:
            chunk = os.read(fd, 65536)
            child = running[fd]
            if chunk:
                child.buffer += chunk
                continue
            del running[fd]  # EOF: every holder of the pipe (the whole chain) has exited
            os.close(fd)
            yield _judge(child, child.child.reap(time.monotonic() + deadline))
        now = time.monotonic()
        for fd, child in list(running.items()):
            if now > child.deadline:
                del running[fd]
                _kill_descendants(child.buffer)
                child.child.reap(0.0)  # already past the deadline: kills and reaps
                os.close(fd)
                yield Outcome(
                    child.method, child.value, "hung", forks=child.expected_reports,
                    detail="last words: " + _last_words(child.buffer),
                    reports=_reports(child.buffer),
                )  # fmt: skip


def _kill_descendants(buffer: bytes) -> None:
    """Kills every process of a hung chain that announced itself (nested forks)."""
    for line in buffer.decode(errors="replace").splitlines():
        try:
            pid = json.loads(line).get("pid")
        except ValueError:
            continue
        if isinstance(pid, int) and pid > 1:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _last_words(buffer: bytes) -> str:
    text = buffer.decode(errors="replace").strip()
    return text.splitlines()[-1] if text else "(nothing)"


def _reports(buffer: bytes) -> list[dict[str, object]]:
    """The complete result reports in a child's output (progress lines left out)."""
    reports = []
    for line in buffer.decode(errors="replace").splitlines():
        try:
            report = json.loads(line)
        except ValueError:
            continue  # a line cut short by a crash
        if isinstance(report, dict) and "ok" in report:
            reports.append(report)
    return reports


def _judge(child: _Running, exit_code: int) -> Outcome:
    n = child.expected_reports
    reports = []
    for line in child.buffer.decode(errors="replace").splitlines():
        try:
            reports.append(json.loads(line))
        except ValueError:
            return Outcome(
                child.method, child.value, "crashed", forks=n, detail=f"garbled report {line!r}"
            )
    results = [r for r in reports if "ok" in r]
    errors = [r["error"] for r in reports if "error" in r]
    if errors:
        return Outcome(
            child.method, child.value, "wrong", forks=n, detail=str(errors[0]), reports=results
        )
    if len(results) < child.expected_reports or exit_code != 0:
        return Outcome(
            child.method, child.value, "crashed", forks=n,
            detail=f"exit code {exit_code}; {len(results)}/{child.expected_reports} reports; "
            f"last words: {_last_words(child.buffer)}",
            reports=results,
        )  # fmt: skip
    pids = {r["pid"] for r in results}
    if not all(r["ok"] for r in results) or len(pids) != len(results):
        bad = next((r for r in results if not r["ok"]), results[0])
        return Outcome(
            child.method, child.value, "wrong", forks=n, detail=json.dumps(bad), reports=results
        )
    first_ns = int(results[0]["first_ns"])  # type: ignore[call-overload]
    latency = (first_ns - child.started_ns) / 1e6
    return Outcome(child.method, child.value, "ok", n, latency_ms=latency, reports=results)
