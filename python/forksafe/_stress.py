"""``python -m forksafe stress``: fork children by every path and check both layers in each."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence

from ._forks import METHODS, Outcome, run_forks, warm_up


def _percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def summarise(method: str, outcomes: list[Outcome]) -> dict[str, object]:
    """One table row, counted in forks (a nested chain of depth d is d forks): how many ended
    ok, hung, wrong or crashed, and fork->first-result percentiles (ms)."""
    latencies = [o.latency_ms for o in outcomes if o.latency_ms is not None]
    counts = {"ok": 0, "hung": 0, "wrong": 0, "crashed": 0}
    for o in outcomes:
        good = sum(1 for r in o.reports if r.get("ok")) if o.status != "ok" else o.forks
        counts["ok"] += good
        if o.status != "ok":
            counts[o.status] += o.forks - good
    failures = [f"{o.status}: {o.detail}" for o in outcomes if o.status != "ok"]
    return {
        "method": method,
        "forks": sum(o.forks for o in outcomes),
        **counts,
        "children": len(outcomes),
        "p50_ms": _percentile(latencies, 50),
        "p99_ms": _percentile(latencies, 99),
        "failures": failures[:5],
    }


def _ms(value: object) -> str:
    return f"{value:.2f}" if isinstance(value, float) else "-"


def render(rows: list[dict[str, object]]) -> str:
    """The human-readable table."""
    header = (
        f"{'method':<12} {'forks':>6} {'ok':>6} {'hung':>5} {'wrong':>6} {'crashed':>8} "
        f"{'p50 ms':>8} {'p99 ms':>8}"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(
            f"{r['method']:<12} {r['forks']:>6} {r['ok']:>6} {r['hung']:>5} {r['wrong']:>6} "
            f"{r['crashed']:>8} {_ms(r['p50_ms']):>8} {_ms(r['p99_ms']):>8}"
        )
    for r in rows:
        for failure in r["failures"]:  # type: ignore[attr-defined]
            lines.append(f"  {r['method']}: {failure}")
    return "\n".join(lines)


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
        default=",".join(METHODS),
        help=f"comma-separated subset of {','.join(METHODS)} (default: all)",
    )
    parser.add_argument(
        "--deadline", type=float, default=10.0, help="seconds before a child counts as hung"
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        parser.error(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    for name in ("count", "depth", "concurrency"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if not args.deadline > 0:
        parser.error("--deadline must be a positive number of seconds")

    warm_up()
    live = sys.stderr.isatty() and not args.json
    rows = []
    started = time.monotonic()
    for method in methods:
        outcomes: list[Outcome] = []
        for outcome in run_forks(
            method,
            args.count,
            concurrency=args.concurrency,
            depth=args.depth,
            deadline=args.deadline,
        ):
            outcomes.append(outcome)
            if live:
                bad = sum(o.status != "ok" for o in outcomes)
                sys.stderr.write(f"\r{method:<12} {len(outcomes):>5}/{args.count}  failed {bad}   ")
                sys.stderr.flush()
        row = summarise(method, outcomes)
        rows.append(row)
        if live:
            sys.stderr.write("\r" + " " * 40 + "\r")
        else:
            print(f"{method}: {row['ok']}/{row['forks']} forks ok", file=sys.stderr, flush=True)
    elapsed = time.monotonic() - started
    failed = any(r["hung"] or r["wrong"] or r["crashed"] for r in rows)
    if args.json:
        print(json.dumps({"rows": rows, "seconds": round(elapsed, 2), "passed": not failed}))
    else:
        print(render(rows))
        verdict = "FAILED" if failed else "all children correct"
        print(f"\n{sum(r['forks'] for r in rows)} forks in {elapsed:.1f} s: {verdict}")  # type: ignore[misc]
    return 1 if failed else 0
