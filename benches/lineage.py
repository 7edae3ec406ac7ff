"""The cost of a lineage: what each fork generation keeps of its ancestors.

Each generation leaks its ancestors' runtimes by design (docs/design.md, invariant 2). This
forks a chain of DEPTH generations (generation 0 is a fresh child of this script); each one uses
forksafe the way an extension does (``echo_sync`` builds its runtime and blocks on it, an
awaitable through ``forksafe.run`` starts its loop thread), then measures itself and forks the
next. Per generation: RSS and PSS (``/proc/self/smaps_rollup``), threads, open file descriptors,
and mappings (``/proc/self/maps``). Not a test: nothing is asserted; a generation that fails or
hangs past its deadline ends the chain and is reported.

Usage: python benches/lineage.py [DEPTH] [--json]   (DEPTH defaults to 16)
Prints a Markdown table, the growth per generation (least squares over the chain), and the
deepest chain that stays within RLIMIT_NOFILE (the soft limit, 1024 by default).
"""

from __future__ import annotations

import json
import os
import resource
import select
import signal
import sys
import time
from typing import Any

import forksafe

DEADLINE = 300.0
"""The whole chain's deadline; past it the chain is killed and what arrived is reported."""


def _kib(field: str, text: str) -> int:
    for line in text.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise ValueError(f"{field} not in /proc")


def measure(generation: int) -> dict[str, Any]:
    with open("/proc/self/smaps_rollup") as f:
        rollup = f.read()
    with open("/proc/self/status") as f:
        status = f.read()
    with open("/proc/self/maps") as f:
        mappings = sum(1 for _ in f)
    threads = next(int(x.split()[1]) for x in status.splitlines() if x.startswith("Threads:"))
    return {
        "generation": generation,
        "pid": os.getpid(),
        "rss_kib": _kib("Rss", rollup),
        "pss_kib": _kib("Pss", rollup),
        "threads": threads,
        "fds": len(os.listdir("/proc/self/fd")),
        "mappings": mappings,
        "depth": forksafe.runtime_info()["depth"],
    }


async def _echo(v: int) -> int:
    return await forksafe.testing.echo(v)


def use_forksafe(generation: int) -> None:
    """What one generation does with forksafe before it forks the next."""
    assert forksafe.testing.echo_sync(generation) == generation
    assert forksafe.run(_echo(generation)) == generation


def generation(n: int, depth: int, wfd: int) -> None:
    """Runs in each generation's process; never returns."""
    code = 0
    try:
        use_forksafe(n)
        os.write(wfd, (json.dumps(measure(n)) + "\n").encode())
        if n + 1 < depth:
            pid = os.fork()
            if pid == 0:
                generation(n + 1, depth, wfd)
            _, status = os.waitpid(pid, 0)
            code = 0 if os.waitstatus_to_exitcode(status) == 0 else 1
    except BaseException as error:
        os.write(wfd, (json.dumps({"generation": n, "error": repr(error)}) + "\n").encode())
        code = 1
    finally:
        os._exit(code)


def run_chain(depth: int) -> tuple[list[dict[str, Any]], str | None]:
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(rfd)
        os.setpgid(0, 0)
        generation(0, depth, wfd)
    os.close(wfd)
    received = b""
    expires = time.monotonic() + DEADLINE
    problem = None
    while True:
        remaining = expires - time.monotonic()
        if remaining <= 0:
            problem = f"chain killed after {DEADLINE:.0f} s"
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            break
        readable, _, _ = select.select([rfd], [], [], min(remaining, 1.0))
        if readable:
            chunk = os.read(rfd, 65536)
            if not chunk:
                break
            received += chunk
    os.close(rfd)
    _, status = os.waitpid(pid, 0)
    if problem is None and os.waitstatus_to_exitcode(status) != 0:
        problem = f"generation 0 exited with {os.waitstatus_to_exitcode(status)}"
    rows = [json.loads(line) for line in received.decode().splitlines() if line]
    errors = [f"generation {r['generation']}: {r['error']}" for r in rows if "error" in r]
    if errors:
        problem = "; ".join(([problem] if problem else []) + errors)
    return [r for r in rows if "error" not in r], problem


def slope(rows: list[dict[str, Any]], key: str) -> float:
    """Least-squares growth of ``key`` per generation."""
    xs = [r["generation"] for r in rows]
    ys = [r[key] for r in rows]
    n = len(xs)
    if n < 2:
        return 0.0
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx


KEYS = ("rss_kib", "pss_kib", "threads", "fds", "mappings")


def main() -> int:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    depth = int(args[0]) if args else 16
    rows, problem = run_chain(depth)
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    growth = {key: slope(rows, key) for key in KEYS}
    deepest = deepest_1024 = None
    if rows and growth["fds"] > 0:
        # Generations whose fds stay within the limit: fds(g) = fds(0) + g * growth <= limit.
        deepest = int((soft - rows[0]["fds"]) / growth["fds"]) + 1
        deepest_1024 = int((1024 - rows[0]["fds"]) / growth["fds"]) + 1
    result = {
        "depth": depth,
        "generations": len(rows),
        "rows": rows,
        "growth_per_generation": growth,
        "rlimit_nofile": soft,
        "deepest_chain_within_rlimit_nofile": deepest,
        "deepest_chain_within_1024_fds": deepest_1024,
        "problem": problem,
    }
    if "--json" in sys.argv:
        print(json.dumps(result, indent=2))
        return 0 if problem is None else 1
    print("| generation | RSS (KiB) | PSS (KiB) | threads | fds | mappings |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(
            f"| {r['generation']} | {r['rss_kib']} | {r['pss_kib']} | {r['threads']} | "
            f"{r['fds']} | {r['mappings']} |"
        )
    print()
    print("growth per generation: " + ", ".join(f"{k} {v:+.1f}" for k, v in growth.items()))
    if deepest is None:
        print(f"fds do not grow: no depth limit from RLIMIT_NOFILE={soft}")
    else:
        print(f"deepest chain within RLIMIT_NOFILE={soft}: {deepest} generations")
        print(f"deepest chain within 1024 fds (the default soft limit): {deepest_1024} generations")
    if problem:
        print(f"PROBLEM: {problem}")
    return 0 if problem is None else 1


if __name__ == "__main__":
    sys.exit(main())
