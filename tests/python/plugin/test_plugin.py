"""``pytest --forksafe`` on the sample suite (sample/), each run in its own pytest process through
``pytester``: the verdicts per fork path, the parent's failure, inertness without the flag, the
one run of the session (pytest #12028), usage errors, xdist, capture, -k and pytest-timeout."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import forksafe
import pytest

pytest_plugins = ["pytester"]

SAMPLE = Path(__file__).parent / "sample"
DEADLINE = "5"  # small: a hung child costs one deadline; all paths run at once
FORK_PATHS = ("os_fork", "mp_fork", "c_fork", "raw_syscall", "thread_fork", "nested")
STALE = ("c_fork", "raw_syscall")

if not hasattr(os, "fork"):
    pytest.skip("the plugin's children need fork()", allow_module_level=True)


def _sample(pytester: pytest.Pytester, *names: str) -> None:
    """Copies sample modules: ``hazards`` becomes test_hazards.py; helpers keep their name."""
    files = {"keepalive_server": (SAMPLE / "keepalive_server.py").read_text()}
    files.update({f"test_{name}": (SAMPLE / f"{name}.py").read_text() for name in names})
    pytester.makepyfile(**files)


def _run(pytester: pytest.Pytester, *args: str) -> tuple[pytest.RunResult, dict[str, str]]:
    """Runs pytest; returns its result and each test case's verdict, by name, from --junitxml
    (so the sub-items are JUnit test cases too)."""
    junit = pytester.path / "junit.xml"
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", f"--junitxml={junit}", "--forksafe-deadline", DEADLINE, *args,
        timeout=240,
    )  # fmt: skip
    verdicts: dict[str, str] = {}
    for case in ElementTree.parse(junit).iter("testcase"):
        kinds = {child.tag for child in case}
        verdict = "FAILED" if kinds & {"failure", "error"} else "PASSED"
        verdicts[case.get("name", "?")] = "SKIPPED" if "skipped" in kinds else verdict
    return result, verdicts


def _section(result: pytest.RunResult, name: str) -> str:
    """The failure text of one item."""
    text = result.stdout.str()
    start = text.index(f"_ {name} _")
    end = text.find("\n___", start + 1)
    return text[start : end if end > 0 else len(text)]


def test_sample_suite_passes_without_the_plugin(pytester: pytest.Pytester) -> None:
    _sample(pytester, "hazards", "rebuilt", "rebuilt_pool", "control")
    result, verdicts = _run(pytester, "--strict-markers")
    assert result.ret == 0, result.stdout.str()
    result.assert_outcomes(passed=8)  # every sample test (names repeat across files)
    assert set(verdicts.values()) == {"PASSED"}, verdicts
    assert not any("forksafe:" in name for name in verdicts), verdicts


# What a run leaves in the process, printed by the last hook of the session. The sample test
# requests no fixture, so any fixture it gets is an autouse one.
INERT_CONFTEST = """
import json, sys, threading

def pytest_sessionfinish(session):
    manager = session.config.pluginmanager
    entry = manager.get_plugin("forksafe")
    hooks = sorted(h.name for h in manager.get_hookcallers(entry) or []) if entry else None
    print("\\nINERT " + json.dumps({
        "modules": sorted(sys.modules),
        "threads": sorted(t.name for t in threading.enumerate()),
        "fixtures": sorted({n for item in session.items for n in item.fixturenames}),
        "entry": getattr(entry, "__name__", None),
        "hooks": hooks,
        "active": manager.get_plugin("forksafe-forks") is not None,
    }))
"""


def _inert_run(pytester: pytest.Pytester, *args: str) -> dict[str, Any]:
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-s", *args, timeout=120)
    assert result.ret == 0, result.stdout.str() + result.stderr.str()
    result.assert_outcomes(passed=1)
    line = next(ln for ln in result.stdout.lines if ln.startswith("INERT "))
    found: dict[str, Any] = json.loads(line[len("INERT ") :])
    # pytest's own "plugins:" line names the installed distribution; any other line is ours.
    found["header"] = [
        ln
        for ln in result.stdout.lines
        if "forksafe" in ln and not ln.startswith(("plugins:", "INERT "))
    ]
    return found


def test_inert_without_the_flag_or_marker(pytester: pytest.Pytester) -> None:
    """pip registered the plugin, and a run without --forksafe or the marker imports none of
    forksafe (not its package, native module, asyncio or the active part), starts no thread and
    adds no fixture: the same process as with the plugin blocked (-p no:forksafe), but for the
    entry module itself, whose only hooks add the options and the marker."""
    pytester.makeconftest(INERT_CONFTEST)
    pytester.makepyfile(test_plain="def test_plain():\n    assert sum(range(4)) == 6\n")
    on = _inert_run(pytester)
    off = _inert_run(pytester, "-p", "no:forksafe")
    assert set(on["modules"]) - set(off["modules"]) == {"_forksafe_pytest"}, sorted(
        set(on["modules"]) ^ set(off["modules"])
    )
    assert off["entry"] is None and on["entry"] == "_forksafe_pytest", (on["entry"], off["entry"])
    for module in ("forksafe", "forksafe._native", "forksafe._cli.pytest_forks"):
        assert module not in on["modules"], module
    assert ("asyncio" in on["modules"]) == ("asyncio" in off["modules"])  # pytest's own, if any
    assert on["threads"] == off["threads"] == ["MainThread"], (on["threads"], off["threads"])
    assert on["fixtures"] == off["fixtures"], (on["fixtures"], off["fixtures"])
    assert on["hooks"] == ["pytest_addoption", "pytest_collection_modifyitems", "pytest_configure"]
    assert on["active"] is off["active"] is False
    assert on["header"] == off["header"] == [], on["header"]


def test_hazards_fail_on_every_fork_path(pytester: pytest.Pytester) -> None:
    _sample(pytester, "hazards")
    result, verdicts = _run(pytester, "--forksafe")
    assert result.ret == 1
    for test in ("test_pool", "test_loop", "test_connection"):
        assert verdicts[test] == "PASSED", verdicts  # the parent's own run
        for path in FORK_PATHS:
            assert verdicts[f"{test}[forksafe:{path}]"] == "FAILED", (test, path, verdicts)
    pool = _section(result, "test_pool[forksafe:os_fork]")
    assert "os_fork: hung 1 of 1 processes" in pool, pool
    assert "native threads:" in pool and "Python stacks at the deadline:" in pool, pool
    assert "concurrent/futures/_base.py" in pool, pool  # waiting for the future's result
    # check's diagnosis, in the plugin's words: the test function, not check's CODE.
    assert "The test function never returned in the child." in " ".join(pool.split()), pool
    assert "CODE" not in pool, pool
    loop = _section(result, "test_loop[forksafe:thread_fork]")
    assert "thread_fork: hung 1 of 1 processes" in loop, loop
    for path in FORK_PATHS:
        text = _section(result, f"test_connection[forksafe:{path}]")
        assert re.search(r"(wrong|hung|hangs at exit) \d of \d processes", text), text


def test_rebuilt_with_forksafe_pass(pytester: pytest.Pytester) -> None:
    _sample(pytester, "rebuilt")
    result, verdicts = _run(pytester, "--forksafe")
    assert result.ret == 0, result.stdout.str()
    assert len(verdicts) == 2 * (1 + len(FORK_PATHS)), verdicts
    assert set(verdicts.values()) == {"PASSED"}, verdicts


def test_rebuilt_pool_passes_where_python_forks(pytester: pytest.Pytester) -> None:
    _sample(pytester, "rebuilt_pool")
    result, verdicts = _run(pytester, "--forksafe")
    for path in FORK_PATHS:
        expected = "FAILED" if path in STALE else "PASSED"
        assert verdicts[f"test_pool[forksafe:{path}]"] == expected, (path, verdicts)
    for path in STALE:  # the right result, then the parent's pool thread joined at exit
        text = _section(result, f"test_pool[forksafe:{path}]")
        assert f"{path}: hangs at exit 1 of 1 processes" in text, text
        # The frame, as 3.11's dump names it or as 3.13's (file and function) does.
        assert "_python_exit" in text and "concurrent" in text, text


def test_control_probe_fails_and_forksafe_probe_passes(pytester: pytest.Pytester) -> None:
    if not forksafe._native.CONTROL_PROBE:
        pytest.fail("the control probe needs the test wheel (--features control-probe)")
    _sample(pytester, "control")
    result, verdicts = _run(pytester, "--forksafe")
    for path in FORK_PATHS:
        assert verdicts[f"test_control_probe[forksafe:{path}]"] == "FAILED", (path, verdicts)
        assert verdicts[f"test_forksafe_probe[forksafe:{path}]"] == "PASSED", (path, verdicts)
    text = _section(result, "test_control_probe[forksafe:os_fork]")
    assert "os_fork: hung 1 of 1 processes" in text, text


PARENT_FAILS = """
import os, pytest

def test_fails_in_parent(tmp_path_factory):
    with open(os.environ["RUNS"], "a") as runs:
        runs.write(f"{os.getpid()}\\n")
    assert 1 == 2, "the parent's own failure"
"""

COUNTED = """
import os

def test_counted():
    with open(os.environ["RUNS"], "a") as runs:
        runs.write(f"{os.getpid()}\\n")
"""

SESSION_COUNTER = """
import os

def pytest_sessionfinish(session):
    with open(os.environ["SESSIONS"], "a") as sessions:
        sessions.write(f"{os.getpid()}\\n")
"""


def test_parent_failure_is_reported_once_and_forks_nothing(
    pytester: pytest.Pytester, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs = tmp_path / "runs"
    monkeypatch.setenv("RUNS", str(runs))
    pytester.makepyfile(test_parent=PARENT_FAILS)
    result, verdicts = _run(pytester, "--forksafe")
    assert verdicts["test_fails_in_parent"] == "FAILED", verdicts
    assert [v for k, v in verdicts.items() if "forksafe:" in k] == ["SKIPPED"] * len(FORK_PATHS)
    # Reported once: one `E` line, one short-summary line. The summary line's tail
    # depends on the terminal's width, so lines are counted, not the message.
    lines = result.stdout.lines
    assert sum(ln.startswith("E ") and "the parent's own failure" in ln for ln in lines) == 1
    assert sum(ln.startswith("FAILED test_parent.py::test_fails_in_parent") for ln in lines) == 1
    result.assert_outcomes(failed=1, skipped=len(FORK_PATHS))
    assert len(runs.read_text().split()) == 1  # no child ran the test


def test_children_never_rerun_the_session(
    pytester: pytest.Pytester, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs, sessions = tmp_path / "runs", tmp_path / "sessions"
    monkeypatch.setenv("RUNS", str(runs))
    monkeypatch.setenv("SESSIONS", str(sessions))
    pytester.makeconftest(SESSION_COUNTER)
    pytester.makepyfile(test_counted=COUNTED)
    result, _ = _run(pytester, "--forksafe", "--forksafe-depth", "3")
    assert result.ret == 0, result.stdout.str()
    pids = runs.read_text().split()
    # The parent, one child per path, and a nested chain of 3 generations: all distinct.
    assert len(pids) == len(set(pids)) == 1 + (len(FORK_PATHS) - 1) + 3, pids
    assert sessions.read_text().split() == [pids[0]]  # pytest #12028: one session finish


def test_marker_alone_and_strict_markers(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_marked="""
import pytest

@pytest.mark.forksafe
def test_marked():
    pass

def test_unmarked():
    pass
"""
    )
    result, verdicts = _run(pytester, "--strict-markers", "--forksafe-paths", "os_fork,nested")
    assert result.ret == 0, result.stdout.str()
    assert sorted(verdicts) == [
        "test_marked",
        "test_marked[forksafe:nested]",
        "test_marked[forksafe:os_fork]",
        "test_unmarked",
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--forksafe-paths", "os_fork,vfork"], "unknown fork path(s) ['vfork']"),
        (["--forksafe-paths", "spawn"], "spawn start a fresh interpreter"),
        (["--forksafe-count", "-1"], "--forksafe-count must be at least 1"),
        (["--forksafe-deadline", "0"], "--forksafe-deadline must be a positive number"),
    ],
)
def test_bad_options_are_usage_errors(
    pytester: pytest.Pytester, args: list[str], message: str
) -> None:
    pytester.makepyfile(test_one="def test_one():\n    pass\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--forksafe", *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert message in result.stderr.str(), result.stderr.str()


def test_marker_on_an_unsupported_kind_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_case="""
import unittest, pytest

@pytest.mark.forksafe
class TestCase(unittest.TestCase):
    def test_it(self):
        pass
"""
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "the forksafe marker does not support TestCaseFunction items" in result.stderr.str()


def test_platform_without_fork_skips_with_the_reason(pytester: pytest.Pytester) -> None:
    pytester.makeconftest("import os\ndel os.fork  # as on Windows\n")
    pytester.makepyfile(test_one="def test_one():\n    pass\n")
    result, verdicts = _run(pytester, "--forksafe")
    assert result.ret == 0, result.stdout.str()
    assert verdicts == {"test_one": "PASSED", "test_one[forksafe]": "SKIPPED"}, verdicts
    result.stdout.fnmatch_lines(["*forksafe: off, this platform has no fork()*"])
    result.stdout.fnmatch_lines(["*no child ran*"])


@pytest.mark.parametrize(
    "mode",
    [["-n", "2"], ["-n", "2", "--dist", "loadgroup"], ["-s"], ["--capture=sys"]],
    ids=["xdist", "xdist-loadgroup", "no-capture", "sys-capture"],
)
def test_xdist_and_capture_modes(pytester: pytest.Pytester, mode: list[str]) -> None:
    _sample(pytester, "hazards")
    result, verdicts = _run(
        pytester, "--forksafe", "--forksafe-paths", "os_fork,c_fork", "-k", "loop", *mode
    )
    assert verdicts == {
        "test_loop": "PASSED",
        "test_loop[forksafe:os_fork]": "FAILED",
        "test_loop[forksafe:c_fork]": "FAILED",
    }, (mode, verdicts, result.stdout.str()[-3000:])
    assert "os_fork: hung 1 of 1 processes" in result.stdout.str()


def test_k_selects_one_path(pytester: pytest.Pytester) -> None:
    _sample(pytester, "hazards")
    result, verdicts = _run(pytester, "--forksafe", "-k", "test_loop and c_fork")
    # Only the sub-item: it runs the test in the parent itself, then forks.
    assert verdicts == {"test_loop[forksafe:c_fork]": "FAILED"}, verdicts
    assert "c_fork: hung 1 of 1 processes" in _section(result, "test_loop[forksafe:c_fork]")


def test_pytest_timeout_below_the_deadlines_is_named(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_one="def test_one():\n    pass\n")
    result, verdicts = _run(pytester, "--forksafe", "--timeout", "4", "--forksafe-paths", "os_fork")
    assert result.ret == 0, result.stdout.str()
    assert verdicts == {"test_one": "PASSED", "test_one[forksafe:os_fork]": "PASSED"}
    result.stderr.fnmatch_lines(["*pytest-timeout's limit (4 s) is below*"])


def test_the_library_never_imports_the_plugin() -> None:
    import subprocess

    code = "import sys, forksafe; print(sorted(m for m in sys.modules if 'pytest' in m))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]", done.stdout
