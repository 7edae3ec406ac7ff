"""What the children printed themselves (a library's warnings, a Rust panic's message), each
distinct line once, with how many children printed it and which. A log line's own time stamp
and thread ID (glog's and absl's ``I1202 03:32:05.231150  867 file.cc:588]``, logging's
``2026-12-02 03:32:05,231``) differ in every child: lines are grouped without them."""

from __future__ import annotations

import re

from .engine import Outcome

SHOWN_LINES = 20
"""Distinct lines shown in the text report (all of them are in --json's outcomes)."""

_PANIC = re.compile(r"^thread '.*' panicked at ")

_STAMPS = (
    # glog / absl (gRPC, Arrow, TensorFlow): level, MMDD, time, thread ID, then file:line]
    (re.compile(r"^(?P<level>[IWEF])\d{4} [0-9:.]+\s+\d+ (?=\S+:\d+\] )"), r"\g<level> "),
    # logging's asctime, and ISO 8601 stamps
    (re.compile(r"^\d{4}-\d\d-\d\d[ T][0-9:.,]+(?:Z|[+-]\d\d:?\d\d)?\s+"), ""),
)


def unstamped(line: str) -> str:
    """A printed line without the time stamp and thread ID a log line starts with."""
    for stamp, keep in _STAMPS:
        line = stamp.sub(keep, line, count=1)
    return line


def grouped(outcomes: dict[str, list[Outcome]]) -> list[dict[str, object]]:
    """Each distinct line the children printed (once per child, without a log line's time
    stamp: :func:`unstamped`): ``line``, ``children`` (how many printed it),
    ``paths`` (where), ``pids`` (the first few), in the order first seen."""
    lines: dict[str, dict[str, object]] = {}
    for path, launched in outcomes.items():
        for outcome in launched:
            pid = outcome.processes[0].pid if outcome.processes else 0
            for text in dict.fromkeys(map(unstamped, own_lines(outcome.output))):
                entry = lines.setdefault(text, {"line": text, "children": 0, "paths": [],
                                                "pids": []})  # fmt: skip
                entry["children"] = int(str(entry["children"])) + 1
                paths, pids = entry["paths"], entry["pids"]
                assert isinstance(paths, list) and isinstance(pids, list)
                if path not in paths:
                    paths.append(path)
                if len(pids) < 3:
                    pids.append(pid)
    return list(lines.values())


_FATAL = "Fatal Python error:"


def own_lines(output: list[str]) -> list[str]:
    """A child's output up to faulthandler's crash report (the diagnosis shows that)."""
    end = next((i for i, line in enumerate(output) if line.startswith(_FATAL)), len(output))
    return output[:end]


def panics(output: list[str]) -> list[str]:
    """A Rust panic's header and message lines in a child's output."""
    found = []
    for index, line in enumerate(output):
        if _PANIC.match(line):
            message = output[index + 1] if index + 1 < len(output) else ""
            found.append(f"{line} {message}".strip())
    return found


def render(outcomes: dict[str, list[Outcome]]) -> list[str]:
    """The text report's section, empty when no child printed anything."""
    entries = grouped(outcomes)
    if not entries:
        return []
    total = sum(len(launched) for launched in outcomes.values())
    lines = ["", "What the children printed (each line once; the children that printed it):"]
    for entry in entries[:SHOWN_LINES]:
        paths = entry["paths"]
        pids = entry["pids"]
        assert isinstance(paths, list) and isinstance(pids, list)
        pid = ", ".join(map(str, pids)) + (", ..." if int(str(entry["children"])) > 3 else "")
        who = f"{entry['children']} of {total} children: {', '.join(paths)}; pid {pid}"
        lines.append(f"  [{who}] {entry['line']}")
    if len(entries) > SHOWN_LINES:
        lines.append(f"  ({len(entries) - SHOWN_LINES} more distinct lines: see --json)")
    return lines
