"""``python -m forksafe check``: it finds what is not fork-safe, says where and how, and never
hangs itself.

Every check runs in a subprocess started in a session of its own, under a timeout: on expiry
the whole session is killed and the test fails with what it printed. After every run the test
also requires that no process of that session is left (children, grandchildren, forkserver).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from forksafe import _forks

FORK_PATHS = ["os_fork", "mp_fork", "c_fork", "raw_syscall", "thread_fork", "nested"]
ALL_PATHS = [*FORK_PATHS, "forkserver", "spawn"]
RUN_TIMEOUT = 60.0
"""Seconds one check run may take before the test kills it (a hang of check itself)."""

PROBES = """
import forksafe
from forksafe import testing

async def probe(v):
    return await testing.echo(v), await testing.sleep(0.01, v), await testing.pid()

echoed, slept, worker_pid = forksafe.run(probe("k"))
(echoed, slept, worker_pid == os.getpid(), testing.echo_sync(7))
"""

POOL_SETUP = """
from concurrent.futures import ThreadPoolExecutor
pool = ThreadPoolExecutor(max_workers=1)
"""
POOL_CODE = "pool.submit(sum, [1, 2]).result()"

FLUSH_SETUP = """
import atexit, queue, threading

jobs = queue.Queue()

def worker():
    while True:
        jobs.get()()

threading.Thread(target=worker, name="flusher", daemon=True).start()

def flush_on_exit():
    done = threading.Event()
    jobs.put(done.set)  # hand a last flush to the worker thread and wait for it
    done.wait()

atexit.register(flush_on_exit)
"""
WAIT_LINE = FLUSH_SETUP.splitlines().index("    done.wait()") + 1


def _session_members(sid: int) -> list[str]:
    """Live processes (``pid command``) whose session is ``sid``."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[3]) == sid and fields[0] != "Z":  # a zombie is dead, waiting for init
            command = cmdline.replace(b"\0", b" ").decode(errors="replace")
            members.append(f"{entry} {command}")
    return members


def _kill_session(sid: int) -> None:
    for member in _session_members(sid):
        try:
            os.kill(int(member.split()[0]), signal.SIGKILL)
        except ProcessLookupError:
            pass


class Run:
    """One finished check run."""

    def __init__(self, args: list[str], code: int, stdout: str, stderr: str) -> None:
        self.args, self.code, self.stdout, self.stderr = args, code, stdout, stderr

    def json(self) -> dict[str, Any]:
        assert self.stdout.strip(), f"no output; stderr:\n{self.stderr}"
        return json.loads(self.stdout)

    def __repr__(self) -> str:  # pytest shows an assertion message object by its repr
        return (
            f"check {self.args} exited {self.code}\nstdout:\n{self.stdout}\nstderr:\n{self.stderr}"
        )


def check(*args: str, timeout: float = RUN_TIMEOUT, command: str = "check") -> Run:
    """Runs ``python -m forksafe check ARGS`` under a timeout; fails the test if it overruns or
    leaves any process behind."""
    argv = [sys.executable, "-m", "forksafe", command, *args]
    process = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
        cwd="/tmp",
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_session(process.pid)
        stdout, stderr = process.communicate()
        pytest.fail(
            f"check itself hung: still running after {timeout} s, killed\nstdout:\n{stdout}\n"
            f"stderr:\n{stderr}",
            pytrace=False,
        )
    run = Run(list(args), process.returncode, stdout, stderr)
    expires = time.monotonic() + 5.0  # helpers (forkserver, resource tracker) see EOF and leave
    while _session_members(process.pid) and time.monotonic() < expires:
        time.sleep(0.05)
    left = _session_members(process.pid)
    _kill_session(process.pid)
    assert left == [], f"processes left behind by check:\n{left}\n{run}"
    return run


def _rows(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {row["method"]: row for row in report["rows"]}


def _culprits(report: dict[str, Any], method: str) -> list[dict[str, Any]]:
    """The failing processes of one path."""
    return [
        process
        for outcome in report["outcomes"]
        if outcome["method"] == method
        for process in outcome["processes"]
        if process["status"] != "ok"
    ]


# --------------------------------------------------------------------------------------------
# A fork-safe stack passes
# --------------------------------------------------------------------------------------------


def test_forksafe_probes_pass_every_path() -> None:
    run = check("--count", "2", "--json", "--setup", "import os", PROBES)
    assert run.code == 0, run
    report = run.json()
    assert report["passed"] is True, run
    rows = _rows(report)
    assert list(rows) == ALL_PATHS, run
    forks = {**dict.fromkeys(FORK_PATHS, 2), "nested": 4, "forkserver": 1, "spawn": 1}
    for method, row in rows.items():
        assert row["forks"] == forks[method], (method, row)
        assert row["ok"] == row["forks"], (method, row)
        assert row["p50_ms"] is not None and row["p50_ms"] > 0, (method, row)
    assert report["parent"]["repr"] == "('k', 'k', True, 7)", run
    results = {p["result"]["repr"] for o in report["outcomes"] for p in o["processes"]}
    assert results == {"('k', 'k', True, 7)"}, results


def test_human_output_of_a_passing_stack(tmp_path: Path) -> None:
    script = tmp_path / "probe.py"
    script.write_text("import os\n" + PROBES)
    run = check("--count", "1", "--file", str(script))
    assert run.code == 0, run
    assert "parent: CODE returned ('k', 'k', True, 7)" in run.stdout, run
    header = run.stdout.splitlines()[1].split()
    assert header == ["path", "ok", "wrong", "hung", "crashed", "hangs-at-exit", "p50", "ms"]
    for method in ALL_PATHS:
        row = next(line.split() for line in run.stdout.splitlines() if line.startswith(method))
        assert row[2:6] == ["0", "0", "0", "0"], (method, run)
    assert "every path ok" in run.stdout, run


# --------------------------------------------------------------------------------------------
# Stacks that are not fork-safe fail, with the path and the kind
# --------------------------------------------------------------------------------------------


def test_a_warmed_thread_pool_hangs_every_fork_path_with_its_stack() -> None:
    run = check("--count", "1", "--deadline", "2", "--json", "--setup", POOL_SETUP, POOL_CODE)
    assert run.code == 1, run
    report = run.json()
    rows = _rows(report)
    for method in FORK_PATHS:
        assert rows[method]["hung"] == rows[method]["forks"], (method, rows[method], run)
        assert rows[method]["ok"] == 0, (method, run)
    for method in ("forkserver", "spawn"):  # a fresh interpreter starts its own worker
        assert rows[method]["ok"] == 1, (method, rows[method], run)
    for method in FORK_PATHS:
        hung = _culprits(report, method)[0]
        assert hung["status"] == "hung", hung
        assert "no result within 2 s" in hung["detail"], hung
        assert hung["threads"], hung  # native thread names from /proc
        stack = hung["stack"]
        # The stuck thread's Python stack: CODE waiting in Future.result -> Condition.wait.
        assert 'File "<CODE>", line 1 in <module>' in stack, (method, stack)
        assert "concurrent/futures/_base.py" in stack and " in result" in stack, (method, stack)
        assert "threading.py" in stack and " in wait" in stack, (method, stack)


def test_after_a_c_level_fork_the_stuck_thread_is_dumped_first() -> None:
    # The child starts a thread (glibc gives it the stack of a parent thread that does not exist
    # here) and then hangs. Python still lists the parent's thread, and dumping it reads that
    # reused stack: here that crashes the dumper. The stuck thread's stack must come first.
    setup = POOL_SETUP + "import threading, time\n"
    code = "threading.Thread(target=time.sleep, args=(30,), daemon=True).start()\n" + POOL_CODE
    run = check("--count", "1", "--deadline", "1", "--methods", "c_fork,raw_syscall", "--json",
                "--setup", setup, code)  # fmt: skip
    assert run.code == 1, run
    for method in ("c_fork", "raw_syscall"):
        hung = _culprits(run.json(), method)[0]
        assert hung["status"] == "hung", hung
        stuck, listed, _ = hung["stack"].partition("Every thread Python lists")
        assert 'File "<CODE>", line 2 in <module>' in stuck, hung["stack"]
        assert " in result" in stuck, hung["stack"]
        assert listed, hung["stack"]  # and then every thread (if the dumper survives them)


def test_the_table_and_the_diagnosis_name_the_path_and_the_kind() -> None:
    methods = "os_fork,c_fork,spawn"
    run = check("--count", "1", "--deadline", "2", "--methods", methods, "--setup", POOL_SETUP,
                POOL_CODE)  # fmt: skip
    assert run.code == 1, run
    lines = run.stdout.splitlines()
    table = {line.split()[0]: line.split()[1:] for line in lines[3:6]}
    assert table["os_fork"][:5] == ["0", "0", "1", "0", "0"], run  # ok wrong hung crashed exit
    assert table["c_fork"][:5] == ["0", "0", "1", "0", "0"], run
    assert table["spawn"][:5] == ["1", "0", "0", "0", "0"], run
    assert "os_fork: hung 1 of 1 processes" in run.stdout, run
    assert "c_fork: hung 1 of 1 processes" in run.stdout, run
    assert "fork_local" in run.stdout and "forkserver" in run.stdout, run  # what fixes it
    assert "Python stacks at the deadline:" in run.stdout, run
    assert " in result" in run.stdout, run
    assert "FAILED on os_fork, c_fork" in run.stdout, run


def test_an_exit_hook_waiting_for_a_parent_thread_hangs_at_exit() -> None:
    run = check("--count", "1", "--deadline", "2", "--json", "--setup", FLUSH_SETUP, "1 + 1")
    assert run.code == 1, run
    report = run.json()
    rows = _rows(report)
    for method in ("os_fork", "c_fork", "raw_syscall", "thread_fork"):
        assert rows[method]["hangs_at_exit"] == 1, (method, rows[method], run)
        assert rows[method]["ok"] == 0, (method, run)
    # A chain's last generation exits first: it hangs; the one above it did its work and waits.
    assert rows["nested"]["hangs_at_exit"] == 1 and rows["nested"]["ok"] == 1, run
    # multiprocessing children leave through os._exit (no atexit); fresh interpreters have
    # their own worker thread.
    for method in ("mp_fork", "forkserver", "spawn"):
        assert rows[method]["ok"] == 1, (method, rows[method], run)
    for method in ("os_fork", "c_fork", "raw_syscall", "thread_fork", "nested"):
        stuck = _culprits(report, method)[0]
        assert stuck["status"] == "hangs_at_exit", stuck
        assert stuck["result"]["repr"] == "2", stuck  # CODE itself worked
        assert "__check__.flush_on_exit" in stuck["exit_info"]["atexit"], stuck
        assert stuck["exit_steps"][-1] == "__check__.flush_on_exit", stuck
        assert "exit step still running: __check__.flush_on_exit" in stuck["detail"], stuck
        assert f'File "<setup>", line {WAIT_LINE} in flush_on_exit' in stuck["stack"], stuck


GOODBYE_SETUP = """
import atexit, os
PARENT = os.getpid()

def goodbye():
    print("goodbye from", "the parent" if os.getpid() == PARENT else "a child", flush=True)

atexit.register(goodbye)
"""


def test_a_child_forked_from_a_thread_leaves_through_the_exit_steps() -> None:
    # Exit hooks run in a child forked from a non-main thread too, and a child whose hooks
    # return exits cleanly (CPython 3.13+ cannot finalise such a child: check runs the hooks).
    run = check("--count", "2", "--methods", "thread_fork,os_fork", "--json", "--setup",
                GOODBYE_SETUP, "1 + 1")  # fmt: skip
    assert run.code == 0, run
    report = run.json()
    for outcome in report["outcomes"]:
        (child,) = outcome["processes"]
        assert child["status"] == "ok" and child["exit_code"] == 0, (outcome, run)
        assert child["exit_steps"][:2] == ["threading._shutdown", "__check__.goodbye"], child
        assert outcome["output"] == ["goodbye from a child"], (outcome, run)
        skipped = "finalisation" in child["exit_info"]
        assert skipped == (outcome["method"] == "thread_fork" and sys.version_info >= (3, 13))


def test_a_different_value_is_wrong_unless_no_compare() -> None:
    code = "import os; os.getpid()"
    run = check("--count", "1", "--methods", "os_fork,spawn", "--json", code)
    assert run.code == 1, run
    rows = _rows(run.json())
    assert rows["os_fork"]["wrong"] == 1 and rows["spawn"]["wrong"] == 1, run
    wrong = _culprits(run.json(), "os_fork")[0]
    assert wrong["detail"].startswith("returned ") and "the parent got" in wrong["detail"], wrong
    run = check("--count", "1", "--methods", "os_fork,spawn", "--no-compare", code)
    assert run.code == 0, run


def test_an_exception_in_a_child_is_wrong_with_its_traceback() -> None:
    setup = "import os\nPARENT = os.getpid()"
    code = (
        "def f():\n    raise LookupError('only in children')\nf() if os.getpid() != PARENT else 1"
    )
    run = check("--count", "1", "--methods", "os_fork,c_fork", "--json", "--setup", setup, code)
    assert run.code == 1, run
    for method in ("os_fork", "c_fork"):
        wrong = _culprits(run.json(), method)[0]
        assert wrong["status"] == "wrong", wrong
        assert 'File "<CODE>", line 2, in f' in wrong["detail"], wrong
        assert "LookupError: only in children" in wrong["detail"], wrong


def test_a_crash_in_a_child_is_reported_with_the_signal() -> None:
    setup = "import ctypes, os\nPARENT = os.getpid()"
    code = "ctypes.string_at(0) if os.getpid() != PARENT else 1"
    run = check("--count", "1", "--methods", "os_fork,raw_syscall", "--json", "--setup", setup,
                code)  # fmt: skip
    assert run.code == 1, run
    for method in ("os_fork", "raw_syscall"):
        crashed = _culprits(run.json(), method)[0]
        assert crashed["status"] == "crashed", crashed
        assert "killed by SIGSEGV" in crashed["detail"], crashed
        # faulthandler's report from its first line, with the crashing line of CODE (3.14+
        # appends a C stack trace, cut to its first frames).
        report = crashed["stack"]
        assert report.startswith("Fatal Python error: Segmentation fault"), crashed
        assert 'File "<CODE>", line 1 in <module>' in report, crashed


def test_a_fresh_interpreter_gets_the_deadline_for_each_step() -> None:
    # In the spawned worker only (it inherits CHECK_PARENT): a setup of 1.5 s, then CODE of
    # 1.5 s. Each step fits in the 2 s deadline; together they do not.
    setup = (
        "import os, time\n"
        "worker = os.environ.setdefault('CHECK_PARENT', str(os.getpid())) != str(os.getpid())\n"
        "if worker:\n"
        "    time.sleep(1.5)\n"
    )
    code = "time.sleep(1.5 if worker else 0)\n1"
    run = check("--methods", "spawn", "--deadline", "2", "--json", "--setup", setup, code)
    assert run.code == 0, run
    assert _rows(run.json())["spawn"]["ok"] == 1, run


# --------------------------------------------------------------------------------------------
# check itself never hangs and leaves nothing behind
# --------------------------------------------------------------------------------------------


def test_hung_children_and_their_own_children_are_all_killed() -> None:
    # Each child starts a grandchild, then hangs: check must kill both (check() then requires
    # that nothing of the session is left).
    setup = "import os, subprocess, threading\nPARENT = os.getpid()"
    code = (
        "if os.getpid() != PARENT:\n"
        "    subprocess.Popen(['sleep', '300'])\n"
        "    threading.Event().wait()\n"
    )
    run = check("--count", "2", "--deadline", "1", "--json", "--setup", setup, code)
    assert run.code == 1, run
    rows = _rows(run.json())
    for method in FORK_PATHS:
        assert rows[method]["hung"] == rows[method]["forks"], (method, run)
    for method in ("forkserver", "spawn"):  # a fresh interpreter sets its own PARENT
        assert rows[method]["ok"] == 1, (method, run)


class _Hang(_forks.Work):
    """In-process engine test: every child hangs."""

    def run(self, value: int) -> dict[str, Any]:
        threading.Event().wait()
        return {"ok": True}


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def _assert_gone(outcomes: list[_forks.Outcome]) -> None:
    """Every process of these launches was reaped (children) or no longer exists."""
    for outcome in outcomes:
        for process in outcome.processes:
            if process.generation == 1:
                with pytest.raises(ChildProcessError):
                    os.waitpid(process.pid, os.WNOHANG)  # already reaped: no zombie left
            assert not os.path.exists(f"/proc/{process.pid}"), process


def test_the_engine_kills_reaps_and_closes_everything() -> None:
    jobs = ["os_fork", "mp_fork", "c_fork", "thread_fork", "nested"]
    before = _open_fds()
    outcomes = list(_forks.run_forks(_Hang(), jobs, concurrency=len(jobs), depth=2, deadline=1))
    assert sorted(o.method for o in outcomes) == sorted(jobs)
    for outcome in outcomes:
        assert outcome.status == "hung", outcome
        assert outcome.culprit is not None and " in run" in outcome.culprit.stack, outcome
    assert _open_fds() == before, "the engine left file descriptors open"
    _assert_gone(outcomes)


class _Stop(Exception):
    pass


def test_stopping_the_engine_early_kills_the_children_in_flight() -> None:
    before = _open_fds()
    launched: list[int] = []

    def stop() -> None:  # the first tick comes once every child is running
        launched.extend(int(fd) for fd in _open_fds() - before)
        raise _Stop

    started = time.monotonic()
    with pytest.raises(_Stop):
        list(_forks.run_forks(_Hang(), ["os_fork"] * 3, concurrency=3, deadline=60, on_tick=stop))
    assert time.monotonic() - started < 30  # killed, not waited for
    assert len(launched) == 3, launched  # three pipes were open
    assert _open_fds() == before, "the engine left file descriptors open"
    with pytest.raises(ChildProcessError):
        os.waitpid(-1, os.WNOHANG)  # fork children only: none left, not even a zombie


# --------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["1 +"], "CODE is not valid Python"),
        (["--setup", "x = (", "1"], "--setup is not valid Python"),
        (["1 / 0"], "CODE raised in the parent"),
        (["--setup", "import no_such_module_here", "1"], "--setup raised"),
        (["--methods", "os_fork,vfork", "1"], "unknown path(s) ['vfork']"),
        (["--file", "/nonexistent/script.py"], "cannot read --file /nonexistent/script.py"),
        ([], "give CODE or --file"),
        (["--count", "0", "1"], "--count must be at least 1"),
        (["--deadline", "-1", "1"], "--deadline must be a positive number"),
    ],
)
def test_bad_input_exits_2_with_a_clear_message(args: list[str], message: str) -> None:
    run = check(*args, timeout=30)
    assert run.code == 2, run
    assert message in run.stderr, run
    assert run.stdout == "", run  # no table, no forks


def test_a_parent_traceback_points_at_the_code() -> None:
    run = check("def f():\n    return {}['missing']\nf()", timeout=30)
    assert run.code == 2, run
    assert 'File "<CODE>", line 2, in f' in run.stderr, run
    assert "KeyError: 'missing'" in run.stderr, run
    assert "_check.py" not in run.stderr, run  # check's own frames are not shown


# --------------------------------------------------------------------------------------------
# stress is the same engine with forksafe's probes
# --------------------------------------------------------------------------------------------


def test_stress_keeps_its_table_and_exit_code() -> None:
    run = check("--count", "3", "--depth", "2", command="stress")
    assert run.code == 0, run
    lines = run.stdout.splitlines()
    assert lines[0].split() == [
        "method", "forks", "ok", "hung", "wrong", "crashed", "p50", "ms", "p99", "ms",
    ]  # fmt: skip
    rows = {line.split()[0]: line.split()[1:] for line in lines[2:8]}
    assert list(rows) == FORK_PATHS, run
    for method, row in rows.items():
        forks = "6" if method == "nested" else "3"
        assert row[:5] == [forks, forks, "0", "0", "0"], (method, run)
    assert lines[-1].endswith("all children correct"), run


def test_stress_json_has_the_exit_column_too() -> None:
    run = check("--count", "2", "--methods", "os_fork,spawn", "--json", command="stress")
    assert run.code == 0, run
    rows = _rows(run.json())
    assert rows["spawn"]["ok"] == 2 and rows["os_fork"]["hangs_at_exit"] == 0, run


def test_only_checks_own_frames_are_trimmed_from_stacks() -> None:
    from forksafe import _check

    package = os.path.dirname(_check.__file__)
    stack = "\n".join([
        "Thread 0x1 (most recent call first):",
        f'  File "{package}/_loop.py", line 71 in serve',
        "Current thread 0x2 (most recent call first):",
        '  File "app.py", line 27 in flush',
        f'  File "{package}/_forks.py", line 198 in _leave',
        '  File "<frozen runpy>", line 88 in _run_code',
    ])  # fmt: skip
    assert _check.trim_stack(stack).splitlines() == [
        "Thread 0x1 (most recent call first):",
        f'  File "{package}/_loop.py", line 71 in serve',  # forksafe's loop: the user's concern
        "Current thread 0x2 (most recent call first):",
        '  File "app.py", line 27 in flush',
        "  (forksafe check's own frames)",
    ]
