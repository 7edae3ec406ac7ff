"""``python -m forksafe stress``: the fork engine applied to forksafe's own probes.

Every child runs async work through both layers (the tokio runtime and the background loop) and
checks the values against its own PID (:mod:`.probes`). The fork paths, deadlines, hang reports
and the table are the engine's and the report's, shared with ``python -m forksafe check``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence

from . import options
from .engine import FORK_PATHS, Outcome, run_forks
from .probes import ProbeWork, warm_up
from .report import Progress, columns, render, summarise

COLUMNS = columns("path", "forks", "ok", "hung", "wrong", "crashed", "p50_ms", "p99_ms")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (1 if any child hung, crashed or was wrong)."""
    parser = argparse.ArgumentParser(
        prog="python -m forksafe stress",
        description="Fork children by every path forksafe covers; in each, run async work "
        "through the tokio runtime and the background loop, and check the values.",
    )
    options.fork_options(
        parser, count=200, depth=4, paths=FORK_PATHS, per="seconds before a child counts as hung"
    )
    parser.add_argument(
        "--concurrency", type=int, default=4, help="children alive at once (default 4)"
    )
    args = parser.parse_args(argv)
    if not hasattr(os, "fork"):
        print("python -m forksafe stress: this platform has no fork(); there is nothing to stress")
        return 0
    paths = options.chosen_paths(parser, args)

    warm_up()
    live = sys.stderr.isatty() and not args.json
    jobs = [name for name in paths for _ in range(args.count)]
    progress = Progress(len(jobs), live)
    by_path: dict[str, list[Outcome]] = {name: [] for name in paths}
    started = time.monotonic()
    for outcome in run_forks(
        ProbeWork(),
        jobs,
        concurrency=args.concurrency,
        depth=args.depth,
        deadline=args.deadline,
        on_tick=progress.tick,
    ):
        done = by_path[outcome.path]
        done.append(outcome)
        progress.add(outcome)
        if not live and len(done) == args.count:
            row = summarise(outcome.path, done)
            print(f"{outcome.path}: {row['ok']}/{row['forks']} forks ok", file=sys.stderr)
    progress.clear()
    rows = [summarise(name, by_path[name]) for name in paths]
    elapsed = time.monotonic() - started
    failed = any(r["hung"] or r["wrong"] or r["crashed"] or r["hangs_at_exit"] for r in rows)
    if args.json:
        print(json.dumps({"rows": rows, "seconds": round(elapsed, 2), "passed": not failed}))
    else:
        print(render(rows, COLUMNS))
        for row in rows:
            for failure in row["failures"]:
                print(f"  {row['path']}: {failure}")
        verdict = "FAILED" if failed else "all children correct"
        print(f"\n{sum(r['forks'] for r in rows)} forks in {elapsed:.1f} s: {verdict}")
    return 1 if failed else 0
