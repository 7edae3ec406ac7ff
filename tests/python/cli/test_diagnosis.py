"""What check says under its table: stacks without its own frames (by package), the hint for a
child that rebuilt its runtime and still hung, and the free-threaded C-level fork hazard."""

from __future__ import annotations

import os

import forksafe
import pytest
from cliutil import check
from forksafe._cli import diagnosis
from forksafe._cli.engine import KINDS, Outcome, ProcessReport
from forksafe._cli.report import summarise

RUST_HINT = "forksafe::ForkLocal::with_init (for object_store"
FREE_THREADED = "CPython's free-threaded hazard"

CONTROL_SETUP = """
import forksafe
from forksafe import testing, _native

async def both(v):
    # forksafe's echo (a fresh runtime in a child), then an extension call on a runtime that
    # only the parent has: pyo3-async-runtimes' own, the control of tests/python/test_control.py
    return await testing.echo(v), await _native.testing.control_echo(v)
"""


def test_only_the_tools_own_frames_are_trimmed_from_stacks() -> None:
    package = os.path.dirname(forksafe.__file__)
    stack = "\n".join([
        "Thread 0x1 (most recent call first):",
        f'  File "{package}/_loop.py", line 71 in serve',
        "Current thread 0x2 (most recent call first):",
        '  File "/srv/app/check.py", line 27 in flush',  # the user's check.py: not the tool's
        f'  File "{package}/_cli/engine/child.py", line 198 in _leave',
        f'  File "{package}/_cli/check.py", line 140 in main',
        '  File "<frozen runpy>", line 88 in _run_code',
    ])  # fmt: skip
    assert diagnosis.trim_stack(stack).splitlines() == [
        "Thread 0x1 (most recent call first):",
        f'  File "{package}/_loop.py", line 71 in serve',  # forksafe's loop: the user's concern
        "Current thread 0x2 (most recent call first):",
        '  File "/srv/app/check.py", line 27 in flush',
        "  (forksafe check's own frames)",
    ]


def test_a_runtime_is_rebuilt_when_the_child_restarts_the_parents_worker_threads() -> None:
    parent = ["python", "forksafe-0", "forksafe-1", "tokio-runtime-w", "python"]
    assert diagnosis.rebuilt_runtimes(["python", "forksafe-0", "forksafe-1"], parent) == [
        "forksafe"
    ]
    assert diagnosis.rebuilt_runtimes(["python"], parent) == []
    assert diagnosis.rebuilt_runtimes(["python", "my-ext-0"], parent) == []  # not the parent's


def test_a_fresh_runtime_that_still_hangs_points_rust_authors_at_fork_local() -> None:
    run = check("--count", "1", "--deadline", "2", "--paths", "os_fork,mp_fork", "--setup",
                CONTROL_SETUP, "forksafe.run(both(1))")  # fmt: skip
    assert run.code == 1, run
    text = " ".join(run.stdout.split())  # the diagnosis is wrapped at 100 columns
    assert "os_fork: hung 1 of 1 processes" in text, run
    assert "The child runs a fresh runtime (its forksafe-N threads" in text, run
    assert RUST_HINT in text, run
    assert "forksafe::object_store::v0_14::ForkLocalConnector" in text, run
    assert "Python users: forksafe.fork_local(factory)" in text, run
    assert "a fresh runtime, still hung: see above" in text, run  # mp_fork: said once


def test_a_hang_without_a_rebuilt_runtime_gets_no_rust_hint() -> None:
    setup = "from concurrent.futures import ThreadPoolExecutor\npool = ThreadPoolExecutor(1)"
    run = check("--count", "1", "--deadline", "2", "--paths", "os_fork", "--setup", setup,
                "pool.submit(sum, [1, 2]).result()")  # fmt: skip
    assert run.code == 1, run
    text = " ".join(run.stdout.split())
    assert "os_fork: hung 1 of 1 processes" in text, run
    assert "fresh runtime" not in text and RUST_HINT not in text, run


def _failed(path: str, status: str, detail: str) -> Outcome:
    process = ProcessReport(4242, 1, 0, status=status, detail=detail)
    return Outcome(path, 1, 1, [process])


def _ok(path: str) -> Outcome:
    return Outcome(path, 1, 1, [ProcessReport(4243, 1, 0, status="ok", latency_ms=1.0)])


def _report(outcomes: dict[str, list[Outcome]]) -> str:
    rows = [summarise(path, found) for path, found in outcomes.items()]
    assert all(set(KINDS) <= set(row) for row in rows)
    return diagnosis.diagnose(rows, outcomes, parent_threads=["python"])


@pytest.mark.parametrize("free_threaded", [True, False])
def test_a_c_level_fork_that_hangs_or_crashes_without_a_gil_names_cpythons_hazard(
    monkeypatch: pytest.MonkeyPatch, free_threaded: bool
) -> None:
    # What 3.13t measured: after a C-level fork from a process with another thread attached,
    # children hang in gc.collect() or die of SIGSEGV, while os.fork's children are fine.
    monkeypatch.setattr(diagnosis, "free_threaded", lambda: free_threaded)
    text = _report({
        "os_fork": [_ok("os_fork")],
        "c_fork": [_failed("c_fork", "hung", "no result within 2 s")],
        "raw_syscall": [_failed("raw_syscall", "crashed", "killed by SIGSEGV before its result")],
    })  # fmt: skip
    flat = " ".join(text.split())
    if not free_threaded:
        assert FREE_THREADED not in flat, text
        return
    assert flat.count(FREE_THREADED) == 1, text  # said once, then referred to
    assert "free-threaded build: the likely cause is the one above" in flat, text
    assert "os.fork and multiprocessing avoid it (they stop the world before they fork)" in flat
    assert "Here every child of os_fork was ok." in flat, text
    assert "crashes (SIGSEGV)" in flat and "gc.collect()" in flat, text


def test_the_free_threaded_hazard_is_not_blamed_for_a_fork_that_stops_the_world(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(diagnosis, "free_threaded", lambda: True)
    text = _report({"os_fork": [_failed("os_fork", "hung", "no result within 2 s")]})
    assert FREE_THREADED not in " ".join(text.split()), text


def test_free_threaded_reads_the_interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(diagnosis.sys, "_is_gil_enabled", lambda: False, raising=False)
    assert diagnosis.free_threaded() is True
    monkeypatch.setattr(diagnosis.sys, "_is_gil_enabled", lambda: True, raising=False)
    assert diagnosis.free_threaded() is False  # a free-threaded build with the GIL on again


@pytest.mark.parametrize(
    ("subject", "said"),
    [({}, ("CODE never returned", "CODE returned (or raised", "CODE raised, or returned")),
     ({"subject": "the test function"},
      ("The test function never returned", "The test function returned (or raised",
       "The test function raised, or returned"))],
    ids=["check", "plugin"],
)  # fmt: skip
def test_the_diagnosis_names_its_subject(subject: dict[str, str], said: tuple[str, ...]) -> None:
    # check's texts speak of CODE; the pytest plugin's of the test function, same verdicts.
    outcomes = {
        "os_fork": [_failed("os_fork", "hung", "no result within 2 s")],
        "c_fork": [_failed("c_fork", "hangs_at_exit", "did not exit within 2 s")],
        "mp_fork": [_failed("mp_fork", "wrong", "the test raised: AssertionError")],
        "raw_syscall": [_failed("raw_syscall", "crashed", "killed by SIGSEGV")],
    }
    rows = [summarise(path, found) for path, found in outcomes.items()]
    text = diagnosis.diagnose(rows, outcomes, ["python"], **subject)
    flat = " ".join(text.split())
    for phrase in said:
        assert phrase in flat, (phrase, text)
    assert ("CODE" in flat) == (not subject), text
