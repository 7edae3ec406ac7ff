"""What the parent concludes about each process of a launch: its verdict, one of :data:`KINDS`.

- ``ok``; ``wrong``: the work said so, or raised (its traceback is the detail);
- ``hung``: no result by the deadline; ``hangs_at_exit``: a result, then no exit by the deadline
  (only for work that asks for the exit check);
- ``crashed``: killed by a signal, or an abnormal exit.
"""

from __future__ import annotations

import signal
import time
from dataclasses import dataclass, field
from typing import Any

KINDS = ("ok", "wrong", "hung", "crashed", "hangs_at_exit")


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
    native: dict[str, Any] | None = None  # native evidence (native.Evidence.as_dict)
    phase: str = "run"  # run, after-result, waiting (for its child), exiting, gone
    since: float = field(default_factory=time.monotonic)

    def as_dict(self) -> dict[str, Any]:
        """JSON-able."""
        keep = ("pid", "generation", "status", "detail", "latency_ms", "exit_code")
        report: dict[str, Any] = {k: getattr(self, k) for k in keep}
        if self.payload is not None:
            report["result"] = {k: v for k, v in self.payload.items() if k not in ("ev", "ns")}
        for name in ("exit_info", "exit_steps", "threads", "stack", "native"):
            if getattr(self, name):
                report[name] = getattr(self, name)
        return report


@dataclass
class Outcome:
    """What one launch did: each of its processes (a nested chain has several)."""

    path: str
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
            "path": self.path,
            "status": self.status,
            "processes": [p.as_dict() for p in self.processes],
            "output": self.output,
        }


def judge(proc: ProcessReport, killed: bool) -> None:
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


def _signal_name(code: int) -> str:
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


_FATAL = "Fatal Python error:"
_C_STACK = "C stack trace"  # 3.14+: "Current thread's C stack trace (most recent call first):"
_C_FRAMES = 12
_TAIL_LINES = 30


def crash_report(lines: list[str]) -> str:
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
