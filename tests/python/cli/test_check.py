"""``python -m forksafe check``: it finds what is not fork-safe, says where and how, and never
hangs itself (every run goes through cliutil's timeout and leftover-process check)."""

from __future__ import annotations

import sys
import sysconfig
from pathlib import Path

import pytest
from cliutil import ALL_PATHS, FORK_PATHS, by_path, check, culprits

FREE_THREADED = (
    bool(sysconfig.get_config_var("Py_GIL_DISABLED"))
    and not getattr(sys, "_is_gil_enabled", lambda: True)()
)
"""A free-threaded build running without the GIL: C-level forks can crash there as well."""

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


# --------------------------------------------------------------------------------------------
# A fork-safe stack passes
# --------------------------------------------------------------------------------------------


def test_forksafe_probes_pass_every_path() -> None:
    run = check("--count", "2", "--json", "--setup", "import os", PROBES)
    assert run.code == 0, run
    report = run.json()
    assert report["passed"] is True, run
    rows = by_path(report)
    assert list(rows) == ALL_PATHS, run
    forks = {**dict.fromkeys(FORK_PATHS, 2), "nested": 4, "forkserver": 1, "spawn": 1}
    for path, row in rows.items():
        assert row["forks"] == forks[path], (path, row)
        assert row["ok"] == row["forks"], (path, row)
        assert row["p50_ms"] is not None and row["p50_ms"] > 0, (path, row)
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
    assert header == ["path", "ok", "wrong", "hung", "crashed", "hangs-at-exit", "failed", "p50",
                      "ms"]  # fmt: skip
    for path in ALL_PATHS:
        row = next(line.split() for line in run.stdout.splitlines() if line.startswith(path))
        assert row[2:6] == ["0", "0", "0", "0"], (path, run)
        assert row[6:9] == ["0", "of", "1"], (path, run)  # launches that failed, of all
    assert "every path ok" in run.stdout, run


# --------------------------------------------------------------------------------------------
# Stacks that are not fork-safe fail, with the path and the kind
# --------------------------------------------------------------------------------------------


def test_a_warmed_thread_pool_hangs_every_fork_path_with_its_stack() -> None:
    run = check("--count", "1", "--deadline", "2", "--json", "--setup", POOL_SETUP, POOL_CODE)
    assert run.code == 1, run
    report = run.json()
    rows = by_path(report)
    for path in FORK_PATHS:
        assert rows[path]["hung"] == rows[path]["forks"], (path, rows[path], run)
        assert rows[path]["ok"] == 0, (path, run)
    for path in ("forkserver", "spawn"):  # a fresh interpreter starts its own worker
        assert rows[path]["ok"] == 1, (path, rows[path], run)
    for path in FORK_PATHS:
        hung = culprits(report, path)[0]
        assert hung["status"] == "hung", hung
        assert "no result within 2 s" in hung["detail"], hung
        assert hung["threads"], hung  # native thread names from /proc
        stack = hung["stack"]
        # The stuck thread's Python stack: CODE waiting in Future.result -> Condition.wait.
        assert 'File "<CODE>", line 1 in <module>' in stack, (path, stack)
        assert "concurrent/futures/_base.py" in stack and " in result" in stack, (path, stack)
        assert "threading.py" in stack and " in wait" in stack, (path, stack)


def test_after_a_c_level_fork_the_stuck_thread_is_dumped_first() -> None:
    # The child starts a thread (glibc gives it the stack of a parent thread that does not exist
    # here) and then hangs. Python still lists the parent's thread, and dumping it reads that
    # reused stack: here that crashes the dumper. The stuck thread's stack must come first.
    setup = POOL_SETUP + "import threading, time\n"
    code = "threading.Thread(target=time.sleep, args=(30,), daemon=True).start()\n" + POOL_CODE
    run = check("--count", "1", "--deadline", "1", "--paths", "c_fork,raw_syscall", "--json",
                "--setup", setup, code)  # fmt: skip
    assert run.code == 1, run
    for path in ("c_fork", "raw_syscall"):
        hung = culprits(run.json(), path)[0]
        if FREE_THREADED and hung["status"] == "crashed":
            # Without a GIL a C-level or raw fork does not stop the world: the parent's pool
            # thread may still be attached to the interpreter in the child, which then crashes
            # (SIGSEGV) as well as hangs (CPython's hazard, which check's report names).
            assert "killed by SIG" in hung["detail"], hung
            continue
        assert hung["status"] == "hung", hung
        stuck, listed, _ = hung["stack"].partition("Every thread Python lists")
        assert 'File "<CODE>", line 2 in <module>' in stuck, hung["stack"]
        assert " in result" in stuck, hung["stack"]
        assert listed, hung["stack"]  # and then every thread (if the dumper survives them)


def test_the_table_and_the_diagnosis_name_the_path_and_the_kind() -> None:
    paths = "os_fork,c_fork,spawn"
    run = check("--count", "1", "--deadline", "2", "--paths", paths, "--setup", POOL_SETUP,
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
    rows = by_path(report)
    for path in ("os_fork", "c_fork", "raw_syscall", "thread_fork"):
        assert rows[path]["hangs_at_exit"] == 1, (path, rows[path], run)
        assert rows[path]["ok"] == 0, (path, run)
    # A chain's last generation exits first: it hangs; the one above it did its work and waits.
    assert rows["nested"]["hangs_at_exit"] == 1 and rows["nested"]["ok"] == 1, run
    # multiprocessing children leave through os._exit (no atexit); fresh interpreters have
    # their own worker thread.
    for path in ("mp_fork", "forkserver", "spawn"):
        assert rows[path]["ok"] == 1, (path, rows[path], run)
    for path in ("os_fork", "c_fork", "raw_syscall", "thread_fork", "nested"):
        stuck = culprits(report, path)[0]
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
    run = check("--count", "2", "--paths", "thread_fork,os_fork", "--json", "--setup",
                GOODBYE_SETUP, "1 + 1")  # fmt: skip
    assert run.code == 0, run
    report = run.json()
    for outcome in report["outcomes"]:
        (child,) = outcome["processes"]
        assert child["status"] == "ok" and child["exit_code"] == 0, (outcome, run)
        assert child["exit_steps"][:2] == ["threading._shutdown", "__check__.goodbye"], child
        assert outcome["output"] == ["goodbye from a child"], (outcome, run)
        skipped = "finalisation" in child["exit_info"]
        assert skipped == (outcome["path"] == "thread_fork" and sys.version_info >= (3, 13))


def test_a_different_value_is_wrong_unless_no_compare() -> None:
    code = "import os; os.getpid()"
    run = check("--count", "1", "--paths", "os_fork,spawn", "--json", code)
    assert run.code == 1, run
    rows = by_path(run.json())
    assert rows["os_fork"]["wrong"] == 1 and rows["spawn"]["wrong"] == 1, run
    wrong = culprits(run.json(), "os_fork")[0]
    assert wrong["detail"].startswith("returned ") and "the parent got" in wrong["detail"], wrong
    run = check("--count", "1", "--paths", "os_fork,spawn", "--no-compare", code)
    assert run.code == 0, run


def test_an_exception_in_a_child_is_wrong_with_its_traceback() -> None:
    setup = "import os\nPARENT = os.getpid()"
    code = (
        "def f():\n    raise LookupError('only in children')\nf() if os.getpid() != PARENT else 1"
    )
    run = check("--count", "1", "--paths", "os_fork,c_fork", "--json", "--setup", setup, code)
    assert run.code == 1, run
    for path in ("os_fork", "c_fork"):
        wrong = culprits(run.json(), path)[0]
        assert wrong["status"] == "wrong", wrong
        assert 'File "<CODE>", line 2, in f' in wrong["detail"], wrong
        assert "LookupError: only in children" in wrong["detail"], wrong


def test_a_crash_in_a_child_is_reported_with_the_signal() -> None:
    setup = "import ctypes, os\nPARENT = os.getpid()"
    code = "ctypes.string_at(0) if os.getpid() != PARENT else 1"
    run = check("--count", "1", "--paths", "os_fork,raw_syscall", "--json", "--setup", setup,
                code)  # fmt: skip
    assert run.code == 1, run
    for path in ("os_fork", "raw_syscall"):
        crashed = culprits(run.json(), path)[0]
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
    run = check("--paths", "spawn", "--deadline", "2", "--json", "--setup", setup, code)
    assert run.code == 0, run
    assert by_path(run.json())["spawn"]["ok"] == 1, run


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
    rows = by_path(run.json())
    for path in FORK_PATHS:
        assert rows[path]["hung"] == rows[path]["forks"], (path, run)
    for path in ("forkserver", "spawn"):  # a fresh interpreter sets its own PARENT
        assert rows[path]["ok"] == 1, (path, run)


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
        (["--paths", "os_fork,vfork", "1"], "unknown path(s) ['vfork']"),
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
    assert "forksafe/_cli" not in run.stderr, run  # check's own frames are not shown
