"""multiprocessing and concurrent.futures with the fork start method."""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import multiprocessing.connection
import time
import traceback
from typing import Any

import forkutil
import pytest

FORK = multiprocessing.get_context("fork")


def _process_target(conn: multiprocessing.connection.Connection, v: str) -> None:
    forkutil.set_progress_sink(lambda line: conn.send(("progress", line)))
    try:
        conn.send(("report", forkutil.exercise(v)))
    except BaseException:
        conn.send(("error", traceback.format_exc()))
    finally:
        conn.close()


def test_process(parent_report: dict[str, Any]) -> None:
    v = forkutil.new_value("mp-process")
    receiver, sender = FORK.Pipe(duplex=False)
    process = FORK.Process(target=_process_target, args=(sender, v), name="forksafe-mp-child")
    process.start()
    sender.close()
    words: list[str] = []
    result: tuple[str, Any] | None = None
    expires = time.monotonic() + forkutil.CHILD_DEADLINE
    try:
        while result is None:
            remaining = expires - time.monotonic()
            if remaining <= 0 or not receiver.poll(remaining):
                break
            try:
                kind, payload = receiver.recv()
            except EOFError:
                break
            if kind == "progress":
                words.append(payload)
            else:
                result = (kind, payload)
        process.join(timeout=max(0.0, expires - time.monotonic()) + 1)
    finally:
        receiver.close()
        if process.is_alive():
            process.kill()
            process.join()
            pytest.fail(
                f"child hung: multiprocessing child {process.pid} did not finish within "
                f"{forkutil.CHILD_DEADLINE:.0f} s and was killed; last words:\n"
                + ("\n".join(words) or "(nothing)"),
                pytrace=False,
            )
    last_words = "\n".join(words) or "(nothing)"
    assert result is not None, f"child sent no report; last words:\n{last_words}"
    kind, payload = result
    assert kind == "report", f"child raised:\n{payload}\nlast words:\n{last_words}"
    assert process.exitcode == 0, f"exit code {process.exitcode}; last words:\n{last_words}"
    forkutil.check(payload, v, parent_report)
    forkutil.exercise_parent()


def _worker_exercise(v: str) -> dict[str, Any]:
    return forkutil.exercise(v)


def _check_worker_reports(
    reports: list[dict[str, Any]], values: list[str], parent_report: dict[str, Any]
) -> None:
    assert len(reports) == len(values)
    loops: dict[int, int] = {}
    for report, v in zip(reports, values):
        forkutil.check(report, v, parent_report)
        # A worker that served several values kept one loop.
        assert loops.setdefault(report["pid"], report["loop_id"]) == report["loop_id"]


def test_pool(parent_report: dict[str, Any]) -> None:
    values = [forkutil.new_value(f"pool-{i}") for i in range(8)]
    pool = FORK.Pool(processes=3)
    ok = False
    try:
        pending = pool.map_async(_worker_exercise, values, chunksize=1)
        try:
            reports = pending.get(timeout=forkutil.CHILD_DEADLINE)
        except multiprocessing.TimeoutError:
            pytest.fail(
                f"child hung: Pool.map over {len(values)} values returned nothing within "
                f"{forkutil.CHILD_DEADLINE:.0f} s (workers terminated)",
                pytrace=False,
            )
        _check_worker_reports(reports, values, parent_report)
        ok = True
    finally:
        if ok:
            pool.close()
        else:
            pool.terminate()
        pool.join()
    forkutil.exercise_parent()


def test_process_pool_executor(parent_report: dict[str, Any]) -> None:
    values = [forkutil.new_value(f"ppe-{i}") for i in range(6)]
    executor = concurrent.futures.ProcessPoolExecutor(max_workers=2, mp_context=FORK)
    ok = False
    try:
        futures = [executor.submit(_worker_exercise, v) for v in values]
        expires = time.monotonic() + forkutil.CHILD_DEADLINE
        reports = []
        for i, future in enumerate(futures):
            try:
                reports.append(future.result(timeout=max(0.0, expires - time.monotonic())))
            except concurrent.futures.TimeoutError:
                pytest.fail(
                    f"child hung: ProcessPoolExecutor returned {i} of {len(values)} results "
                    f"within {forkutil.CHILD_DEADLINE:.0f} s (workers killed)",
                    pytrace=False,
                )
        _check_worker_reports(reports, values, parent_report)
        ok = True
    finally:
        if not ok:
            # Kill hung workers, or shutdown would wait for them forever.
            for process in list(getattr(executor, "_processes", {}).values()):
                process.kill()
        executor.shutdown(wait=ok, cancel_futures=True)
    forkutil.exercise_parent()
