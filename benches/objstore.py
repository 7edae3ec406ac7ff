"""forksafe_objstore against moto's S3 server: fork vs spawn workers, and the parent's two paths.

Run through ``scripts/bench`` (which builds and installs the example's wheel), or directly with
``forksafe_objstore`` installed and the example's test data module (``objdata``: moto and the
data set) on the path:
``PYTHONPATH=tests/objstore python benches/objstore.py [--write]``.

1. 4 workers read the same 1,000 objects (a quarter each) through an ObjectDataset built in the
   parent: ``multiprocessing`` fork workers (inheriting the parent's warm Store) against spawn
   workers (the dataset pickled, a fresh interpreter each). Objects/s and MB/s over the wall
   time from starting the workers to the last result, worker start-up included.
2. Time to the first object in a fresh worker: from ``Process.start()`` to the worker holding
   its first object (CLOCK_MONOTONIC is system-wide on Linux), fork against spawn.
3. The parent alone reading all 1,000 objects one after another: ``get_sync`` against
   ``await get`` through ``forksafe.run``.
4. Where a fork worker's first object goes, per object_store minor: one fork worker at a time
   (median of ``PROBES``), from ``Process.start()`` to the worker's code, then its forksafe
   runtime's build, one HTTP client's build (object_store's ``ReqwestConnector``, as the
   connector builds this process's), the first ``get_sync`` of a 1 KiB object (the connector's
   client build, a new connection, the request) and a second one on the same connection (the
   request alone). The first request minus the client build and the second request is the
   connection.

moto is a Python server: it, not the client, sets the ceiling on absolute figures; the ratios
are what this measures. With ``--write`` the table replaces the generated block of
docs/benchmarks.md between the OBJSTORE markers.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import statistics
import sys
import time
from typing import Any

import forksafe
import forksafe_objstore
import objdata
from _doc import publish  # benches/ is this script's directory, first on sys.path
from forksafe_objstore import ObjectDataset, Store

WORKERS = 4
ROUNDS = 3
PROBES = 15
BUILDS = {
    "object_store 0.13": ("0.13", "per-process"),
    "0.14, system roots read per process": ("0.14", "per-process"),
    "0.14, roots inherited": ("0.14", "inherited"),
}
BEGIN, END = "<!-- BEGIN OBJSTORE -->", "<!-- END OBJSTORE -->"


def _worker(dataset: ObjectDataset, indices: list[int], queue: Any) -> None:
    first = None
    total = 0
    for i in indices:
        data = dataset[i]
        if first is None:
            first = time.monotonic()
        total += len(data)
    queue.put((os.getpid(), first, total, len(indices)))


def workers(method: str, dataset: ObjectDataset) -> dict[str, float]:
    ctx = multiprocessing.get_context(method)
    queue = ctx.Queue()
    shards = [list(range(w, len(dataset), WORKERS)) for w in range(WORKERS)]
    start = time.monotonic()
    procs = []
    for shard in shards:
        proc = ctx.Process(target=_worker, args=(dataset, shard, queue))
        proc.start()
        procs.append(proc)
    results = [queue.get(timeout=300) for _ in procs]
    elapsed = time.monotonic() - start
    for proc in procs:
        proc.join(timeout=60)
        assert proc.exitcode == 0, (method, proc.exitcode)
    nbytes = sum(r[2] for r in results)
    count = sum(r[3] for r in results)
    assert count == len(dataset)
    return {
        "objects_s": count / elapsed,
        "mb_s": nbytes / elapsed / 1e6,
        "first_ms": statistics.median((r[1] - start) * 1e3 for r in results),
    }


def _probe(store: Store, keys: list[str], queue: Any) -> None:
    """In a fresh fork worker: the first object's time, phase by phase."""
    marks = [time.monotonic()]
    forksafe_objstore._native._build_runtime()
    marks.append(time.monotonic())
    forksafe_objstore._native._build_client(store)
    marks.append(time.monotonic())
    store.get_sync(keys[0])
    marks.append(time.monotonic())
    store.get_sync(keys[1])
    marks.append(time.monotonic())
    queue.put(marks)


def _first(store: Store, key: str, queue: Any) -> None:
    """In a fresh spawn worker: when its first object arrived."""
    store.get_sync(key)
    queue.put(time.monotonic())


def spawn_first(data: objdata.DataSet) -> float:
    """Median ms from ``Process.start()`` to a spawn worker's first object, one at a time."""
    store = Store.s3(objdata.BUCKET, **data.config)
    key = sorted(data.keys, key=lambda k: data.sizes[k])[0]
    ctx = multiprocessing.get_context("spawn")
    times = []
    for _ in range(PROBES):
        queue = ctx.Queue()
        proc = ctx.Process(target=_first, args=(store, key, queue))
        start = time.monotonic()
        proc.start()
        times.append(queue.get(timeout=120) - start)
        proc.join(timeout=60)
        assert proc.exitcode == 0, ("spawn", proc.exitcode)
    return statistics.median(times) * 1e3


def breakdown(data: objdata.DataSet, version: str, roots: str) -> dict[str, float]:
    """Median ms of each phase of a fork worker's first object (one worker at a time)."""
    store = Store.s3(objdata.BUCKET, **data.config, object_store=version, roots=roots)
    objdata.read_sync(store, data.sample(4))  # the parent's pool is warm, as in a DataLoader
    small = sorted(data.keys, key=lambda k: data.sizes[k])[:2]
    ctx = multiprocessing.get_context("fork")
    phases: dict[str, list[float]] = {
        k: [] for k in ("start", "runtime", "client", "first", "second", "total")
    }
    for _ in range(PROBES):
        queue = ctx.Queue()
        proc = ctx.Process(target=_probe, args=(store, small, queue))
        start = time.monotonic()
        proc.start()
        entered, runtime, client, first, second = queue.get(timeout=60)
        proc.join(timeout=60)
        assert proc.exitcode == 0, (version, roots, proc.exitcode)
        phases["start"].append(entered - start)
        phases["runtime"].append(runtime - entered)
        phases["client"].append(client - runtime)
        phases["first"].append(first - client)
        phases["second"].append(second - first)
        # The first object as a worker without the probes would see it: no extra client build.
        phases["total"].append((entered - start) + (runtime - entered) + (first - client))
    return {k: statistics.median(v) * 1e3 for k, v in phases.items()}


def breakdown_table(b: dict[str, dict[str, float]], spawn_ms: float) -> str:
    heads = " | ".join(f"{v}, ms" for v in b)
    lines = [
        f"A fork worker's first object, phase by phase (one worker at a time, median of "
        f"{PROBES}; 1 KiB objects):",
        "",
        f"| phase | {heads} |",
        "|---|" + "---:|" * len(b),
    ]
    rows = [
        ("`Process.start()` to the worker's code (fork, multiprocessing)", lambda p: p["start"]),
        ("forksafe runtime build", lambda p: p["runtime"]),
        ("HTTP client build (`ReqwestConnector`)", lambda p: p["client"]),
        ("first `get_sync`: client build + connection + request", lambda p: p["first"]),
        (
            "of which the connection (first - client - second)",
            lambda p: p["first"] - p["client"] - p["second"],
        ),
        ("second `get_sync`: the request alone", lambda p: p["second"]),
        (
            "first object without the probes (start + runtime + first, median)",
            lambda p: p["total"],
        ),
    ]
    for name, value in rows:
        lines.append(f"| {name} | " + " | ".join(f"{value(p):.2f}" for p in b.values()) + " |")
    lines.append(
        f"| a spawn worker's first object (same store, one at a time): {spawn_ms:.1f} ms; "
        "fork sooner by | " + " | ".join(f"{spawn_ms / p['total']:.1f}x" for p in b.values()) + " |"
    )
    return "\n".join(lines)


async def _get_all(store: Any, keys: list[str]) -> int:
    total = 0
    for key in keys:
        total += len(await store.get(key))
    return total


def parent(store: Any, keys: list[str], path: str) -> dict[str, float]:
    start = time.monotonic()
    if path == "sync":
        nbytes = sum(len(store.get_sync(key)) for key in keys)
    else:
        nbytes = forksafe.run(_get_all(store, keys))
    elapsed = time.monotonic() - start
    return {"objects_s": len(keys) / elapsed, "mb_s": nbytes / elapsed / 1e6}


def best(runs: list[dict[str, float]]) -> dict[str, float]:
    """Median of each figure over the rounds."""
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def table(r: dict[str, dict[str, float]], total_mb: float) -> str:
    fork, spawn, sync, run = r["fork"], r["spawn"], r["sync"], r["run"]
    lines = [
        f"1,000 objects, {total_mb:.1f} MB (1 KiB - 1 MiB), moto's S3 server on 127.0.0.1; "
        f"{WORKERS} workers; median of {ROUNDS} rounds; {platform.python_version()}, "
        f"{os.cpu_count()} CPUs.",
        "",
        "| measure | fork | spawn | fork / spawn |",
        "|---|---:|---:|---:|",
        f"| {WORKERS} workers, objects/s | {fork['objects_s']:,.0f} | {spawn['objects_s']:,.0f} "
        f"| {fork['objects_s'] / spawn['objects_s']:.2f}x |",
        f"| {WORKERS} workers, MB/s | {fork['mb_s']:,.1f} | {spawn['mb_s']:,.1f} "
        f"| {fork['mb_s'] / spawn['mb_s']:.2f}x |",
        f"| first object in a fresh worker, ms | {fork['first_ms']:,.1f} "
        f"| {spawn['first_ms']:,.1f} | {spawn['first_ms'] / fork['first_ms']:.1f}x sooner |",
        "",
        "| parent, one process | `get_sync` | `get` via `forksafe.run` | sync / async |",
        "|---|---:|---:|---:|",
        f"| objects/s | {sync['objects_s']:,.0f} | {run['objects_s']:,.0f} "
        f"| {sync['objects_s'] / run['objects_s']:.2f}x |",
        f"| MB/s | {sync['mb_s']:,.1f} | {run['mb_s']:,.1f} | {sync['mb_s'] / run['mb_s']:.2f}x |",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    parser.add_argument(
        "--breakdown-only", action="store_true", help="only the first object's phases"
    )
    args = parser.parse_args()
    server = objdata.MotoServer()
    try:
        data = objdata.populate(server)
        store = data.store()
        dataset = ObjectDataset(store, data.keys)
        # Warm the parent (runtime, pool) as a DataLoader's parent would have.
        objdata.read_sync(store, data.sample(10))
        objdata.read_async(store, data.sample(10, offset=1))
        runs: dict[str, list[dict[str, float]]] = {k: [] for k in ("fork", "spawn", "sync", "run")}
        for _ in range(0 if args.breakdown_only else ROUNDS):
            runs["fork"].append(workers("fork", dataset))
            runs["spawn"].append(workers("spawn", dataset))
            runs["sync"].append(parent(store, data.keys, "sync"))
            runs["run"].append(parent(store, data.keys, "run"))
        total_mb = sum(data.sizes.values()) / 1e6
        phases = {name: breakdown(data, *build) for name, build in BUILDS.items()}
        spawn_ms = spawn_first(data)
    finally:
        server.stop()
    if args.breakdown_only:
        print(breakdown_table(phases, spawn_ms))
        return 0
    text = (
        table({k: best(v) for k, v in runs.items()}, total_mb)
        + "\n\n"
        + breakdown_table(phases, spawn_ms)
    )
    publish(text, BEGIN, END, args.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
