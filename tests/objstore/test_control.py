"""The negative control: the fork tests' key cases against the naive build must fail.

The control build (cargo feature ``control``, never shipped) is the same extension on plain
``pyo3_async_runtimes::tokio`` with one client per Store shared with every child. It is installed
apart from the real wheel, into a directory given by ``OBJSTORE_CONTROL_SITE`` (scripts/test
builds it with ``pip install --target``); this test runs the key cases in a subprocess with that
directory first on ``PYTHONPATH`` and a short child deadline, and asserts that every one of them
fails, printing what was observed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
KEY_CASES = [
    "test_fork.py::test_dataloader_fork_workers_read_every_shard",
    "test_fork.py::test_four_concurrent_os_fork_children",
    "test_fork.py::test_c_level_and_raw_fork[c_fork]",
    "test_fork.py::test_c_level_and_raw_fork[raw_syscall]",
    "test_fork.py::test_nested_forks_three_deep",
    "test_gunicorn.py::test_gunicorn_preload_serves_objects",
    # The parent broken by its children: on the naive build its calls after them hang.
    "test_parent_survives.py::test_parent_survives_children_on_every_path[os_fork]",
]
CONTROL_DEADLINE = "5"
"""Seconds each control child gets (a working child needs well under one)."""


CASE_TIMEOUT = 240.0
"""Seconds one control case may take in all (it hangs only until its deadlines fire)."""


def _outcome(report: Path, code: int | None, out: Path, err: Path) -> str:
    """PASSED, or FAILED/CRASHED/HUNG with the first lines of what was observed."""
    if code is None:
        return f"HUNG: the pytest process did not finish within {CASE_TIMEOUT:.0f} s"
    if not report.exists() or code < 0:
        text = out.read_text(errors="replace") + err.read_text(errors="replace")
        fatal = text.find("Fatal Python error")
        shown = text[fatal:] if fatal >= 0 else text[-600:]
        return f"CRASHED: pytest exit code {code}:\n      " + _first_lines(shown, 4)
    for testcase in ET.parse(report).getroot().iter("testcase"):
        problem = testcase.find("failure")
        if problem is None:
            problem = testcase.find("error")
        if problem is None:
            return "PASSED"
        return "FAILED: " + _first_lines(problem.get("message") or problem.text or "")
    return f"NOT RUN: exit code {code}"


def _first_lines(text: str, n: int = 3) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return "\n      ".join(lines[:n])


@pytest.mark.timeout(600)
def test_key_cases_fail_on_the_control_build(tmp_path: Path) -> None:
    site = os.environ.get("OBJSTORE_CONTROL_SITE")
    if not site:
        pytest.skip(
            "OBJSTORE_CONTROL_SITE is not set: no control build to run against "
            "(scripts/test builds one; see tests/objstore/README.md)"
        )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([site, *filter(None, [env.get("PYTHONPATH")])])
    env["OBJSTORE_TEST_DEADLINE"] = CONTROL_DEADLINE
    env.pop("OBJSTORE_CONTROL_SITE")
    check = subprocess.run(
        [sys.executable, "-c", "import forksafe_objstore as m; print(m.CONTROL, m.__file__)"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert check.stdout.startswith("True "), f"not the control build: {check.stdout}"
    # One subprocess per case, in its own session: a case that hangs leaves threads behind in
    # its process, and hung children that must not outlive it.
    outcomes: dict[str, str] = {}
    for index, case in enumerate(KEY_CASES):
        report = tmp_path / f"control-{index}.xml"
        out_path, err_path = tmp_path / f"control-{index}.out", tmp_path / f"control-{index}.err"
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            proc = subprocess.Popen(
                [
                    sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                    f"--junitxml={report}", str(HERE / case),
                ],
                cwd=HERE,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )  # fmt: skip
        try:
            code = proc.wait(timeout=CASE_TIMEOUT)
        except subprocess.TimeoutExpired:
            code = None
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # the case's hung children, if any
            except ProcessLookupError:
                pass
            proc.wait()
        outcomes[case] = _outcome(report, code, out_path, err_path)
    print(f"\nnegative control ({check.stdout.split()[1]}), child deadline {CONTROL_DEADLINE} s:")
    for name, outcome in outcomes.items():
        print(f"  {name}: {outcome}")
    not_run = [case for case, outcome in outcomes.items() if outcome.startswith("NOT RUN")]
    assert not not_run, f"control cases that did not run: {not_run}"
    passed = [name for name, outcome in outcomes.items() if outcome == "PASSED"]
    assert not passed, f"the control build passed {passed}: the tests would not catch the bug"
