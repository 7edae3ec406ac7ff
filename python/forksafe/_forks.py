"""The fork engine of ``python -m forksafe check``, ``stress`` and ``doctor``.

A *launch* is one child started by one path of :data:`PATHS` (for ``nested``, a chain of
``depth`` generations, each forked by the one above). Every process of a launch runs the same
:class:`Work` once and reports on a pipe; the parent enforces a deadline on every phase of every
process and gives each one of the verdicts in :data:`KINDS`:

- ``ok``; ``wrong``: the work said so, or raised (its traceback is the detail);
- ``hung``: no result by the deadline; ``hangs_at_exit``: a result, then no exit by the deadline
  (only for work that asks for the exit check: the child then leaves through the interpreter's
  normal exit instead of ``os._exit``);
- ``crashed``: killed by a signal, or an abnormal exit.

At a deadline the parent reads the process's native thread names (``/proc/PID/task/*/comm``),
sends it :data:`DUMP_SIGNAL` (``faulthandler`` writes every Python thread's stack into the pipe),
then kills the launch's whole process group and reaps it. Every child leads its own process group,
so nothing a child started outlives its launch; every pipe is closed when the launch ends.

The pipe carries the child's stdout and stderr too: event lines start with :data:`_MARK`, every
other line is the child's own output (or a stack dump).
"""

from __future__ import annotations

import atexit
import ctypes
import faulthandler
import json
import multiprocessing
import multiprocessing.connection
import os
import platform
import select
import signal
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Callable, NoReturn, Union

FORK_PATHS = ("os_fork", "mp_fork", "c_fork", "raw_syscall", "thread_fork", "nested")
"""Every way forksafe forks: os.fork, multiprocessing's fork start method, a C-level fork()
(uWSGI's kind), a raw clone system call, a fork from a non-main thread, and nested forks."""

FRESH_PATHS = ("forkserver", "spawn")
"""Start methods that begin from a fresh interpreter: for comparison, nothing is inherited."""

PATHS = FORK_PATHS + FRESH_PATHS

KINDS = ("ok", "wrong", "hung", "crashed", "hangs_at_exit")

DUMP_SIGNAL = signal.SIGUSR2
"""Sent to a child at its deadline; its faulthandler dumps every Python thread's stack."""

STALE_PATHS = ("c_fork", "raw_syscall")
"""Paths whose children never ran ``PyOS_AfterFork_Child``: Python still lists the parent's
threads there, and dumping one whose stack glibc has handed to a new thread can crash. Their
children are asked for the stuck thread alone first (:data:`DUMP_MAIN_SIGNAL`), then for all."""

DUMP_MAIN_SIGNAL = signal.SIGUSR1
"""Sent first to children of :data:`STALE_PATHS`: dumps the thread that takes it (the main
thread, which runs the work and the exit)."""

DUMP_WINDOW = 1.0
"""Seconds the parent waits for the stacks of children past their deadline."""

_MARK = b"\x1e"  # starts an event: the ASCII record separator never appears in normal output
_OUTPUT_LINES = 200  # lines of a child's own output kept for the report
_MP_PATHS = ("mp_fork", "forkserver", "spawn")
_SYS_CLONE = {"x86_64": 56, "aarch64": 220}.get(platform.machine())

# Read ends the parent holds: a forked child closes the ones that are not its own.
_parent_fds: set[int] = set()


class Work:
    """What every child runs once. Subclasses must be picklable (spawn and forkserver)."""

    exit_check = False
    """Leave through the interpreter's normal exit (and judge it) rather than ``os._exit``."""

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
# The child side
# --------------------------------------------------------------------------------------------


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _event(fd: int, kind: str, **fields: Any) -> None:
    fields.update(ev=kind, pid=os.getpid(), ns=time.monotonic_ns())
    _write_all(fd, _MARK + json.dumps(fields, default=repr).encode() + b"\n")


def _enter_child(fd: int, generation: int, stale: bool) -> None:
    """Sets up a child: own process group (leader), stdio into the pipe, stack dumps."""
    if generation == 1:
        try:
            os.setpgid(0, 0)
        except OSError:
            pass  # the parent may have done it already
    for other in _parent_fds:
        if other != fd:
            try:
                os.close(other)
            except OSError:
                pass
    _parent_fds.clear()
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    faulthandler.enable(file=fd, all_threads=True)
    faulthandler.register(DUMP_SIGNAL, file=fd, all_threads=True, chain=False)
    if stale:
        faulthandler.register(DUMP_MAIN_SIGNAL, file=fd, all_threads=False, chain=False)
    _event(fd, "started", gen=generation)


def _attempt(work: Work, value: int) -> dict[str, Any]:
    try:
        payload = work.run(value)
    except BaseException:  # SystemExit and KeyboardInterrupt from the work are results too
        return {"ok": False, "detail": traceback.format_exc(), "raised": True}
    return payload


def _child(
    fd: int, work: Work, value: int, depth: int, generation: int, fresh: bool, stale: bool = False
) -> int:
    """The body of every child; returns the exit code it should leave with."""
    try:
        _enter_child(fd, generation, stale)
        if fresh:
            work.prepare_fresh()
            _event(fd, "prepared")
        _event(fd, "result", **_attempt(work, value))
        if depth > 1:
            started = time.monotonic_ns()
            pid = os.fork()
            if pid == 0:
                _leave(fd, work, _child(fd, work, value, depth - 1, generation + 1, False))
            _event(fd, "forked", child=pid, started_ns=started)
            _, status = os.waitpid(pid, 0)
            _event(fd, "reaped", child=pid, code=os.waitstatus_to_exitcode(status))
        return 0
    except BaseException:
        try:
            _event(fd, "error", detail=traceback.format_exc())
        except BaseException:
            pass
        return 70


def _exit_tracker(fd: int, anchor: Any) -> Callable[..., None]:
    """A profile function that reports every call made straight from ``anchor``'s frame, i.e.
    each step of the exit: ``threading._shutdown``, each atexit handler, finalisers.

    It runs while the interpreter is being torn down, so it binds everything it needs."""
    prefix = _MARK + b'{"ev": "exit_step", "pid": %d, "step": "' % os.getpid()
    write = os.write

    def track(frame: Any, event: str, _arg: object) -> None:
        if event != "call" or frame.f_back is not anchor:
            return
        try:
            code = frame.f_code
            name = getattr(code, "co_qualname", code.co_name)
            module = frame.f_globals.get("__name__") or "?"
            step = f"{module}.{name}".replace("\\", "/").replace('"', "'")
            write(fd, prefix + step.encode(errors="replace") + b'"}\n')
        except BaseException:
            pass

    return track


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
finalising. Such children run the exit's Python steps themselves (:func:`_leave`)."""


def _leave(fd: int, work: Work, code: int, finalize: bool = True) -> NoReturn:
    """Ends a child forked by os.fork, a C-level fork, a raw clone or from a non-main thread.

    With the exit check, the child exits the way ``sys.exit()`` ends a program: ``Py_Exit``
    runs threading's shutdown, the atexit handlers, finalisation and C ``exit()``. Raising
    SystemExit instead would unwind through the parent's frames that the child inherited (the
    CLI, this engine), running their ``finally`` blocks in the child. Without ``finalize`` (see
    :data:`FINALIZES_AFTER_THREAD_FORK`) it runs the steps of that exit that call Python code,
    in the same order, then leaves through ``os._exit``."""
    if code == 0 and work.exit_check:
        try:
            info = work.exit_info(False)
            if not finalize:
                info["finalisation"] = (
                    "skipped, CPython 3.13+ cannot finalise a child forked from a thread "
                    "(threading's shutdown and the atexit handlers ran, then os._exit)"
                )
            _event(fd, "exiting", **info)
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


def _mp_child(
    conn: multiprocessing.connection.Connection, work: Work, value: int, fresh: bool
) -> None:
    """The target of a multiprocessing child (fork, forkserver, spawn)."""
    fd = conn.fileno()
    code = _child(fd, work, value, 1, 1, fresh)
    if code != 0 or not work.exit_check:
        os._exit(code)
    # multiprocessing's own normal exit: SystemExit reaches Process._bootstrap, which runs
    # util._exit_function() and threading._shutdown(), then os._exit (atexit does not run).
    _event(fd, "exiting", **work.exit_info(True))
    frame = sys._getframe()
    while frame is not None and frame.f_code.co_name != "_bootstrap":
        frame = frame.f_back
    if frame is not None:
        sys.setprofile(_exit_tracker(fd, frame))
    sys.exit(0)


# --------------------------------------------------------------------------------------------
# Fork paths
# --------------------------------------------------------------------------------------------


def _c_fork() -> int:
    # PyDLL keeps the GIL held across the call, so no other Python thread owns it at the instant
    # of fork (with CDLL the child could never take it back).
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


def _exit_code(result: Any) -> int:
    """An ``os.waitid`` result as an exit code (negative: the signal that killed it)."""
    if result.si_code == os.CLD_EXITED:
        return int(result.si_status)
    return -int(result.si_status)


def _kill(pid: int, group: bool) -> None:
    targets: list[Callable[[int, int], None]] = [os.kill]
    if group:
        targets.append(os.killpg)
    for kill in targets:
        try:
            kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


class _PidChild:
    """A child forked by os.fork, a C-level fork or a raw clone."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.code: int | None = None

    def exited(self) -> int | None:
        """Its exit code once it has ended; the zombie is kept (its process group too)."""
        if self.code is None:
            flags = os.WEXITED | os.WNOHANG | os.WNOWAIT
            result = os.waitid(os.P_PID, self.pid, flags)
            if result is not None:
                self.code = _exit_code(result)
        return self.code

    def kill(self) -> None:
        _kill(self.pid, group=True)

    def release(self) -> None:
        _, status = os.waitpid(self.pid, 0)
        if self.code is None:
            self.code = os.waitstatus_to_exitcode(status)


class _MpChild:
    """A multiprocessing child: multiprocessing keeps its own books, so it reaps it."""

    def __init__(self, process: Any, conn: multiprocessing.connection.Connection, direct: bool):
        self.pid: int = process.pid
        self.process = process
        self.conn = conn
        self.direct = direct  # a forkserver worker is the server's child, not ours
        self.zombie = False  # ended, and not reaped yet: its process group ID is still reserved
        self.code: int | None = None

    def exited(self) -> int | None:
        if self.code is None and self.direct:
            flags = os.WEXITED | os.WNOHANG | os.WNOWAIT
            try:
                result = os.waitid(os.P_PID, self.pid, flags)
            except ChildProcessError:  # multiprocessing reaps finished children on start()
                result = None
            if result is not None:
                self.code, self.zombie = _exit_code(result), True
        if self.code is None:
            self.code = self.process.exitcode
        return self.code

    def kill(self) -> None:
        # Once a child is reaped its PID and group ID could be reused: only signal its group
        # while it is alive or a zombie.
        _kill(self.pid, group=self.code is None or self.zombie)

    def release(self) -> None:
        self.process.join()
        if self.code is None:
            self.code = self.process.exitcode
        self.process.close()


_Handle = Union[_PidChild, _MpChild]


def _start(method: str, work: Work, value: int, depth: int) -> tuple[_Handle, int]:
    """Starts one launch; returns its handle and the read end of its pipe."""
    sys.stdout.flush()  # a child must not flush the parent's buffered output a second time
    sys.stderr.flush()
    if method in _MP_PATHS:
        ctx = multiprocessing.get_context("fork" if method == "mp_fork" else method)
        reader, writer = ctx.Pipe(duplex=False)
        process = ctx.Process(
            target=_mp_child,
            args=(writer, work, value, method != "mp_fork"),
            name=f"forksafe-{method}",
        )
        try:
            process.start()
        except BaseException:
            reader.close()
            raise
        finally:
            writer.close()
        mp_child = _MpChild(process, reader, direct=method != "forkserver")
        _claim_group(mp_child.pid)
        return mp_child, reader.fileno()
    read_fd, write_fd = os.pipe()
    try:
        pid = _fork(method, read_fd, write_fd, work, value, depth)
    finally:
        os.close(write_fd)
    _claim_group(pid)
    return _PidChild(pid), read_fd


def _fork(method: str, read_fd: int, write_fd: int, work: Work, value: int, depth: int) -> int:
    def child() -> NoReturn:
        os.close(read_fd)
        stale = method in STALE_PATHS
        finalize = method != "thread_fork" or FINALIZES_AFTER_THREAD_FORK
        _leave(write_fd, work, _child(write_fd, work, value, depth, 1, False, stale), finalize)

    if method == "thread_fork":
        box: list[int] = []
        errors: list[BaseException] = []

        def fork_here() -> None:
            try:
                pid = os.fork()
            except BaseException as exc:
                errors.append(exc)
                return
            if pid == 0:
                child()
            box.append(pid)

        thread = threading.Thread(target=fork_here, name="forksafe-forker")
        thread.start()
        thread.join()
        if errors:
            raise errors[0]
        return box[0]
    fork: Callable[[], int] = {"c_fork": _c_fork, "raw_syscall": _raw_fork}.get(method, os.fork)
    pid = fork()
    if pid == 0:
        child()
    return pid


def _claim_group(pid: int) -> None:
    """Makes the child its own process group's leader from the parent side as well (no race)."""
    try:
        os.setpgid(pid, pid)
    except OSError:
        pass  # already done by the child, or a spawned child that has exec'd


# --------------------------------------------------------------------------------------------
# The parent side
# --------------------------------------------------------------------------------------------


@dataclass
class ProcessReport:
    """One process of a launch, as the parent saw it."""

    pid: int
    generation: int
    start_ns: int
    status: str = "running"  # finally one of KINDS
    detail: str = ""
    latency_ms: float | None = None
    payload: dict[str, Any] | None = None
    error: str | None = None
    exit_code: int | None = None
    exit_info: dict[str, Any] | None = None
    exit_steps: list[str] = field(default_factory=list)
    threads: list[str] = field(default_factory=list)
    stack: str = ""
    phase: str = "run"  # run, after-result, waiting (for its child), exiting, gone
    since: float = field(default_factory=time.monotonic)

    def as_dict(self) -> dict[str, Any]:
        """JSON-able."""
        keep = ("pid", "generation", "status", "detail", "latency_ms", "exit_code")
        report: dict[str, Any] = {k: getattr(self, k) for k in keep}
        if self.payload is not None:
            report["result"] = {k: v for k, v in self.payload.items() if k not in ("ev", "ns")}
        for name in ("exit_info", "exit_steps", "threads", "stack"):
            if getattr(self, name):
                report[name] = getattr(self, name)
        return report


@dataclass
class Outcome:
    """What one launch did: each of its processes (a nested chain has several)."""

    method: str
    value: int
    forks: int  # processes the launch should have made
    processes: list[ProcessReport]
    output: list[str] = field(default_factory=list)  # what the children printed (last lines)

    @property
    def culprit(self) -> ProcessReport | None:
        """The first process that was not ok."""
        return next((p for p in self.processes if p.status != "ok"), None)

    @property
    def status(self) -> str:
        culprit = self.culprit
        if culprit is not None:
            return culprit.status
        return "ok" if len(self.processes) >= self.forks else "crashed"

    @property
    def detail(self) -> str:
        culprit = self.culprit
        if culprit is not None:
            return culprit.detail
        if len(self.processes) < self.forks:
            return f"{len(self.processes)} of {self.forks} processes of the chain reported"
        return ""

    @property
    def latency_ms(self) -> float | None:
        """Time from just before the fork to the first process's first result."""
        return self.processes[0].latency_ms if self.processes else None

    def as_dict(self) -> dict[str, Any]:
        """JSON-able."""
        return {
            "method": self.method,
            "status": self.status,
            "processes": [p.as_dict() for p in self.processes],
            "output": self.output,
        }


class _Launch:
    """A launch in flight."""

    def __init__(self, method: str, value: int, forks: int, handle: _Handle, fd: int, ns: int):
        self.method = method
        self.value = value
        self.forks = forks
        self.handle = handle
        self.fd = fd
        self.procs: dict[int, ProcessReport] = {handle.pid: ProcessReport(handle.pid, 1, ns)}
        self.partial = b""
        self.output: deque[str] = deque(maxlen=_OUTPUT_LINES)
        self.dump: list[str] | None = None  # collecting a stack dump
        self.eof = False
        self.last_data = 0.0
        self.outcome: Outcome | None = None

    # -- reading ------------------------------------------------------------------------------

    def read(self) -> bool:
        """Reads what the pipe has; False when nothing was there."""
        got = False
        while not self.eof:
            try:
                chunk = os.read(self.fd, 65536)
            except BlockingIOError:
                break
            if not chunk:
                self.eof = True
                break
            got = True
            self.last_data = time.monotonic()
            self._feed(chunk)
        return got

    def _feed(self, chunk: bytes) -> None:
        lines = (self.partial + chunk).split(b"\n")
        self.partial = lines.pop()
        if len(self.partial) > 1 << 20:  # a child writing without newlines: keep it bounded
            lines.append(self.partial)
            self.partial = b""
        for line in lines:
            text, mark, event = line.partition(_MARK)
            if text.strip():
                target = self.output if self.dump is None else self.dump
                target.append(text.decode(errors="replace").rstrip())
            if mark:
                try:
                    message = json.loads(event)
                except ValueError:
                    self.output.append(f"(cut event) {event.decode(errors='replace')}")
                    continue
                if isinstance(message, dict):
                    self._on_event(message)

    def _proc(self, pid: int, generation: int, start_ns: int) -> ProcessReport:
        proc = self.procs.get(pid)
        if proc is None:
            proc = self.procs[pid] = ProcessReport(pid, generation, start_ns)
        return proc

    def _on_event(self, ev: dict[str, Any]) -> None:
        kind, now = ev.get("ev"), time.monotonic()
        pid = ev.get("pid")
        if not isinstance(pid, int):
            return
        if kind in ("started", "prepared"):
            # Each step gets the deadline: a fresh interpreter's start-up, its setup, the work.
            self._proc(pid, int(ev.get("gen", 1)), int(ev["ns"])).since = now
            return
        if kind == "forked" and pid in self.procs:
            child = self._proc(int(ev["child"]), self.procs[pid].generation + 1, 0)
            child.start_ns = int(ev["started_ns"])
            child.since = now
            self._set(pid, "waiting", now)
            return
        proc = self.procs.get(pid)
        if proc is None:
            return
        if kind == "result":
            proc.payload = ev
            first_ns = ev.get("first_ns", ev["ns"])
            proc.latency_ms = (int(first_ns) - proc.start_ns) / 1e6
            self._set(pid, "after-result", now)
        elif kind == "reaped":
            child = self.procs.get(int(ev["child"]))
            if child is not None:
                child.exit_code = int(ev["code"])
                child.phase = "gone"
            self._set(pid, "after-result", now)
        elif kind == "exiting":
            proc.exit_info = {k: v for k, v in ev.items() if k not in ("ev", "pid", "ns")}
            self._set(pid, "exiting", now)
        elif kind == "exit_step":
            proc.exit_steps.append(str(ev.get("step")))
        elif kind == "error":
            proc.error = str(ev.get("detail"))

    def _set(self, pid: int, phase: str, now: float) -> None:
        proc = self.procs[pid]
        if proc.phase != "gone":
            proc.phase, proc.since = phase, now

    # -- deadlines ----------------------------------------------------------------------------

    def overdue(self, now: float, deadline: float) -> ProcessReport | None:
        """The first process past its deadline, if any."""
        for proc in self.procs.values():
            if proc.phase in ("gone", "waiting"):
                continue
            if now - proc.since > deadline:
                return proc
        return None

    # -- the end ------------------------------------------------------------------------------

    def finish(self, killed: bool) -> Outcome:
        """Kills what is left of the launch, reaps it, closes the pipe; returns the verdicts."""
        if self.outcome is not None:
            return self.outcome
        self.read()
        self.handle.kill()  # the group: whatever the children left running
        for proc in self.procs.values():
            if proc.phase != "gone" and proc.pid != self.handle.pid:
                _kill(proc.pid, group=False)
        self.handle.release()
        self.procs[self.handle.pid].exit_code = self.handle.code
        self.procs[self.handle.pid].phase = "gone"
        self.read()
        self._close()
        for proc in self.procs.values():
            if proc.status == "running":
                _judge(proc, killed)
        processes = sorted(self.procs.values(), key=lambda p: p.generation)
        for proc in processes:  # output the children printed goes with the first failure
            if proc.status == "crashed" and not proc.stack and self.output:
                proc.stack = _crash_report(list(self.output))
                break
        self.outcome = Outcome(self.method, self.value, self.forks, processes, list(self.output))
        return self.outcome

    def _close(self) -> None:
        if isinstance(self.handle, _MpChild):
            self.handle.conn.close()  # owns self.fd
        else:
            os.close(self.fd)
        _parent_fds.discard(self.fd)


_FATAL = "Fatal Python error:"
_C_STACK = "C stack trace"  # 3.14+: "Current thread's C stack trace (most recent call first):"
_C_FRAMES = 12
_TAIL_LINES = 30


def _crash_report(lines: list[str]) -> str:
    """What a crashed child printed last: faulthandler's fatal-error report from its first line
    (the C stack trace CPython 3.14+ appends cut to its innermost frames), or else the last
    lines of output."""
    start = max((i for i, line in enumerate(lines) if line.startswith(_FATAL)), default=None)
    if start is None:
        return "\n".join(lines[-_TAIL_LINES:])
    report: list[str] = []
    frames, cut = -1, 0  # -1: not in a C stack trace
    for line in lines[start:]:
        if frames >= 0 and line[:1].isspace():
            frames += 1
            if frames > _C_FRAMES:
                cut += 1
                continue
        elif frames >= 0:
            frames = -1
        if _C_STACK in line:
            frames = 0
        report.append(line)
        if cut and frames < 0:
            report.insert(-1, f"  ({cut} more C frames)")
            cut = 0
    if cut:
        report.append(f"  ({cut} more C frames)")
    return "\n".join(report)


def _signal_name(code: int) -> str:
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


def _judge(proc: ProcessReport, killed: bool) -> None:
    """The verdict of a process that was not caught by a deadline."""
    code, payload = proc.exit_code, proc.payload
    if proc.error is not None:
        proc.status, proc.detail = "crashed", f"forksafe's child code failed:\n{proc.error}"
    elif payload is None:
        proc.status = "crashed"
        if code is None or killed:
            proc.detail = "ended without a result"
        elif code < 0:
            proc.detail = f"killed by {_signal_name(code)} before its result"
        else:
            proc.detail = f"exited with code {code} before its result"
    elif not payload.get("ok"):
        proc.status, proc.detail = "wrong", str(payload.get("detail", "not ok"))
    elif killed or proc.phase == "waiting":
        proc.status = "ok"  # its own work was right; it was stopped for another's failure
    elif code is None:
        proc.status, proc.detail = "crashed", "vanished after its result"
    elif code < 0:
        proc.status = "crashed"
        proc.detail = f"killed by {_signal_name(code)} after its result (while exiting)"
    elif code != 0:
        proc.status, proc.detail = "crashed", f"exited with code {code} after its result"
    else:
        proc.status = "ok"


def _thread_names(pid: int) -> list[str]:
    """The native names of a process's threads, main thread first."""
    names = []
    try:
        tids = sorted(int(t) for t in os.listdir(f"/proc/{pid}/task"))
    except (OSError, ValueError):
        return names
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as comm:
                names.append(comm.read().strip())
        except OSError:
            pass
    return names


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def _collect(launches: list[_Launch]) -> list[str]:
    """Sends nothing; waits (at most DUMP_WINDOW) until each launch's dump has gone quiet, and
    returns the dumps (one text per launch) and resets them."""
    for launch in launches:
        launch.dump, launch.last_data = [], 0.0
    started = time.monotonic()
    while True:
        now = time.monotonic()
        waiting = [
            launch
            for launch in launches
            if not launch.eof and (launch.last_data == 0.0 or now - launch.last_data < 0.2)
        ]
        if not waiting or now - started > DUMP_WINDOW:
            break
        ready, _, _ = select.select([launch.fd for launch in waiting], [], [], 0.05)
        for launch in waiting:
            if launch.fd in ready:
                launch.read()
    dumps = ["\n".join(launch.dump or []) for launch in launches]
    for launch in launches:
        launch.dump = None
    return dumps


def _expire(
    overdue: list[tuple[_Launch, ProcessReport]], deadline: float, running: list[_Launch]
) -> list[Outcome]:
    """Judges processes past their deadline: thread names, Python stacks, then kill."""
    launches = [launch for launch, _ in overdue]
    stale = [launch.method in STALE_PATHS and proc.generation == 1 for launch, proc in overdue]
    for (launch, proc), ghosts in zip(overdue, stale):
        proc.threads = _thread_names(proc.pid)
        # Armed before the signal: whatever comes from now on is the dump.
        launch.dump, launch.last_data = [], 0.0
        _signal(proc.pid, DUMP_MAIN_SIGNAL if ghosts else DUMP_SIGNAL)
    stacks = _collect(launches)
    if any(stale):
        again = [(launch, proc) for (launch, proc), ghosts in zip(overdue, stale) if ghosts]
        for launch, proc in again:
            launch.dump, launch.last_data = [], 0.0
            _signal(proc.pid, DUMP_SIGNAL)
        everything = iter(_collect([launch for launch, _ in again]))
        for index, ghosts in enumerate(stale):
            if ghosts:
                stacks[index] = _with_ghosts(stacks[index], next(everything))
    outcomes = []
    for (launch, proc), stack in zip(overdue, stacks):
        if proc.phase == "exiting":
            proc.status = "hangs_at_exit"
            proc.detail = f"did not exit within {deadline:g} s after its result"
            if proc.exit_steps:
                proc.detail += f"; exit step still running: {proc.exit_steps[-1]}"
        else:
            proc.status = "hung"
            proc.detail = (
                f"no result within {deadline:g} s"
                if proc.payload is None
                else f"stuck for {deadline:g} s after its result, before exiting"
            )
        proc.stack = stack or (
            "(no Python stack: the process did not answer; it may have hung before forksafe's "
            "child code could install its stack dumper)"
        )
        outcomes.append(launch.finish(killed=True))
        running.remove(launch)
    return outcomes


def _with_ghosts(main: str, everything: str) -> str:
    """The stuck thread's stack, then every thread Python lists after a C-level or raw fork."""
    parts = [main] if main else []
    if everything:
        parts.append(
            "Every thread Python lists (after a C-level or raw fork this includes the parent's "
            "threads, which do not exist here: compare the native threads):\n" + everything
        )
        if "Fatal Python error" in everything:
            parts.append(
                "(dumping the parent's stale threads crashed the child: their stacks were reused "
                "by threads it started; the stuck thread is the one above)"
            )
    return "\n".join(parts)


def run_forks(
    work: Work,
    jobs: Sequence[str],
    *,
    concurrency: int = 4,
    depth: int = 4,
    deadline: float = 10.0,
    on_tick: Callable[[], None] | None = None,
) -> Iterator[Outcome]:
    """Starts one launch per entry of ``jobs`` (a path of :data:`PATHS`; ``nested`` is a chain
    of ``depth`` generations), at most ``concurrency`` at once, in order, and yields each
    launch's outcome as it ends. Each process gets ``deadline`` seconds for its result, and again
    for its exit. If the caller stops early, every child is killed and reaped."""
    unknown = sorted({m for m in jobs if m not in PATHS})
    if unknown:
        raise ValueError(f"unknown fork path(s) {unknown}; choose from {', '.join(PATHS)}")
    running: list[_Launch] = []
    pending = deque(jobs)
    value = 0
    try:
        while pending or running:
            while pending and len(running) < max(1, concurrency):
                method = pending.popleft()
                value += 1
                forks = depth if method == "nested" else 1
                started = time.monotonic_ns()
                try:
                    handle, fd = _start(method, work, value, forks)
                except Exception as exc:
                    report = ProcessReport(0, 1, started, status="crashed")
                    report.detail = f"could not start the child: {type(exc).__name__}: {exc}"
                    yield Outcome(method, value, forks, [report])
                    continue
                os.set_blocking(fd, False)
                _parent_fds.add(fd)
                running.append(_Launch(method, value, forks, handle, fd, started))
            # A child that closed its pipe is exiting: poll for it briefly rather than select.
            listening = [launch.fd for launch in running if not launch.eof]
            timeout = 0.002 if len(listening) < len(running) else 0.05
            ready = select.select(listening, [], [], timeout)[0] if listening else []
            if not listening:
                time.sleep(timeout)
            for launch in running:
                if launch.fd in ready:
                    launch.read()
            now = time.monotonic()
            overdue = []
            for launch in list(running):
                if launch.handle.exited() is not None:
                    outcome = launch.finish(killed=False)
                    running.remove(launch)
                    yield outcome
                    continue
                proc = launch.overdue(now, deadline)
                if proc is not None:
                    overdue.append((launch, proc))
            if overdue:
                yield from _expire(overdue, deadline, running)
            if on_tick is not None:
                on_tick()
    finally:
        for launch in running:
            launch.finish(killed=True)
