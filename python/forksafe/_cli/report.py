"""The table and the progress line of ``python -m forksafe check`` and ``stress``."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import Any, NamedTuple, TextIO

from .engine import KINDS, Outcome


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (nearest rank), or None without values."""
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def summarise(path: str, outcomes: list[Outcome]) -> dict[str, Any]:
    """One table row, counted in forks (a nested chain of depth d is d forks): how many ended
    in each of ``KINDS``, and fork->first-result percentiles (ms). A chain that stopped early
    charges the forks it never made to the failure that stopped it."""
    counts = dict.fromkeys(KINDS, 0)
    for outcome in outcomes:
        for process in outcome.processes:
            counts[process.status] += 1
        missing = outcome.forks - len(outcome.processes)
        if missing > 0:
            counts[outcome.status if outcome.status != "ok" else "crashed"] += missing
    latencies = [o.latency_ms for o in outcomes if o.latency_ms is not None]
    failures = [f"{o.status}: {o.detail}" for o in outcomes if o.status != "ok"]
    return {
        "path": path,
        "forks": sum(o.forks for o in outcomes),
        **counts,
        "failed": sum(o.status != "ok" for o in outcomes),
        "children": len(outcomes),
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
        "failures": failures[:5],
    }


class Column(NamedTuple):
    """A table column: its header, the row key it shows, its width."""

    header: str
    key: str
    width: int


_COLUMNS = {
    column.key: column
    for column in (
        Column("path", "path", 12),
        Column("forks", "forks", 6),
        Column("ok", "ok", 5),
        Column("wrong", "wrong", 6),
        Column("hung", "hung", 5),
        Column("crashed", "crashed", 8),
        Column("hangs-at-exit", "hangs_at_exit", 14),
        Column("failed", "failed_of", 12),
        Column("p50 ms", "p50_ms", 9),
        Column("p99 ms", "p99_ms", 9),
    )
}


def rate(row: dict[str, Any]) -> str:
    """A row's launches that failed: ``k of n`` (a chain is one launch)."""
    return f"{row['failed']} of {row['children']}"


def columns(*keys: str) -> tuple[Column, ...]:
    """The table's columns for these row keys, in this order."""
    return tuple(_COLUMNS[key] for key in keys)


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def render(rows: list[dict[str, Any]], columns: Sequence[Column]) -> str:
    """The table: the first column left-aligned, the others right-aligned."""
    first, rest = columns[0], columns[1:]

    def line(cells: Sequence[str]) -> str:
        return " ".join([f"{cells[0]:<{first.width}}"] + [
            f"{cell:>{column.width}}" for cell, column in zip(cells[1:], rest)
        ])  # fmt: skip

    header = line([c.header for c in columns])
    lines = [header, "-" * len(header)]
    rows = [{**row, "failed_of": rate(row)} if "failed" in row else row for row in rows]
    lines += [line([_cell(row[c.key]) for c in columns]) for row in rows]
    return "\n".join(lines)


class Progress:
    """A progress line on a terminal (stderr), redrawn at most every 0.2 s; silent otherwise."""

    def __init__(self, total: int, enabled: bool, stream: TextIO | None = None) -> None:
        self.total = total
        self.done = 0
        self.failed = 0
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.started = time.monotonic()
        self._drawn = 0.0

    def add(self, outcome: Outcome) -> None:
        """Counts a finished launch."""
        self.done += 1
        self.failed += outcome.status != "ok"
        self.tick(force=True)

    def tick(self, force: bool = False) -> None:
        """Redraws the line if it is due."""
        now = time.monotonic()
        if not self.enabled or (not force and now - self._drawn < 0.2):
            return
        self._drawn = now
        self.stream.write(
            f"\r{self.done:>5}/{self.total} children done, {self.failed} failed, "
            f"{now - self.started:5.1f} s "
        )
        self.stream.flush()

    def clear(self) -> None:
        """Erases the line."""
        if self.enabled:
            self.stream.write("\r" + " " * 60 + "\r")
            self.stream.flush()
