"""A forked child that leaves through sys.exit() (normal interpreter shutdown) exits promptly.

Nothing may touch inherited state at exit (an exit hook that shuts down an inherited runtime
joins threads that do not exist). Each case runs in a fresh interpreter, so the grandchild's
shutdown is a real one and not pytest's.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

EXIT_DEADLINE = 2.0

SCRIPT = r"""
import json, os, sys, time
import forksafe

async def probe(v):
    echoed = await forksafe.testing.echo(v)
    slept = await forksafe.testing.sleep(0.01, v)
    return echoed, slept, await forksafe.testing.pid()

def work(v):
    echoed, slept, worker_pid = forksafe.run(probe(v))
    return {
        "pid": os.getpid(),
        "echo": echoed,
        "sleep": slept,
        "worker_pid": worker_pid,
        "echo_sync": forksafe.testing.echo_sync(v),
        "fork_local": list(CLIENT.get()),
        "runtimes_built": forksafe.runtime_info()["runtimes_built"],
    }

CLIENT = forksafe.fork_local(lambda: ("client", os.getpid()))
variant, deadline = sys.argv[1], float(sys.argv[2])
print(json.dumps({"who": "parent", "work": work("parent")}), flush=True)

pid = os.fork()
if pid == 0:
    if variant == "used":
        print(json.dumps({"who": "child", "work": work("child")}), flush=True)
    else:
        print(json.dumps({"who": "child", "pid": os.getpid()}), flush=True)
    sys.exit(0)  # normal shutdown: atexit, threading._shutdown, finalisation; no os._exit

expires = time.monotonic() + deadline
while True:
    done, status = os.waitpid(pid, os.WNOHANG)
    if done == pid:
        result = {"exited": True, "exit_code": os.waitstatus_to_exitcode(status)}
        break
    if time.monotonic() >= expires:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        result = {"exited": False}
        break
    time.sleep(0.005)
print(json.dumps({"who": "waiter", **result}), flush=True)
print(json.dumps({"who": "parent-after", "work": work("parent-again")}), flush=True)
"""


def _check_work(work: dict, v: str, pid: int) -> None:
    assert work["pid"] == pid
    assert work["echo"] == v
    assert work["sleep"] == v
    assert work["echo_sync"] == v
    assert work["worker_pid"] == pid
    assert work["fork_local"] == ["client", pid]
    assert work["runtimes_built"] == 1


@pytest.mark.parametrize("variant", ["used", "untouched"])
def test_child_exits_through_sys_exit(variant: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, variant, str(EXIT_DEADLINE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, f"script failed:\n{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = {}
    for line in proc.stdout.splitlines():
        message = json.loads(line)
        lines[message["who"]] = message
    assert lines.get("waiter", {}).get("exited"), (
        f"child hung: the forked child did not exit through sys.exit(0) within "
        f"{EXIT_DEADLINE} s and was killed; output:\n{proc.stdout}\n{proc.stderr}"
    )
    assert lines["waiter"]["exit_code"] == 0, proc.stdout + proc.stderr
    parent_pid = lines["parent"]["work"]["pid"]
    _check_work(lines["parent"]["work"], "parent", parent_pid)
    _check_work(lines["parent-after"]["work"], "parent-again", parent_pid)
    child = lines["child"]
    if variant == "used":
        child_pid = child["work"]["pid"]
        _check_work(child["work"], "child", child_pid)
    else:
        child_pid = child["pid"]
    assert child_pid != parent_pid
