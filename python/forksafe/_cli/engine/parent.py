"""The parent side of the fork engine: starts launches, reads their events, enforces the
deadlines, and collects each launch's :class:`~.outcome.Outcome`.

A *launch* is one child started by one path of :data:`~.paths.PATHS` (for a chain, ``depth``
generations, each forked by the one above). Every process of a launch runs the same
:class:`~.child.Work` once and reports on the launch's pipe (:mod:`.events`); the parent gives
each process a deadline for every phase (a fresh interpreter's start-up and preparation, the
work, the exit) and a verdict of :data:`~.outcome.KINDS`.

At a deadline the parent reads the process's native thread names (``/proc/PID/task/*/comm``),
sends it :data:`~.events.DUMP_SIGNAL` (``faulthandler`` writes every Python thread's stack into
the pipe), then kills the launch's whole process group and reaps it. Every child leads its own
process group, so nothing a child started outlives its launch; every pipe is closed when the
launch ends.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.connection
import os
import select
import signal
import sys
import sysconfig
import time
from collections import deque
from collections.abc import Iterator, Sequence
from typing import Any, Callable, Union

from .. import native
from . import child, events
from .child import Work, forked, multiprocessing_target
from .outcome import Outcome, ProcessReport, crash_report, judge
from .paths import PATHS, ForkPath

DUMP_WINDOW = 1.0
"""Seconds the parent waits for the stacks of children past their deadline."""

_OUTPUT_LINES = 200  # lines of a child's own output kept for the report

# Read ends the parent holds: a forked child closes the ones that are not its own.
_parent_fds: set[int] = set()

NATIVE_BACKTRACES = 2
"""Debugger backtraces taken at one deadline at most (each costs a second or more)."""


# --------------------------------------------------------------------------------------------
# Children
# --------------------------------------------------------------------------------------------


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
    """A child the engine forked itself."""

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

    def __init__(
        self, process: Any, conn: multiprocessing.connection.Connection, own_child: bool
    ) -> None:
        self.pid: int = process.pid
        self.process = process
        self.conn = conn
        self.own_child = own_child  # a forkserver worker is the server's child, not ours
        self.zombie = False  # ended, and not reaped yet: its process group ID is still reserved
        self.code: int | None = None

    def exited(self) -> int | None:
        if self.code is None and self.own_child:
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


@contextlib.contextmanager
def _stdio_into(fd: int) -> Iterator[None]:
    """Points this process's fds 1 and 2 at ``fd`` while a child is forked: whatever a fork
    handler prints (in the parent, or in the child before its own code runs) goes with the
    launch, attributed to it, instead of onto the tool's own stderr."""
    saved = [os.dup(1), os.dup(2)]
    try:
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for kept in saved:
            os.close(kept)


def _start(path: ForkPath, work: Work, value: int, depth: int) -> tuple[_Handle, int]:
    """Starts one launch; returns its handle and the read end of its pipe."""
    sys.stdout.flush()  # a child must not flush the parent's buffered output a second time
    sys.stderr.flush()
    inherited = () if path.fresh else tuple(_parent_fds)  # a fresh interpreter inherits none
    if path.fork is None:
        ctx = multiprocessing.get_context(path.context)
        reader, writer = ctx.Pipe(duplex=False)
        process = ctx.Process(  # type: ignore[attr-defined]
            target=multiprocessing_target,
            args=(writer, work, value, path.fresh, inherited),
            name=f"forksafe-{path.name}",
        )
        # A fresh path's start may start the forkserver or the resource tracker, which
        # would keep the launch's pipe as their stdio: only forks are redirected.
        redirect = contextlib.nullcontext() if path.fresh else _stdio_into(writer.fileno())
        helpers = child.helpers_running()
        try:
            with redirect:
                process.start()
        except BaseException:
            reader.close()
            raise
        finally:
            writer.close()
        child.claim(process, helpers)
        mp_child = _MpChild(process, reader, path.own_child)
        _claim_group(mp_child.pid)
        return mp_child, reader.fileno()
    read_fd, write_fd = os.pipe()
    try:
        close = (read_fd, *inherited)
        with _stdio_into(write_fd):
            pid = path.fork(lambda: forked(path, write_fd, close, work, value, depth))
    finally:
        os.close(write_fd)
    _claim_group(pid)
    return _PidChild(pid), read_fd


def _claim_group(pid: int) -> None:
    """Makes the child its own process group's leader from the parent side as well (no race)."""
    try:
        os.setpgid(pid, pid)
    except OSError:
        pass  # already done by the child, or a spawned child that has exec'd


# --------------------------------------------------------------------------------------------
# A launch in flight
# --------------------------------------------------------------------------------------------


class _Launch:
    """A launch in flight: its processes, and what their pipe said."""

    def __init__(
        self, path: ForkPath, value: int, forks: int, handle: _Handle, fd: int, ns: int
    ) -> None:
        self.path = path
        self.value = value
        self.forks = forks
        self.handle = handle
        self.fd = fd
        self.procs: dict[int, ProcessReport] = {handle.pid: ProcessReport(handle.pid, 1, ns)}
        self.reader = events.Reader()
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
            for item in self.reader.feed(chunk):
                if isinstance(item, str):
                    (self.output if self.dump is None else self.dump).append(item)
                else:
                    handler = _HANDLERS.get(str(item.get("ev")))
                    if handler is not None:
                        handler(self, item, time.monotonic())
        return got

    # -- one handler per event ----------------------------------------------------------------

    def _on_started(self, ev: events.Event, now: float) -> None:
        # Each step gets the deadline: a fresh interpreter's start-up, its preparation, the work.
        self._proc(ev["pid"], int(ev.get("gen", 1)), int(ev["ns"])).since = now

    def _on_forked(self, ev: events.Event, now: float) -> None:
        parent = self.procs.get(ev["pid"])
        if parent is None:
            return
        child = self._proc(int(ev["child"]), parent.generation + 1, 0)
        child.start_ns = int(ev["started_ns"])  # the child's own "started" may come first
        child.since = now
        self._set(parent, "waiting", now)

    def _on_result(self, ev: events.Event, now: float) -> None:
        proc = self.procs.get(ev["pid"])
        if proc is None:
            return
        proc.payload = ev
        proc.latency_ms = (int(ev.get("first_ns") or ev["ns"]) - proc.start_ns) / 1e6
        self._set(proc, "after-result", now)

    def _on_reaped(self, ev: events.Event, now: float) -> None:
        proc = self.procs.get(ev["pid"])
        if proc is None:
            return
        child = self.procs.get(int(ev["child"]))
        if child is not None:
            child.exit_code = int(ev["code"])
            child.phase = "gone"
        self._set(proc, "after-result", now)

    def _on_exiting(self, ev: events.Event, now: float) -> None:
        proc = self.procs.get(ev["pid"])
        if proc is None:
            return
        proc.exit_info = {k: v for k, v in ev.items() if k not in ("ev", "pid", "ns")}
        self._set(proc, "exiting", now)

    def _on_exit_step(self, ev: events.Event, now: float) -> None:
        proc = self.procs.get(ev["pid"])
        if proc is not None:
            proc.exit_steps.append(str(ev.get("step")))

    def _on_error(self, ev: events.Event, now: float) -> None:
        proc = self.procs.get(ev["pid"])
        if proc is not None:
            proc.error = str(ev.get("detail"))

    def _proc(self, pid: int, generation: int, start_ns: int) -> ProcessReport:
        proc = self.procs.get(pid)
        if proc is None:
            proc = self.procs[pid] = ProcessReport(pid, generation, start_ns)
        return proc

    @staticmethod
    def _set(proc: ProcessReport, phase: str, now: float) -> None:
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
                judge(proc, killed)
        processes = sorted(self.procs.values(), key=lambda p: p.generation)
        for proc in processes:  # output the children printed goes with the first failure
            if proc.status == "crashed" and not proc.stack and self.output:
                proc.stack = crash_report(list(self.output))
                break
        self.outcome = Outcome(self.path.name, self.value, self.forks, processes, [*self.output])
        return self.outcome

    def _close(self) -> None:
        if isinstance(self.handle, _MpChild):
            self.handle.conn.close()  # owns self.fd
        else:
            os.close(self.fd)
        _parent_fds.discard(self.fd)


_HANDLERS: dict[str, Callable[[_Launch, events.Event, float], None]] = {
    events.STARTED: _Launch._on_started,
    events.PREPARED: _Launch._on_started,  # the next step starts: it gets the deadline too
    events.FORKED: _Launch._on_forked,
    events.RESULT: _Launch._on_result,
    events.REAPED: _Launch._on_reaped,
    events.EXITING: _Launch._on_exiting,
    events.EXIT_STEP: _Launch._on_exit_step,
    events.ERROR: _Launch._on_error,
}


# --------------------------------------------------------------------------------------------
# Deadlines: thread names, stacks, kill
# --------------------------------------------------------------------------------------------


def thread_names(pid: int) -> list[str]:
    """The native names of a process's threads, main thread first."""
    names: list[str] = []
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


def _native(
    overdue: list[tuple[_Launch, ProcessReport]], stacks: list[str], unanswered: list[str]
) -> None:
    """Native evidence for each overdue process; a debugger's backtrace for the first of each
    path whose Python stack says nothing (no answer, or no Python frame in the stuck thread)."""
    seen: set[str] = set()
    taken = 0
    for (launch, proc), stack, silent in zip(overdue, stacks, unanswered):
        quiet = (
            bool(silent)
            or not stack.strip()
            or _no_python_frame(stack)
            or _waits_below_python(stack, proc.pid)
        )
        wanted = quiet and launch.path.name not in seen and taken < NATIVE_BACKTRACES
        if wanted:
            seen.add(launch.path.name)
            taken += 1
        if quiet or proc.phase == "exiting":
            why = (
                ""
                if wanted
                else "not taken: "
                + (
                    "one per path (see this path's first failure)"
                    if quiet
                    else "Python's stack answered (below)"
                )
            )
            proc.native = native.collect(proc.pid, with_backtrace=wanted, why=why).as_dict()


_STDLIB = tuple(
    os.path.join(os.path.realpath(sysconfig.get_paths()[key]), "")
    for key in ("stdlib", "platstdlib")
)
_OWN = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "")


def _waits_below_python(stack: str, pid: int) -> bool:
    """Whether the stuck thread waits inside a native call that Python's stack cannot explain:
    its innermost frame is outside the standard library and check (CODE, or a library, calling
    an extension), and the process's main thread sleeps on a futex (a lock or condvar of native
    code: an extension's runtime parked, parking_lot's table)."""
    current = stack.partition("Current thread")[2] or stack.partition("Stack (most recent")[2]
    first = next(
        (line.strip() for line in current.splitlines() if line.strip().startswith("File ")), ""
    )
    if not first:
        return False
    file = first[len('File "') :].partition('"')[0]
    if not file.startswith("<"):
        file = os.path.realpath(file)
        if file.startswith(_STDLIB) or file.startswith(_OWN):
            return False
    main = native.threads(pid)[:1]
    return bool(main) and ("futex" in main[0].wchan or main[0].syscall in _FUTEX)


_FUTEX = ("202", "98")  # the futex system call's number: x86_64, and aarch64/riscv64 (generic)


def _no_python_frame(stack: str) -> bool:
    """Whether faulthandler's dump shows the stuck (current) thread with no Python frame."""
    current = stack.partition("Current thread")[2]
    return "<no Python frame>" in current.split("\n\n")[0][:400]


def _expire(
    overdue: list[tuple[_Launch, ProcessReport]],
    deadline: float,
    running: list[_Launch],
    with_native: bool = False,
    subject: str = "CODE",
) -> list[Outcome]:
    """Judges processes past their deadline: thread names, Python stacks, then kill.
    ``subject``: what the details call the work (:attr:`~.child.Work.subject`).

    A stale path's first generation still lists the parent's threads, and dumping one whose
    stack glibc has handed to a new thread can crash: it is asked for the stuck thread alone
    first (:data:`~.events.DUMP_MAIN_SIGNAL`), then for all."""
    launches = [launch for launch, _ in overdue]
    stale = [launch.path.stale and proc.generation == 1 for launch, proc in overdue]
    unanswered: list[str] = []
    states = [native.state(proc.pid) for _, proc in overdue]  # before any signal wakes it
    for (launch, proc), ghosts in zip(overdue, stale):
        proc.threads = thread_names(proc.pid)
        # Armed before the signal: whatever comes from now on is the dump.
        launch.dump, launch.last_data = [], 0.0
        signum = events.DUMP_MAIN_SIGNAL if ghosts else events.DUMP_SIGNAL
        # A signal nobody handles kills: never send one the process does not catch (its
        # dumper is not installed yet, or finalisation removed it).
        if native.catches(proc.pid, signum) is False:
            unanswered.append(
                "(no Python stack: the process no longer handles the dump signal: Python has "
                "finalised (its exit steps are done and the hang is native))"
                if proc.phase == "exiting"
                else "(no Python stack: the process does not handle the dump signal: it hung "
                "before forksafe's child code installed its stack dumper, e.g. in a fork "
                "handler)"
            )
        else:
            unanswered.append("")
            _signal(proc.pid, signum)
    stacks = _collect(launches)
    if any(stale):
        again = [
            (launch, proc)
            for (launch, proc), ghosts, silent in zip(overdue, stale, unanswered)
            if ghosts and not silent
        ]
        for launch, proc in again:
            launch.dump, launch.last_data = [], 0.0
            _signal(proc.pid, events.DUMP_SIGNAL)
        everything = iter(_collect([launch for launch, _ in again]))
        for index, ghosts in enumerate(stale):
            if ghosts and not unanswered[index]:
                stacks[index] = _with_ghosts(stacks[index], next(everything))
    if with_native:
        _native(overdue, stacks, unanswered)
    outcomes = []
    for (launch, proc), stack, silent in zip(overdue, stacks, unanswered):
        running_state = states.pop(0) == "R"
        code = launch.handle.exited()
        if code is not None and code >= 0:  # it exited meanwhile: slow, not stuck
            outcomes.append(launch.finish(killed=False))
            running.remove(launch)
            continue
        if proc.phase == "exiting":
            proc.status = "hangs_at_exit"
            proc.detail = f"did not exit within {deadline:g} s after its result"
            if proc.exit_steps:
                last = proc.exit_steps[-1]
                proc.detail += (
                    f"; the last exit step that started: {last} (Python's exit is over)"
                    if silent
                    else f"; exit step still running: {last}"
                )
            if proc.payload is not None and not proc.payload.get("ok"):
                first = str(proc.payload.get("detail", "")).strip().splitlines() or ["not ok"]
                what = "raised" if proc.payload.get("raised") else "was wrong"
                proc.detail = f"{subject} {what} ({first[-1]}), then hung at exit: " + proc.detail
                proc.detail += "\n" + str(proc.payload.get("detail", "")).rstrip()
        else:
            proc.status = "hung"
            proc.detail = (
                f"no result within {deadline:g} s"
                if proc.payload is None
                else f"stuck for {deadline:g} s after its result, before exiting"
            )
        if running_state:
            proc.detail += (
                "; it was running (state R), not blocked: perhaps slow rather than stuck (a "
                "longer --deadline tells)"
            )
        if code is not None and -code in (events.DUMP_SIGNAL, events.DUMP_MAIN_SIGNAL):
            silent = (
                f"(the stack-dump signal {signal.Signals(-code).name} ended the process: its "
                "handler was gone by the time it arrived, so Python had finalised)"
            )
        proc.stack = (
            stack
            or silent
            or (
                "(no Python stack: the process did not answer; it may have hung before forksafe's "
                "child code could install its stack dumper)"
            )
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


# --------------------------------------------------------------------------------------------
# The engine
# --------------------------------------------------------------------------------------------


def run_forks(
    work: Work,
    jobs: Sequence[str],
    *,
    concurrency: int = 4,
    depth: int = 4,
    deadline: float = 10.0,
    on_tick: Callable[[], None] | None = None,
    with_native: bool = False,
) -> Iterator[Outcome]:
    """Starts one launch per entry of ``jobs`` (a path name of :data:`~.paths.PATHS`; a chain
    path makes ``depth`` generations), at most ``concurrency`` at once, in order, and yields
    each launch's outcome as it ends. Each process gets ``deadline`` seconds for its result,
    and again for its exit. If the caller stops early, every child is killed and reaped.
    ``with_native``: collect native evidence (:mod:`..native`) of processes stuck where
    Python's stacks say nothing."""
    unknown = sorted({name for name in jobs if name not in PATHS})
    if unknown:
        raise ValueError(f"unknown fork path(s) {unknown}; choose from {', '.join(PATHS)}")
    running: list[_Launch] = []
    pending = deque(PATHS[name] for name in jobs)
    value = 0
    try:
        while pending or running:
            while pending and len(running) < max(1, concurrency):
                path = pending.popleft()
                value += 1
                forks = depth if path.chain else 1
                started = time.monotonic_ns()
                try:
                    handle, fd = _start(path, work, value, forks)
                except Exception as exc:
                    report = ProcessReport(0, 1, started, status="crashed")
                    report.detail = f"could not start the child: {type(exc).__name__}: {exc}"
                    yield Outcome(path.name, value, forks, [report])
                    continue
                os.set_blocking(fd, False)
                _parent_fds.add(fd)
                running.append(_Launch(path, value, forks, handle, fd, started))
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
                yield from _expire(overdue, deadline, running, with_native, work.subject)
            if on_tick is not None:
                on_tick()
    finally:
        for launch in running:
            launch.finish(killed=True)
