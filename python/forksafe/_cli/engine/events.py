"""The wire format between a child and the parent: one pipe a launch.

The pipe carries the child's stdout and stderr too. An event is one line that starts with
:data:`MARK` followed by a JSON object: ``ev`` (one of the kinds below), ``pid`` (the sender),
``ns`` (its ``time.monotonic_ns()``) and the kind's own fields. Every other line is the child's
own output, or a stack dump that the parent asked for with a signal.
"""

from __future__ import annotations

import json
import os
import signal
import time
from typing import Any, Callable

MARK = b"\x1e"
"""Starts an event: the ASCII record separator never appears in normal output."""

DUMP_SIGNAL = signal.SIGUSR2
"""Sent to a child at its deadline; its faulthandler dumps every Python thread's stack."""

DUMP_MAIN_SIGNAL = signal.SIGUSR1
"""Sent first to the children of stale paths: dumps only the thread that takes it (the main
thread, which runs the work and the exit)."""

# The kinds, in the order a child sends them, with their own fields.
STARTED = "started"  # gen: the generation (1 for the launch's first process)
PREPARED = "prepared"  # a fresh interpreter built what a forked child inherits
RESULT = "result"  # the work's payload: ok, detail, first_ns, ...
FORKED = "forked"  # child, started_ns: a chain's process forked its next generation
REAPED = "reaped"  # child, code: ... and reaped it
EXITING = "exiting"  # what the exit will run (the work's exit_info)
EXIT_STEP = "exit_step"  # step: an exit step (a handler) starts
ERROR = "error"  # detail: the engine's own child code failed

Event = dict[str, Any]


def send(fd: int, kind: str, **fields: Any) -> None:
    """Writes one event (all of it, whatever the pipe takes at once)."""
    fields.update(ev=kind, pid=os.getpid(), ns=time.monotonic_ns())
    data = memoryview(MARK + json.dumps(fields, default=repr).encode() + b"\n")
    while data:
        data = data[os.write(fd, data) :]


def step_sender(fd: int) -> Callable[[str], None]:
    """A sender of :data:`EXIT_STEP` events that binds everything it needs: it runs while the
    interpreter is torn down, when modules may already be gone."""
    prefix = MARK + b'{"ev": "%s", "pid": %d, "step": "' % (EXIT_STEP.encode(), os.getpid())
    write = os.write

    def send_step(step: str) -> None:
        text = step.replace("\\", "/").replace('"', "'")
        write(fd, prefix + text.encode(errors="replace") + b'"}\n')

    return send_step


class Reader:
    """Splits what a pipe carries into the child's output lines and events."""

    def __init__(self) -> None:
        self.partial = b""

    def feed(self, chunk: bytes) -> list[str | Event]:
        """What ``chunk`` completes, in order: output lines (str) and events (dict)."""
        lines = (self.partial + chunk).split(b"\n")
        self.partial = lines.pop()
        if len(self.partial) > 1 << 20:  # a child writing without newlines: keep it bounded
            lines.append(self.partial)
            self.partial = b""
        items: list[str | Event] = []
        for line in lines:
            text, mark, event = line.partition(MARK)
            if text.strip():
                items.append(text.decode(errors="replace").rstrip())
            if not mark:
                continue
            try:
                message = json.loads(event)
            except ValueError:
                items.append(f"(cut event) {event.decode(errors='replace')}")
                continue
            if isinstance(message, dict) and isinstance(message.get("pid"), int):
                items.append(message)
        return items
