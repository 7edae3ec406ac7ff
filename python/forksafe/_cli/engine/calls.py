"""One function call in forked children, under the engine's deadlines: the hang detector of the
test suites (tests/python/forkutil.py is its pytest adapter; the examples' tests use it as is).

:func:`spawn` runs ``fn(*args)`` in children started by a fork path of :data:`~.paths.ROWS`
(:data:`PATHS`: every path whose child inherits the parent's memory) through
:func:`~.parent.run_forks`: the child's return value is its report (JSON), what it raised is
its error, and a child that misses its deadline has its stacks dumped, then is killed. The child
writes :func:`progress` lines into its pipe as it goes: they are its last words if it hangs.
"""

from __future__ import annotations

import json
import os
import select
import time
from collections.abc import Sequence
from typing import Any, Callable, TypeVar

from .child import Work
from .outcome import Outcome
from .parent import run_forks
from .paths import FORK_PATHS
from .paths import PATHS as ROWS_BY_NAME

PATHS = FORK_PATHS
"""The fork paths a call can take: every row of :data:`~.paths.ROWS` that forks (not a fresh
interpreter), in the rows' order. A new row is a new path here, with nothing else to edit."""

DEFAULT_PATH = PATHS[0]
"""The first row's path: ``os.fork()``."""

CHILD_DEADLINE = 20.0
"""Seconds a child gets for its report (and again for its exit) before it is killed."""

SETTLE = 0.1
"""Seconds the parent sleeps (holding no lock) before a stale path forks: see :func:`spawn`."""

_sink: Callable[[str], None] | None = None


def set_progress_sink(sink: Callable[[str], None] | None) -> None:
    """Where :func:`progress` goes in this process (a child's pipe, a multiprocessing pipe)."""
    global _sink
    _sink = sink


def progress(message: str) -> None:
    """Reports how far this process got; shown as its last words if it hangs."""
    sink = _sink
    if sink is not None:
        sink(f"[pid {os.getpid()}] {message}")


def _to_pipe(line: str) -> None:
    # A child's stdout is its pipe (child._enter); os.write, so nothing waits in a buffer.
    data = memoryview(line.replace("\n", " ").encode(errors="replace") + b"\n")
    while data:
        data = data[os.write(1, data) :]


class _Call(Work):
    """The work of every process of a launch: ``fn(index, *args)`` or ``fn(*args)``."""

    def __init__(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        indexed: bool,
        gate: tuple[int, int] | None,
    ) -> None:
        self.fn, self.args, self.indexed, self.gate = fn, args, indexed, gate

    def run(self, value: int) -> dict[str, Any]:
        set_progress_sink(_to_pipe)
        progress(f"child started ({getattr(self.fn, '__name__', self.fn)})")
        if self.gate is not None:  # wait until every child of the batch is forked (EOF)
            os.close(self.gate[1])
            select.select([self.gate[0]], [], [], CHILD_DEADLINE)
        args = (value - 1, *self.args) if self.indexed else self.args
        # Tuples become lists: the same shape whether it crossed a pipe as JSON or a pickle.
        return {"ok": True, "report": json.loads(json.dumps(self.fn(*args)))}


class ChildOutcome:
    """What a forked child did: its report, or its error, or that it hung or crashed."""

    def __init__(self, outcome: Outcome, deadline: float) -> None:
        first = outcome.processes[0]
        self.outcome = outcome
        self.path = outcome.path
        self.pid = first.pid
        self.deadline = deadline
        self.status = outcome.status
        self.hung = self.status in ("hung", "hangs_at_exit")
        self.exit_code = None if self.hung else first.exit_code
        payload = first.payload or {}
        self.has_report = "report" in payload
        self.report: Any = payload.get("report")
        self.reports = [(p.payload or {}).get("report") for p in outcome.processes]
        """Each generation's report (a chain path has several), the first generation first."""
        self.error: str | None = str(payload["detail"]) if payload.get("raised") else first.error
        self.progress = list(outcome.output)
        """The lines the child wrote: :func:`progress` lines and any other output."""

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def last_words(self) -> str:
        lines = list(self.progress)
        if self.error is not None:
            lines.append(f"error:\n{self.error}")
        culprit = self.outcome.culprit
        if culprit is not None and culprit.threads:
            lines.append(f"native threads: {', '.join(culprit.threads)}")
        if culprit is not None and culprit.stack:
            lines.append(f"stacks:\n{culprit.stack}")
        return "\n".join(lines) if lines else "(nothing)"

    def describe(self) -> str:
        who = f"pid {self.pid} ({self.path})"
        if self.ok:
            return f"child ok: {who}"
        detail = self.outcome.detail
        if self.hung:
            head = f"child hung: {who} was killed with SIGKILL after {self.deadline:g} s: {detail}"
        elif self.error is not None:
            head = f"child raised: {who}, exit code {self.exit_code}"
        else:
            head = (
                f"child died without a clean report: {who}, exit code {self.exit_code}, "
                f"report present: {self.has_report}: {detail}"
            )
        return f"{head}; last words:\n{self.last_words()}"

    def require(self) -> Any:
        """The child's report; AssertionError with everything the child wrote if it was not ok
        (a test adapter fails the test its own way)."""
        if not self.ok:
            raise AssertionError(self.describe())
        return self.report

    def summary(self) -> dict[str, Any]:
        """A JSON-able summary, for a child that reports its own children upward."""
        return {
            "pid": self.pid,
            "path": self.path,
            "ok": self.ok,
            "hung": self.hung,
            "exit_code": self.exit_code,
            "report": self.report,
            "description": self.describe(),
        }


_Outcome = TypeVar("_Outcome", bound=ChildOutcome)


def spawn(
    fn: Callable[..., Any],
    *args: Any,
    path: str = DEFAULT_PATH,
    count: int = 1,
    indexed: bool = False,
    together: bool = False,
    depth: int = 2,
    deadline: float = CHILD_DEADLINE,
    kind: type[_Outcome] = ChildOutcome,  # type: ignore[assignment]
) -> list[_Outcome]:
    """Starts ``count`` children by ``path`` at once; each runs ``fn(*args)`` (``fn(i, *args)``
    for child ``i`` with ``indexed``) and reports what it returned. With ``together`` every
    child waits until all are forked, so their work overlaps. A chain path makes ``depth``
    generations, each running the call. ``kind``: the outcome class (a test adapter's
    subclass). Never raises for what a child did.

    Before a stale path (a C-level fork or a raw clone: no ``PyOS_AfterFork_Child`` in the
    child) the parent lets its other threads go idle for :data:`SETTLE` seconds: a thread that
    was *waiting* for the GIL at the instant of fork leaves a phantom waiter in the GIL's
    condition variable, and the child's first GIL hand-off deadlocks in glibc. That is
    CPython's hazard, with or without forksafe."""
    if path not in PATHS:
        raise ValueError(f"unknown fork path {path!r}; choose from {', '.join(PATHS)}")
    if ROWS_BY_NAME[path].stale:
        time.sleep(SETTLE)
    gate = os.pipe() if together else None
    gate_w = gate[1] if gate is not None else None
    work = _Call(fn, args, indexed, gate)

    def release() -> None:  # called once every child is started
        nonlocal gate_w
        if gate_w is not None:
            os.close(gate_w)
            gate_w = None

    try:
        outcomes = run_forks(
            work, [path] * count, concurrency=count, depth=depth, deadline=deadline,
            on_tick=release,
        )  # fmt: skip
        done = sorted(outcomes, key=lambda outcome: outcome.value)
    finally:
        release()
        if gate is not None:
            os.close(gate[0])
    return [kind(outcome, deadline) for outcome in done]


def failures(outcomes: Sequence[ChildOutcome]) -> str:
    """What went wrong with a batch of children, one paragraph each; empty if all were ok."""
    bad = [(i, o) for i, o in enumerate(outcomes) if not o.ok]
    if not bad:
        return ""
    head = f"{len(bad)} of {len(outcomes)} children failed:"
    return "\n".join([head, *(f"child {i}: {o.describe()}" for i, o in bad)])
