"""``python -m forksafe stress``: the fork engine applied to forksafe's own probes.

Every child runs async work through both layers (the tokio runtime and the background loop) and
checks the values against its own PID. The fork paths, deadlines, hang reports and the table
are the engine's (``_forks``, ``_table``), shared with ``python -m forksafe check``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import forksafe
from forksafe import testing

from ._forks import FORK_PATHS, PATHS, Outcome, Work, run_forks
from ._table import Column, Progress, render, summarise

# The child's per-process client: proves fork_local rebuilds (its value carries the builder's PID).
_CLIENT = forksafe.fork_local(lambda: ("client", os.getpid()))

COLUMNS = (
    Column("method", "method", 12),
    Column("forks", "forks", 6),
    Column("ok", "ok", 6),
    Column("hung", "hung", 5),
    Column("wrong", "wrong", 6),
    Column("crashed", "crashed", 8),
    Column("p50 ms", "p50_ms", 8),
    Column("p99 ms", "p99_ms", 8),
)


def warm_up() -> None:
    """Uses every layer in this process, so that children inherit live state to recover from."""
    check_layers(0)


def check_layers(value: int) -> dict[str, Any]:
    """Runs async work through both layers; returns what was seen and when the first result came."""

    async def first() -> int:
        return await testing.echo(value)

    async def more() -> tuple[int, int]:
        return await testing.sleep(0.001, value), await testing.pid()

    echoed = forksafe.run(first())
    first_ns = time.monotonic_ns()
    slept, worker_pid = forksafe.run(more())
    pid = os.getpid()
    seen: dict[str, Any] = {
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


class ProbeWork(Work):
    """forksafe's probes: both layers, checked against the child's own PID."""

    def run(self, value: int) -> dict[str, Any]:
        seen = check_layers(value)
        if not seen["ok"]:
            seen["detail"] = json.dumps(seen)
        return seen


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (1 if any child hung, crashed or was wrong)."""
    parser = argparse.ArgumentParser(
        prog="python -m forksafe stress",
        description="Fork children by every method forksafe covers; in each, run async work "
        "through the tokio runtime and the background loop, and check the values.",
    )
    parser.add_argument(
        "--count", type=int, default=200, help="children (nested: chains) per method (default 200)"
    )
    parser.add_argument(
        "--depth", type=int, default=4, help="generations per chain for 'nested' (default 4)"
    )
    parser.add_argument(
        "--concurrency", type=int, default=4, help="children alive at once (default 4)"
    )
    parser.add_argument(
        "--methods",
        default=",".join(FORK_PATHS),
        help=f"comma-separated subset of {','.join(PATHS)} (default: {','.join(FORK_PATHS)})",
    )
    parser.add_argument(
        "--deadline", type=float, default=10.0, help="seconds before a child counts as hung"
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    if not hasattr(os, "fork"):
        print("python -m forksafe stress: this platform has no fork(); there is nothing to stress")
        return 0

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in PATHS]
    if unknown or not methods:
        parser.error(f"unknown method(s) {unknown}; choose from {', '.join(PATHS)}")
    for name in ("count", "depth", "concurrency"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if not args.deadline > 0:
        parser.error("--deadline must be a positive number of seconds")

    warm_up()
    live = sys.stderr.isatty() and not args.json
    jobs = [method for method in methods for _ in range(args.count)]
    progress = Progress(len(jobs), live)
    by_method: dict[str, list[Outcome]] = {method: [] for method in methods}
    started = time.monotonic()
    for outcome in run_forks(
        ProbeWork(),
        jobs,
        concurrency=args.concurrency,
        depth=args.depth,
        deadline=args.deadline,
        on_tick=progress.tick,
    ):
        done = by_method[outcome.method]
        done.append(outcome)
        progress.add(outcome)
        if not live and len(done) == args.count:
            row = summarise(outcome.method, done)
            print(f"{outcome.method}: {row['ok']}/{row['forks']} forks ok", file=sys.stderr)
    progress.clear()
    rows = [summarise(method, by_method[method]) for method in methods]
    elapsed = time.monotonic() - started
    failed = any(r["hung"] or r["wrong"] or r["crashed"] or r["hangs_at_exit"] for r in rows)
    if args.json:
        print(json.dumps({"rows": rows, "seconds": round(elapsed, 2), "passed": not failed}))
    else:
        print(render(rows, COLUMNS))
        for row in rows:
            for failure in row["failures"]:
                print(f"  {row['method']}: {failure}")
        verdict = "FAILED" if failed else "all children correct"
        print(f"\n{sum(r['forks'] for r in rows)} forks in {elapsed:.1f} s: {verdict}")
    return 1 if failed else 0
