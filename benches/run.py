"""Runs every benchmark and prints the ratio table (run through ``scripts/bench``).

1. ``cargo bench --bench guard`` once per guard mode: ns per guarded access.
2. ``benches/bridge.py`` once per variant (plain pyo3-async-runtimes, hook-based, forksafe),
   each in a fresh process.
3. Prints the table with ratios against the baselines of the same run, and with ``--write``
   replaces the generated part of docs/benchmarks.md and redraws docs/benchmarks.png.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

from _doc import write_between  # benches/ is this script's directory, first on sys.path

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = ("plain", "hooked", "forksafe")
BEGIN, END = "<!-- BEGIN GENERATED -->", "<!-- END GENERATED -->"
GENERIC_BEGIN, GENERIC_END = "<!-- BEGIN GENERIC -->", "<!-- END GENERIC -->"


def guard_costs() -> dict[str, dict[str, float]]:
    """ns per access for each guard bench, per mode (criterion's mean point estimate)."""
    costs: dict[str, dict[str, float]] = {}
    for mode, env in (("wipeonfork", {}), ("syscall", {"FORKSAFE_PID_CHECK": "syscall"})):
        subprocess.run(
            ["cargo", "bench", "--locked", "--bench", "guard", "--",
             "--warm-up-time", "1", "--measurement-time", "3"],
            cwd=ROOT, env={**os.environ, **env}, check=True, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        group = ROOT / "target" / "criterion" / f"guard_{mode}"
        costs[mode] = {
            bench.name: json.loads((bench / "new" / "estimates.json").read_text())["mean"][
                "point_estimate"
            ]
            for bench in group.iterdir()
            if (bench / "new" / "estimates.json").exists()
        }
    return costs


def bridge(variant: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, str(ROOT / "benches" / "bridge.py"), variant],
        cwd="/tmp", check=True, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    return json.loads(out.stdout)


def fmt_rate(x: float | None) -> str:
    return "hangs" if x is None else f"{x:,.0f}"


def fmt_ms(x: float | None) -> str:
    return "hangs" if x is None else f"{x:.2f}"


def ratio(ours: float | None, base: float | None, higher_is_better: bool = True) -> str:
    if ours is None or base is None or ours == 0 or base == 0:
        return "-"
    r = ours / base if higher_is_better else base / ours
    return f"{r:.1f}x"


def table(costs: dict[str, dict[str, float]], runs: dict[str, dict[str, Any]]) -> str:
    p, h, f = runs["plain"], runs["hooked"], runs["forksafe"]
    w, s = costs["wipeonfork"], costs["syscall"]
    lines = [
        "**Guard cost per access** (criterion, ns; lower is better)",
        "",
        "| access | ns | vs getpid() |",
        "|---|---|---|",
        f"| atomic pointer load (the hook-based guard) | {w['atomic_load']:.2f} | - |",
        f"| `getpid()` system call | {w['getpid']:.1f} | 1.0x |",
        f"| forksafe guard, wipe-on-fork page | {w['guard']:.2f} | "
        f"{w['getpid'] / w['guard']:.0f}x faster |",
        f"| forksafe guard, `FORKSAFE_PID_CHECK=syscall` | {s['guard']:.1f} | "
        f"{s['getpid'] / s['guard']:.1f}x |",
        f"| `forksafe::runtime()` (guard + runtime), wipe-on-fork | {w['runtime']:.2f} | - |",
        f"| `ForkLocal::get()`, wipe-on-fork | {w['fork_local']:.2f} | - |",
        "",
        "**Bridge** (same trivial future: `yield_now().await`, return the value)",
        "",
        "| workload | (a) plain pyo3-async-runtimes | (b) hook-based | (c) forksafe | "
        "forksafe vs (a) | forksafe vs (b) |",
        "|---|---|---|---|---|---|",
    ]

    def row(label: str, key: str, higher: bool = True, fmt: Any = fmt_rate) -> str:
        a, b, c = p[key], h[key], f[key]
        return (
            f"| {label} | {fmt(a)} | {fmt(b)} | {fmt(c)} | {ratio(c, a, higher)} | "
            f"{ratio(c, b, higher)} |"
        )

    lines += [
        row("sync call through the background loop, calls/s", "sync_calls_per_s"),
        row("sync fast path (`block_on`, GIL released), calls/s", "sync_fast_path_per_s"),
        f"| sync fast path vs (a)'s sync call through the loop | | | | "
        f"{ratio(f['sync_fast_path_per_s'], p['sync_calls_per_s'])} | |",
        row("awaits in one coroutine, sequential, /s", "awaits_sequential_per_s"),
        row("awaits, `gather` of 1,000, /s", "awaits_gather_per_s"),
        row("threads after 1,000 concurrent awaits", "threads_after_1000_awaits", False, str),
    ]
    for label, key in (("through the loop", "recovery_loop"), ("sync fast path", "recovery_sync")):
        for what, prefix in (("fork", ""), ("child's first instruction", "in_child_")):
            for q in ("p50", "p99"):
                a, b, c = (r[key][f"{prefix}{q}_ms"] for r in (p, h, f))
                lines.append(
                    f"| {what} → first result, {label}, {q} ms | {fmt_ms(a)} | {fmt_ms(b)} | "
                    f"{fmt_ms(c)} | {ratio(c, a, False)} | {ratio(c, b, False)} |"
                )
    lines.append(row("spawn-context worker's first result, ms", "spawn_first_result_ms",
                     False, fmt_ms))  # fmt: skip
    rss = [r["recovery_sync"]["child_rss_kib"] for r in (p, h, f)]
    lines.append(
        "| RSS of a child after the rebuild, MiB | "
        + " | ".join("-" if x is None else f"{x / 1024:.1f}" for x in rss)
        + f" | {ratio(rss[2], rss[0], False)} | {ratio(rss[2], rss[1], False)} |"
    )
    spawn_vs_fork = f["spawn_first_result_ms"] / f["recovery_sync"]["p99_ms"]
    lines += [
        "",
        f"A forked child's first result on the sync fast path (p99) comes {spawn_vs_fork:.0f}x "
        "sooner than a spawn-context worker's first result.",
        f"Hung children among those forked: (a) loop {p['recovery_loop']['hung']}, "
        f"(b) {h['recovery_loop']['hung']}, (c) {f['recovery_loop']['hung']}.",
    ]
    return "\n".join(lines)


def generic_table(runs: dict[str, dict[str, Any]]) -> str:
    """forksafe::generic_runtime! (examples/pyo3-0.25) against forksafe::python and plain."""
    g, f, p = runs["generic"], runs["forksafe"], runs["plain"]
    lines = [
        "| workload | (a) plain pyo3-async-runtimes | (c) `forksafe::python` | "
        "(g) `generic_runtime!` | (g) vs (a) | (g) vs (c) |",
        "|---|---|---|---|---|---|",
    ]

    def row(label: str, a: Any, c: Any, x: Any, higher: bool = True, fmt: Any = fmt_rate) -> str:
        return (
            f"| {label} | {fmt(a)} | {fmt(c)} | {fmt(x)} | {ratio(x, a, higher)} | "
            f"{ratio(x, c, higher)} |"
        )

    for label, key in (
        ("sync call through the background loop, calls/s", "sync_calls_per_s"),
        ("sync fast path (`block_on`, GIL released), calls/s", "sync_fast_path_per_s"),
        ("awaits in one coroutine, sequential, /s", "awaits_sequential_per_s"),
        ("awaits, `gather` of 1,000, /s", "awaits_gather_per_s"),
    ):
        lines.append(row(label, p[key], f[key], g[key]))
    key = "threads_after_1000_awaits"
    lines.append(row("threads after 1,000 concurrent awaits", p[key], f[key], g[key], False, str))
    for label, key in (("through the loop", "recovery_loop"), ("sync fast path", "recovery_sync")):
        lines.append(
            row(f"fork → first result, {label}, p99 ms", p[key]["p99_ms"], f[key]["p99_ms"],
                g[key]["p99_ms"], False, fmt_ms)
        )  # fmt: skip
    lines += [
        "",
        f"Hung children among those forked, through the loop: (a) {p['recovery_loop']['hung']}, "
        f"(c) {f['recovery_loop']['hung']}, (g) {g['recovery_loop']['hung']}.",
    ]
    return "\n".join(lines)


def plot(runs: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [
        ("sync call via loop\n(calls/s)", "sync_calls_per_s"),
        ("sync fast path\n(calls/s)", "sync_fast_path_per_s"),
        ("sequential awaits\n(/s)", "awaits_sequential_per_s"),
        ("gather of 1,000\n(awaits/s)", "awaits_gather_per_s"),
    ]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5), width_ratios=[3, 1])
    width = 0.27
    colors = {"plain": "#9e9e9e", "hooked": "#f4a261", "forksafe": "#2a9d8f"}
    labels = {"plain": "(a) plain pyo3-async-runtimes", "hooked": "(b) hook-based",
              "forksafe": "(c) forksafe"}  # fmt: skip
    for i, variant in enumerate(VARIANTS):
        values = [runs[variant][key] for _, key in metrics]
        xs = [j + (i - 1) * width for j in range(len(metrics))]
        ax1.bar(xs, values, width, label=labels[variant], color=colors[variant])
        threads = runs[variant]["threads_after_1000_awaits"]
        ax2.bar(i, threads, color=colors[variant])
        ax2.text(i, threads, str(threads), ha="center", va="bottom")
    ax1.set_yscale("log")
    ax1.set_xticks(range(len(metrics)), [m for m, _ in metrics])
    ax1.set_title("Throughput (log scale, higher is better)")
    ax1.legend(fontsize=8)
    ax2.set_xticks(range(3), ["(a)", "(b)", "(c)"])
    ax2.set_title("Threads after 1,000\nconcurrent awaits")
    fig.suptitle(f"forksafe benchmarks ({platform.machine()}, {os.cpu_count()} cores, "
                 f"CPython {platform.python_version()})")  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md and png")
    args = parser.parse_args()
    costs = guard_costs()
    runs = {v: bridge(v) for v in (*VARIANTS, "generic")}
    text = table(costs, runs)
    print(text)
    generic = generic_table(runs)
    print("\n**`generic_runtime!`** (pyo3 0.25 example)\n\n" + generic)
    (ROOT / "target").mkdir(exist_ok=True)
    (ROOT / "target" / "bench-results.json").write_text(
        json.dumps({"guard": costs, "bridge": runs}, indent=2)
    )
    if args.write:
        write_between(BEGIN, END, text)
        write_between(GENERIC_BEGIN, GENERIC_END, generic)
        plot(runs, ROOT / "docs" / "benchmarks.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
