"""Fork tests: a Store built and warmed in the parent, used in children made by every fork path.

Every child runs under a hang detector (a deadline, then SIGKILL and a failure with its last
words) and reports what it read; the parent checks each object's SHA-256. Children also build
their own Store. The parent keeps reading while its children read, and after.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import threading
import time
import traceback
from typing import Any

import forksafe_objstore
import objdata
import pytest
from forksafe._cli.engine import calls, paths
from forksafe_objstore import ObjectDataset, Store

DEADLINE = float(os.environ.get("OBJSTORE_TEST_DEADLINE", "30"))
"""Seconds a child gets to read its objects (it needs well under two on an idle machine). The
negative-control run (test_control.py) shortens it: there every child is expected to hang."""


class ParentReader:
    """Reads objects in the parent on a thread, both paths, until stopped; checks every one."""

    def __init__(self, store: Store, data: objdata.DataSet) -> None:
        self.store, self.data = store, data
        self.read: list[list[Any]] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="parent-reader", daemon=True)

    def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            keys = self.data.sample(4, offset=i)
            i += 1
            try:
                self.read += objdata.read_sync(self.store, keys[:2])
                self.read += objdata.read_async(self.store, keys[2:])
            except Exception:
                self.errors.append(traceback.format_exc())
                return

    def __enter__(self) -> ParentReader:
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: object, tb: object) -> None:
        self._stop.set()
        self._thread.join(timeout=2 * DEADLINE)
        problems = []
        if self._thread.is_alive():
            problems.append(
                f"the parent's reader thread hung (no read within {2 * DEADLINE:.0f} s)"
            )
        problems += [f"the parent failed to read:\n{e}" for e in self.errors]
        wrong = self.data.problems(self.read)
        if wrong:
            problems.append("the parent read wrong objects:\n" + "\n".join(wrong[:10]))
        if not self.read and not problems:
            problems.append("the parent read nothing while its children read")
        if problems and exc_type is not None:
            # Both failures in one message: the children's first, then the parent's.
            pytest.fail(
                f"{exc}\nand in the parent meanwhile: " + "; ".join(problems), pytrace=False
            )
        assert not problems, "; ".join(problems)


def parent_still_reads(store: Store, data: objdata.DataSet) -> None:
    keys = data.sample(6, offset=11)
    data.require(objdata.read_sync(store, keys[:3]), keys[:3], "parent after (get_sync)")
    data.require(objdata.read_async(store, keys[3:]), keys[3:], "parent after (get)")


def check_reports(
    data: objdata.DataSet, reports: list[dict[str, Any]], who: str, parent: int | None = None
) -> None:
    """Every object each child read is right; each child built its own runtime."""
    for report in reports:
        pid = report["pid"]
        for path in ("sync", "async", "fresh"):
            data.require(report[path], report[f"{path}_keys"], f"{who} {pid} ({path})")
        objdata.check_child_info(report["info"], os.getpid() if parent is None else parent)


def child_reads(
    store: Store, data: objdata.DataSet, keys: list[str], fresh_keys: list[str], progress: Any
) -> dict[str, Any]:
    """In a child: the inherited store by both paths, then a store built here."""
    half = len(keys) // 2
    both = objdata.read_both(store, keys, progress)
    progress("a Store built in the child: get_sync")
    fresh = objdata.read_sync(data.store(), fresh_keys)
    progress("done")
    return {
        "pid": os.getpid(),
        "sync": both["sync"],
        "sync_keys": keys[:half],
        "async": both["async"],
        "async_keys": keys[half:],
        "fresh": fresh,
        "fresh_keys": fresh_keys,
        "info": objdata.info(),
    }


# --------------------------------------------------------------------------------------------
# DataLoader-style: multiprocessing fork workers reading shards through ObjectDataset
# --------------------------------------------------------------------------------------------


def _loader_worker(
    dataset: ObjectDataset, indices: list[int], conn: multiprocessing.connection.Connection
) -> None:
    """A DataLoader worker's loop: ``dataset[i]`` for its shard, results back over a pipe."""
    try:
        calls.set_progress_sink(lambda line: conn.send({"progress": line}))
        calls.progress(f"reading {len(indices)} objects")
        read = [objdata.digest(dataset.keys[i], dataset[i]) for i in indices]
        calls.progress("a Store built in the worker")
        own = ObjectDataset(Store._rebuild(*dataset.store.__reduce__()[1]), dataset.keys)
        fresh = [objdata.digest(own.keys[i], own[i]) for i in indices[:5]]
        conn.send({"report": {"read": read, "fresh": fresh, "info": objdata.info()}})
    except BaseException:
        conn.send({"error": traceback.format_exc()})
    finally:
        conn.close()


def _run_fork_workers(
    dataset: ObjectDataset, shards: list[list[int]], deadline: float
) -> list[dict[str, Any]]:
    """Starts one fork-context Process per shard; each must report within ``deadline``."""
    ctx = multiprocessing.get_context("fork")
    workers = []
    for shard in shards:
        parent_end, child_end = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_loader_worker, args=(dataset, shard, child_end), daemon=True)
        proc.start()
        child_end.close()
        workers.append((proc, parent_end))
    reports: list[dict[str, Any]] = []
    failures: list[str] = []
    expires = time.monotonic() + deadline
    for index, (proc, conn) in enumerate(workers):
        words: list[str] = []
        report = error = None
        while report is None and error is None:
            remaining = expires - time.monotonic()
            if remaining <= 0 or not conn.poll(remaining):
                break
            try:
                message = conn.recv()
            except EOFError:
                break
            words += [message["progress"]] if "progress" in message else []
            report, error = message.get("report"), message.get("error")
        proc.join(timeout=max(0.0, expires - time.monotonic()))
        if proc.is_alive():
            proc.kill()
            proc.join()
            failures.append(
                f"worker {index} (pid {proc.pid}) hung: no report within {deadline:.0f} s, "
                "killed; last words:\n" + "\n".join(words)
            )
        elif report is None:
            failures.append(
                f"worker {index} (pid {proc.pid}) exit {proc.exitcode} without a report:\n"
                + (error or "\n".join(words))
            )
        else:
            reports.append(report)
        conn.close()
    if failures:
        pytest.fail("\n".join(failures), pytrace=False)
    return reports


def test_dataloader_fork_workers_read_every_shard(store: Store, data: objdata.DataSet) -> None:
    """4 fork workers read all 1,000 objects (one shard each) through an ObjectDataset built in
    the parent over the parent's warm Store, as torch's DataLoader does with fork workers."""
    dataset = ObjectDataset(store, data.keys)
    shards = [list(range(w, objdata.COUNT, 4)) for w in range(4)]
    with ParentReader(store, data):
        reports = _run_fork_workers(dataset, shards, DEADLINE * 2)
    for shard, report in zip(shards, reports):
        keys = [data.keys[i] for i in shard]
        data.require(report["read"], keys, "fork worker")
        data.require(report["fresh"], keys[:5], "fork worker (own Store)")
        objdata.check_child_info(report["info"], os.getpid())
    parent_still_reads(store, data)


# --------------------------------------------------------------------------------------------
# 4 concurrent os.fork children, both paths
# --------------------------------------------------------------------------------------------


def test_four_concurrent_os_fork_children(store: Store, data: objdata.DataSet) -> None:
    """Four children forked while a parent thread is reading, all reading at once."""

    def body(index: int) -> dict[str, Any]:
        keys = data.sample(40, offset=index * 5)
        return child_reads(store, data, keys, data.sample(6, offset=index), calls.progress)

    with ParentReader(store, data):
        children = calls.spawn(body, count=4, indexed=True, together=True, deadline=DEADLINE)
    problems = calls.failures(children)
    if problems:
        pytest.fail(problems, pytrace=False)
    check_reports(data, [c.report for c in children], "os_fork child")
    parent_still_reads(store, data)


# --------------------------------------------------------------------------------------------
# C-level fork, raw clone, nested forks
# --------------------------------------------------------------------------------------------


def quiesce(store: Store, data: objdata.DataSet) -> None:
    """Before a C-level or raw fork: no other Python thread, the runtime's workers idle."""
    me = threading.current_thread()
    busy = [t.name for t in threading.enumerate() if t is not me]
    assert not busy, f"cannot fork from C with Python threads running: {busy}"
    data.require(objdata.read_sync(store, data.keys[:1]), data.keys[:1], "parent before fork")
    time.sleep(0.3)


def _forked_reader(store: Store, data: objdata.DataSet, index: int) -> dict[str, Any]:
    keys = data.sample(20, offset=index)
    return child_reads(store, data, keys, data.sample(4, offset=index + 1), calls.progress)


@pytest.mark.parametrize("path", [row.name for row in paths.ROWS if row.stale])
def test_c_level_and_raw_fork(path: str, store: Store, data: objdata.DataSet) -> None:
    quiesce(store, data)
    outcome = calls.spawn(_forked_reader, store, data, 3, path=path, deadline=DEADLINE)[0]
    check_reports(data, [outcome.require()], f"{path} child")
    parent_still_reads(store, data)


def _generation(store: Store, data: objdata.DataSet, level: int, depth: int) -> dict[str, Any]:
    """Reads, then (above the last level) forks the next generation and waits for it."""
    report = _forked_reader(store, data, level)
    if level < depth:
        calls.progress(f"generation {level}: forking generation {level + 1}")
        outcome = calls.spawn(
            _generation, store, data, level + 1, depth, deadline=DEADLINE * (depth - level)
        )[0]
        report["child"] = outcome.summary()
        calls.progress(f"generation {level}: reading after its child")
        report["after"] = objdata.read_sync(store, data.sample(4, offset=level + 7))
    return report


def test_nested_forks_three_deep(store: Store, data: objdata.DataSet) -> None:
    depth = 3
    outcome = calls.spawn(_generation, store, data, 1, depth, deadline=DEADLINE * (depth + 1))[0]
    report = outcome.require()
    parent_pid = os.getpid()
    for level in range(1, depth + 1):
        check_reports(data, [report], f"generation {level}", parent_pid)
        info = report["info"]
        if not forksafe_objstore.CONTROL:
            assert info["depth"] == level, info
            assert info["inherited_runtimes"][0][0] == parent_pid, info
        parent_pid = report["pid"]
        if level < depth:
            assert "after" in report
            assert not data.problems(report["after"]), f"generation {level} after its child"
            child = report["child"]
            assert child["ok"], f"generation {level + 1} failed: {child['description']}"
            report = child["report"]
    parent_still_reads(store, data)
