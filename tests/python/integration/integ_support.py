"""Process plumbing for the integration tests: services, the process table, deadlines.

Everything here has a deadline. A server or worker runs in its own session (so its whole process
group can be found and killed), writes its output to files, and is stopped by the test; a hang
fails the test with the last lines the process wrote. The tests fork their own children through
the suite's one harness, ``forkutil`` (the engine's paths and hang detector).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
import types
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Callable

import pytest

HERE = Path(__file__).resolve().parent
APPS = HERE / "apps"
OUTPUT_LINES = 40

# --------------------------------------------------------------------------------------------
# The process table (Linux /proc). Zombies count as gone: in this container PID 1 does not reap
# orphans, so a dead, orphaned worker stays a zombie forever.
# --------------------------------------------------------------------------------------------


def _stat(pid: int) -> tuple[str, int, int] | None:
    """``(state, ppid, pgrp)`` of ``pid``, or None if it does not exist."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = data[data.rindex(")") + 2 :].split()
    return fields[0], int(fields[1]), int(fields[2])


def is_alive(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie."""
    stat = _stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")


def parent_of(pid: int) -> int | None:
    stat = _stat(pid)
    return None if stat is None else stat[1]


def _live() -> list[tuple[int, int, int]]:
    """``(pid, ppid, pgrp)`` of every live process."""
    rows = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            stat = _stat(int(name))
            if stat is not None and stat[0] not in ("Z", "X"):
                rows.append((int(name), stat[1], stat[2]))
    return rows


def live_descendants(root: int) -> set[int]:
    """Live processes below ``root`` in the parent tree."""
    children: dict[int, list[int]] = {}
    for pid, ppid, _ in _live():
        children.setdefault(ppid, []).append(pid)
    found: set[int] = set()
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return {pid for pid in found if is_alive(pid)}


def live_group_members(pgid: int) -> set[int]:
    """Live processes in process group ``pgid`` (orphans included, whoever their parent is)."""
    return {pid for pid, _, pgrp in _live() if pgrp == pgid}


def describe(pids: Iterable[int]) -> str:
    """One line per PID: its state and command line, for failure messages."""
    lines = []
    for pid in sorted(pids):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            cmd = "?"
        stat = _stat(pid)
        lines.append(f"  pid {pid} state {stat[0] if stat else 'gone'}: {cmd[:200]}")
    return "\n".join(lines) or "  (none)"


def kill_all(pids: Iterable[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Polls ``predicate`` until it holds or ``timeout`` seconds pass; returns its last value."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


# --------------------------------------------------------------------------------------------
# Listening sockets, bound by the test and handed to the server (no port race).
# --------------------------------------------------------------------------------------------


def listening_socket() -> socket.socket:
    """A TCP socket listening on 127.0.0.1 on a port the kernel picks (bind to port 0)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    return sock


# --------------------------------------------------------------------------------------------
# Services: subprocesses in their own session, output in files, stopped with a deadline.
# --------------------------------------------------------------------------------------------


def subprocess_env(**extra: str) -> dict[str, str]:
    """The test's environment (FORKSAFE_PID_CHECK included) with the apps directory importable."""
    env = dict(os.environ)
    path = [str(APPS), *(p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p)]
    env["PYTHONPATH"] = os.pathsep.join(path)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def tail(path: Path, lines: int = OUTPUT_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return "(no output file)"
    kept = text.splitlines()[-lines:]
    return "\n".join(kept) if kept else "(empty)"


class Service:
    """A server or worker process started and stopped by a test."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        workdir: Path,
        *,
        cwd: Path = APPS,
        env: dict[str, str] | None = None,
        pass_fds: Sequence[int] = (),
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.cwd = cwd
        self.env = env if env is not None else subprocess_env()
        self.pass_fds = tuple(pass_fds)
        self.stdout_path = workdir / f"{name}.stdout"
        self.stderr_path = workdir / f"{name}.stderr"
        self.proc: subprocess.Popen[bytes] | None = None
        self.exit_code: int | None = None
        self.stopped_by_sigkill = False

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> Service:
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                self.argv,
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                pass_fds=self.pass_fds,
                start_new_session=True,  # its own process group: every worker can be found
            )
        return self

    def output(self) -> str:
        return (
            f"--- {self.name} (pid {self.proc.pid if self.proc else '-'}) last stdout lines ---\n"
            f"{tail(self.stdout_path)}\n"
            f"--- {self.name} last stderr lines ---\n{tail(self.stderr_path)}"
        )

    def fail(self, message: str) -> None:
        pytest.fail(f"{message}\n{self.output()}", pytrace=False)

    def require_running(self) -> None:
        assert self.proc is not None
        code = self.proc.poll()
        if code is not None:
            self.fail(f"{self.name} exited unexpectedly with code {code}")

    def stop(self, graceful: float = 15.0) -> None:
        """SIGTERM, then SIGKILL to the whole group after ``graceful`` seconds; then makes sure
        no process of the group is left (fails the test if one survives SIGKILL)."""
        if self.proc is None:
            return
        pgid = self.proc.pid
        if self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=graceful)
            except subprocess.TimeoutExpired:
                self.stopped_by_sigkill = True
                try:
                    os.killpg(pgid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                try:
                    self.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.fail(f"{self.name} survived SIGKILL for 10 s")
        if self.exit_code is None:
            self.exit_code = self.proc.returncode
        # Workers whose master is gone are orphans in the same group: give them a moment to
        # notice, then kill whatever is left.
        if not wait_until(lambda: not live_group_members(pgid), timeout=5):
            kill_all(live_group_members(pgid))
            if not wait_until(lambda: not live_group_members(pgid), timeout=10):
                self.fail(
                    f"{self.name}: processes of group {pgid} survived SIGKILL:\n"
                    + describe(live_group_members(pgid))
                )

    def leftovers(self) -> set[int]:
        return live_group_members(self.pid) if self.proc is not None else set()


@contextlib.contextmanager
def gunicorn_preload(
    app: str, workdir: Path, *, cwd: Path = APPS, env: dict[str, str] | None = None
) -> Iterator[tuple[Service, str]]:
    """gunicorn --preload with 2 sync workers serving ``app`` ("module:callable") on 127.0.0.1.

    The test binds the socket (port 0) and gunicorn inherits it, so there is no race for the
    port; once gunicorn holds it, connections are refused, not stuck, if it dies. Yields the
    service and its base URL; stops it (and every worker) on the way out.
    """
    sock = listening_socket()
    host, port = sock.getsockname()
    service = Service(
        "gunicorn",
        [
            python(), "-m", "gunicorn",
            "--preload",
            "--workers", "2",
            "--worker-class", "sync",
            "--bind", f"fd://{sock.fileno()}",
            "--no-control-socket",
            "--worker-tmp-dir", str(workdir),
            "--timeout", "30",
            "--graceful-timeout", "10",
            "--log-level", "info",
            app,
        ],
        workdir,
        cwd=cwd,
        env=env,
        pass_fds=[sock.fileno()],
    )  # fmt: skip
    try:
        service.start()
        sock.close()  # only gunicorn holds the socket now
        yield service, f"http://{host}:{port}"
    finally:
        sock.close()
        service.stop()


def app(name: str) -> types.ModuleType:
    """The module ``name`` of the apps directory, imported in this process by its file (after
    ``forksafe_probe``, which every app imports by name). Subprocesses find the apps on their
    PYTHONPATH (:func:`subprocess_env`); this process's ``sys.path`` stays as it is."""
    for module_name in dict.fromkeys(("forksafe_probe", name)):
        if module_name in sys.modules:
            continue
        spec = importlib.util.spec_from_file_location(module_name, APPS / f"{module_name}.py")
        if spec is None or spec.loader is None:
            raise ImportError(f"no app {module_name!r} in {APPS}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module  # pickled functions find it by name in a worker
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[module_name]
            raise
    return sys.modules[name]


def python() -> str:
    return sys.executable


def report_problems(result: dict[str, Any], value: str, forked_from: int, guard: str) -> list[str]:
    """Everything wrong with one ``forksafe_probe.observe`` report from a worker forked from
    ``forked_from`` (the process that imported the app and used forksafe before forking)."""
    worker = result["pid"]
    expected = {
        "value": value,
        "echo": value,
        "sleep": value,
        "echo_sync": value,
        "tokio_pid": worker,  # the worker's own runtime answered
        "client_pid": worker,  # the fork-local client was rebuilt in the worker
        "ppid": forked_from,
        "import_pid": forked_from,
        "runtimes_built": 1,
        "guard": guard,
    }
    problems = [
        f"{key}: expected {want!r}, got {result.get(key)!r}"
        for key, want in expected.items()
        if result.get(key) != want
    ]
    if worker == forked_from:
        problems.append("ran in the process it should have been forked from")
    if [forked_from, 1] not in result["inherited_runtimes"]:
        problems.append(f"the parent's runtime is not listed as inherited: {result!r}")
    return problems
