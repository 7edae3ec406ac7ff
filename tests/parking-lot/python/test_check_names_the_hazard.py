"""``python -m forksafe check`` on the parking_lot reproduction as a Python extension (issue 21):
the report names the hazard.

``tests/parking-lot/pyext`` is an extension on forksafe whose tree turns tokio's ``parking_lot``
on through a dependency (cargo feature ``hazard``, as lance-namespace-impls does in LanceDB's
tree). scripts/jobs/parking-lot builds it twice and installs each build into a directory of its
own: ``PL_PY_HAZARD_SITE`` (feature on) and ``PL_PY_CONTROL_SITE`` (the same source, feature
off). check runs with that directory on ``PYTHONPATH``.

The setup makes a busy parent: 16 threads of the extension's own parked for good on tokio
channels (their nodes stay linked in parking_lot_core's table at every fork), 3 threads using
forksafe's runtime in a loop, and one run of CODE. CODE, in each child: 16 threads with the
same stack size (glibc hands them the dead threads' cached stacks) wait 20 times each for a
task on forksafe's runtime. With the feature on most children of these paths hang (lost
wake-ups) or crash (docs/benchmarks.md has the rates): the test needs one hung child, whose
native frames check reads with gdb, and asserts the diagnosis names parking_lot's table, its
frames and the recipe. The control build must pass on the same paths, the same way.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from typing import Any

import pytest

STACK = 2 << 20
SETUP = (
    "import forksafe_parking_lot_py as m\n"
    f"m.park_threads(16, {STACK})\n"
    "m.start_busy(3)\n"
    f"m.work(16, 20, {STACK})\n"
    "assert m.hazard() == (HAZARD, HAZARD), m.hazard()  # the build, and forksafe's probe\n"
)
CODE = f"m.work(16, 20, {STACK})"
PATHS = "c_fork,thread_fork,nested"
COUNT = "12"
HAZARD_NAME = "parking_lot's parking table"
RECIPE = "When a dependency turns on tokio's parking_lot"
RUN_TIMEOUT = 300.0


def _site(variable: str) -> str:
    site = os.environ.get(variable, "")
    if site:
        return site
    if os.environ.get("FORKSAFE_REQUIRE_CARGO", "") not in ("", "0"):
        pytest.fail(f"{variable} is not set: scripts/jobs/parking-lot builds the extension")
    pytest.skip(
        f"{variable} is not set: no build of tests/parking-lot/pyext "
        "(scripts/jobs/parking-lot builds one)"
    )


def _check(site: str, hazard: bool, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m forksafe check`` on the reproduction, in a session of its own, killed whole
    if it overruns."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [site, os.environ.get("PYTHONPATH")])),
    }
    setup = SETUP.replace("HAZARD", str(hazard))
    argv = [sys.executable, "-m", "forksafe", "check", "--setup", setup, "--paths", PATHS,
            "--count", COUNT, "--deadline", "4", "--budget", "1", *args, CODE]  # fmt: skip
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=env, cwd="/tmp", start_new_session=True)  # fmt: skip
    try:
        stdout, stderr = process.communicate(timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        pytest.fail(f"check overran {RUN_TIMEOUT:g} s:\n{stdout[-3000:]}\n{stderr[-2000:]}")
    return subprocess.CompletedProcess(argv, process.returncode, stdout, stderr)


def _processes(report: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for outcome in report["outcomes"] for p in outcome.get("processes", [])]


def _hazards(process: dict[str, Any]) -> list[str]:
    return [h["name"] for h in (process.get("native") or {}).get("hazards", [])]


def test_check_names_the_parking_lot_hazard_from_the_native_frames_of_a_hung_child() -> None:
    site = _site("PL_PY_HAZARD_SITE")
    if shutil.which("gdb") is None and shutil.which("eu-stack") is None:
        pytest.fail("neither gdb nor eu-stack is installed: check reads native frames with one")
    run = _check(site, True)
    out = run.stdout
    assert run.returncode == 1, f"check passed with the feature on?\n{out}\n{run.stderr}"
    assert "parent: CODE returned" in out, out
    # The report as a reader sees it, its wrapped lines joined.
    flat = re.sub(r"\s*\n\s*", " ", re.sub(r"-\n\s+", "-", out))
    assert "hung" in out and "no result within 4 s" in out, f"no hung child to diagnose:\n{out}"
    assert f"known native hazard: {HAZARD_NAME}." in flat, out
    assert "docs/extension-authors.md" in flat and f'"{RECIPE}"' in flat, out
    assert "doctor --cargo" in flat, out
    # The frames it was recognised by, in the backtrace check printed.
    backtrace = (
        out.partition("native backtrace (gdb):")[2]
        or out.partition("native backtrace (eu-stack):")[2]
    )
    assert "parking_lot_core::" in backtrace, out


def test_check_json_carries_the_hazard_with_the_frames() -> None:
    site = _site("PL_PY_HAZARD_SITE")
    run = _check(site, True, "--json")
    assert run.returncode == 1, run.stderr
    named = [p for p in _processes(json.loads(run.stdout)) if HAZARD_NAME in _hazards(p)]
    assert named, f"no child's native evidence names the hazard:\n{run.stdout[-4000:]}"
    for process in named:
        assert process["status"] == "hung", process
        assert "parking_lot_core::" in process["native"]["backtrace"], process
        (fix,) = [h["fix"] for h in process["native"]["hazards"] if h["name"] == HAZARD_NAME]
        assert RECIPE in fix, fix


def test_the_same_extension_without_the_feature_passes_every_path() -> None:
    site = _site("PL_PY_CONTROL_SITE")
    run = _check(site, False, "--json")
    report = json.loads(run.stdout)
    failed = {row["path"]: row for row in report["rows"] if row["ok"] != row["forks"]}
    assert run.returncode == 0 and not failed, (
        f"the control failed:\n{failed}\n{run.stderr[-2000:]}"
    )
    named = [p for p in _processes(report) if _hazards(p)]
    assert not named, named
