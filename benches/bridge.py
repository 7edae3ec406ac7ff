"""Bridge benchmarks: one variant per process, results as JSON on stdout.

Variants, all driving the same trivial Rust future (yield once to tokio, return the value):
  plain     plain pyo3_async_runtimes::tokio + a background loop without a PID check
  hooked    a hook-based runtime (AtomicPtr reset by pthread_atfork) through
            pyo3_async_runtimes::generic + a loop restarted by os.register_at_fork
  forksafe  forksafe.testing.echo / echo_sync + forksafe.LOOP
  generic   examples/pyo3-0.25 (pyo3 0.25): pyo3_async_runtimes::generic over
            forksafe::generic_runtime!'s type, forksafe::block_on + forksafe.LOOP

Usage: python benches/bridge.py VARIANT   (run by benches/run.py)
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import select
import statistics
import sys
import threading
import time
from collections.abc import Awaitable, Coroutine
from typing import Any, Callable

ROUNDS = 3


class PlainLoop:
    """The usual background loop of Rust-backed libraries: started once, never checked."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float | None = None) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)


class HookedLoop(PlainLoop):
    """A background loop that an at-fork hook restarts in the child (the hook-based design)."""

    def __init__(self) -> None:
        super().__init__()
        os.register_at_fork(after_in_child=self._restart)

    def _restart(self) -> None:
        PlainLoop.__init__(self)


def load(variant: str) -> tuple[Callable[[Any], Awaitable[Any]], Callable[[Any], Any], Any]:
    """(async echo, sync echo, loop with .run) for a variant."""
    if variant == "forksafe":
        import forksafe

        return forksafe.testing.echo, forksafe.testing.echo_sync, forksafe.LOOP
    if variant == "generic":
        import forksafe
        import forksafe_pyo3_025 as g

        return g.echo, g.echo_blocking, forksafe.LOOP
    import forksafe_baselines as b

    if variant == "plain":
        return b.plain_echo, b.plain_echo_sync, PlainLoop()
    if variant == "hooked":
        return b.hooked_echo, b.hooked_echo_sync, HookedLoop()
    raise SystemExit(f"unknown variant {variant!r}")


def best_rate(fn: Callable[[], int]) -> float:
    """Operations per second: the median of ROUNDS runs of fn (which returns its op count)."""
    rates = []
    for _ in range(ROUNDS):
        start = time.perf_counter()
        n = fn()
        rates.append(n / (time.perf_counter() - start))
    return statistics.median(rates)


def threads() -> int:
    return len(os.listdir("/proc/self/task"))


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return -1


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def fork_recovery(loop: Any, echo: Any, echo_sync: Any, n: int, sync: bool) -> dict[str, Any]:
    """Fork n children; each times fork -> first result (through the loop, or echo_sync)."""
    samples, hung = [], 0
    rss, rebuild = [], []
    for i in range(n):
        r, w = os.pipe()
        t0 = time.monotonic_ns()
        pid = os.fork()
        if pid == 0:
            started = time.monotonic_ns()  # the child's first instruction after fork
            os.close(r)
            try:
                if sync:
                    echo_sync(i)
                else:

                    async def first(i: int = i) -> Any:
                        return await echo(i)

                    loop.run(first())
                done = time.monotonic_ns()
                os.write(w, f"{done} {started} {rss_kib()}\n".encode())
            finally:
                os._exit(0)
        os.close(w)
        deadline = time.monotonic() + 3.0
        data = b""
        while time.monotonic() < deadline:
            ready, _, _ = select.select([r], [], [], 0.05)
            if ready:
                chunk = os.read(r, 100)
                if not chunk:
                    break
                data += chunk
        os.close(r)
        if data:
            done_ns, started_ns, child_rss = data.split()
            samples.append((int(done_ns) - t0) / 1e6)
            rebuild.append((int(done_ns) - int(started_ns)) / 1e6)
            rss.append(int(child_rss))
            os.waitpid(pid, 0)
        else:
            hung += 1
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            if hung >= 3:  # it hangs every time; no need to wait for all n
                break
    if not samples:
        return {"hung": hung, "p50_ms": None, "p99_ms": None, "child_rss_kib": None,
                "in_child_p50_ms": None, "in_child_p99_ms": None}  # fmt: skip
    return {
        "hung": hung,
        "p50_ms": percentile(samples, 50),
        "p99_ms": percentile(samples, 99),
        "in_child_p50_ms": percentile(rebuild, 50),
        "in_child_p99_ms": percentile(rebuild, 99),
        "child_rss_kib": int(statistics.median(rss)),
    }


def _spawn_worker(variant: str, q: Any) -> None:
    echo, _, loop = load(variant)

    async def first() -> Any:
        return await echo(1)

    loop.run(first())
    q.put(time.monotonic_ns())


def spawn_first_result(variant: str, n: int = 5) -> float:
    """p50 of spawn-context Process.start() -> the worker's first Rust result (ms)."""
    ctx = multiprocessing.get_context("spawn")
    samples = []
    for _ in range(n):
        q = ctx.Queue()
        t0 = time.monotonic_ns()
        p = ctx.Process(target=_spawn_worker, args=(variant, q))
        p.start()
        samples.append((q.get(timeout=60) - t0) / 1e6)
        p.join(60)
    return statistics.median(samples)


def main(variant: str) -> dict[str, Any]:
    echo, echo_sync, loop = load(variant)

    async def one() -> Any:
        return await echo(1)

    async def sequential(n: int) -> int:
        for i in range(n):
            assert await echo(i) == i
        return n

    async def gather(n: int) -> int:
        values = await asyncio.gather(*[echo(i) for i in range(n)])
        assert values == list(range(n))
        return n

    def sync_calls() -> int:
        for _ in range(2000):
            loop.run(one())
        return 2000

    def fast_sync() -> int:
        for i in range(200_000):
            echo_sync(i)
        return 200_000

    loop.run(one())
    result: dict[str, Any] = {"variant": variant}
    result["sync_calls_per_s"] = best_rate(sync_calls)
    result["sync_fast_path_per_s"] = best_rate(fast_sync)
    result["awaits_sequential_per_s"] = best_rate(lambda: loop.run(sequential(10_000)))
    result["awaits_gather_per_s"] = best_rate(
        lambda: sum(loop.run(gather(1000)) for _ in range(10))
    )
    loop.run(gather(1000))
    result["threads_after_1000_awaits"] = threads()
    result["parent_rss_kib"] = rss_kib()
    result["recovery_loop"] = fork_recovery(loop, echo, echo_sync, 60, sync=False)
    result["recovery_sync"] = fork_recovery(loop, echo, echo_sync, 60, sync=True)
    result["spawn_first_result_ms"] = spawn_first_result(variant)
    return result


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1])))
