"""The negative control: every fork case of test_fork.py must hang on the control build.

The control build (cargo feature ``control``, never shipped) is the same module on plain
``pyo3_async_runtimes::tokio``: its global runtime is built once, in the parent, and a forked
child inherits a runtime whose worker threads do not exist. It is installed apart from the real
wheel, into the directory ``GEN025_CONTROL_SITE`` names (scripts/test generic builds it with
``pip install --target``). This test runs test_fork.py in a subprocess with that directory first
on ``PYTHONPATH`` and a short child deadline, and asserts that every fork case fails *because
its child hung* (another failure proves nothing), while the parent-only cases pass.
"""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from forksafe._cli.engine import calls

HERE = Path(__file__).resolve().parent
FORK_CASES = [
    *(f"test_child_awaits_and_calls_again[{path}]" for path in calls.PATHS),
    "test_nested_forks_three_deep[os_fork]",
    "test_nested_forks_three_deep[c_fork]",
]
PARENT_CASES = ["test_parent_still_works_after_the_forks", "test_build"]
CONTROL_DEADLINE = "4"
"""Seconds each control child gets (a working child needs well under one)."""


@pytest.mark.timeout(600)
def test_every_fork_case_hangs_on_the_control_build(tmp_path: Path) -> None:
    site = os.environ.get("GEN025_CONTROL_SITE")
    if not site:
        pytest.skip(
            "GEN025_CONTROL_SITE is not set: no control build to run against "
            "(scripts/test generic builds one)"
        )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([site, *filter(None, [env.get("PYTHONPATH")])])
    env["GEN025_CHILD_DEADLINE"] = CONTROL_DEADLINE
    env["GEN025_CONTROL_RUN"] = "1"
    env.pop("GEN025_CONTROL_SITE")
    probe = subprocess.run(
        [sys.executable, "-c", "import forksafe_pyo3_025 as m; print(m.CONTROL, m.__file__)"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert probe.stdout.startswith("True "), f"not the control build: {probe.stdout!r}"
    report = tmp_path / "control.xml"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            f"--junitxml={report}",
            str(HERE / "test_fork.py"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=540,
        cwd=HERE.parent,
    )
    assert report.exists(), f"the control run wrote no report:\n{run.stdout[-2000:]}{run.stderr}"
    outcomes: dict[str, str] = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        problem = case.find("failure")
        if problem is None:
            problem = case.find("error")
        outcomes[case.get("name", "")] = (
            "PASSED" if problem is None else (problem.get("message") or problem.text or "")
        )
    lines = [f"  {name}: {outcomes.get(name, 'NOT RUN')[:160]!r}" for name in outcomes]
    print("control build outcomes:\n" + "\n".join(lines))
    for name in FORK_CASES:
        got = outcomes.get(name, "NOT RUN")
        assert "child hung" in got, (
            f"{name} did not hang on the control build, so the test does not show what "
            f"forksafe fixes: {got[:600]}"
        )
    for name in PARENT_CASES:
        assert outcomes.get(name) == "PASSED", f"{name} on the control build: {outcomes.get(name)}"
