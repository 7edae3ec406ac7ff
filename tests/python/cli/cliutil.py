"""Runs ``python -m forksafe check|stress|doctor`` the way a user does, and never hangs a test.

Every run is a subprocess started in a session of its own, under a timeout: on expiry the whole
session is killed and the test fails with what it printed. After every run the test also
requires that no process of that session is left (children, grandchildren, forkserver).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

FORK_PATHS = ["os_fork", "mp_fork", "c_fork", "raw_syscall", "thread_fork", "nested"]
ALL_PATHS = [*FORK_PATHS, "forkserver", "spawn"]
RUN_TIMEOUT = 60.0
"""Seconds one run may take before the test kills it (a hang of the tool itself)."""


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
    """One finished run."""

    def __init__(self, args: list[str], code: int, stdout: str, stderr: str) -> None:
        self.args, self.code, self.stdout, self.stderr = args, code, stdout, stderr

    def json(self) -> dict[str, Any]:
        assert self.stdout.strip(), f"no output; stderr:\n{self.stderr}"
        report: dict[str, Any] = json.loads(self.stdout)
        return report

    def __repr__(self) -> str:  # pytest shows an assertion message object by its repr
        return f"{self.args} exited {self.code}\nstdout:\n{self.stdout}\nstderr:\n{self.stderr}"


def run(command: str, *args: str, timeout: float = RUN_TIMEOUT) -> Run:
    """Runs ``python -m forksafe COMMAND ARGS`` under a timeout; fails the test if it overruns
    or leaves any process behind."""
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
            f"{command} itself hung: still running after {timeout} s, killed\nstdout:\n{stdout}\n"
            f"stderr:\n{stderr}",
            pytrace=False,
        )
    result = Run([command, *args], process.returncode, stdout, stderr)
    expires = time.monotonic() + 5.0  # helpers (forkserver, resource tracker) see EOF and leave
    while _session_members(process.pid) and time.monotonic() < expires:
        time.sleep(0.05)
    left = _session_members(process.pid)
    _kill_session(process.pid)
    assert left == [], f"processes left behind by {command}:\n{left}\n{result}"
    return result


def check(*args: str, timeout: float = RUN_TIMEOUT) -> Run:
    """``python -m forksafe check ARGS`` (see :func:`run`)."""
    return run("check", *args, timeout=timeout)


def by_path(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The table of a JSON report, by path."""
    return {row["path"]: row for row in report["rows"]}


def culprits(report: dict[str, Any], path: str) -> list[dict[str, Any]]:
    """The failing processes of one path."""
    return [
        process
        for outcome in report["outcomes"]
        if outcome["path"] == path
        for process in outcome["processes"]
        if process["status"] != "ok"
    ]
