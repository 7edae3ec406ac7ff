"""gunicorn --preload for the example's WSGI app, with deadlines and its whole session stopped.

The test binds the socket (port 0) and gunicorn inherits it: no race for the port, and a dead
gunicorn refuses connections rather than leaving them stuck. gunicorn runs in its own session
(every worker is in its process group), writes its output to files, and is stopped with
SIGTERM, then SIGKILL to the group; a failure shows its last lines.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

LAST_LINES = 40


class Gunicorn:
    """A running gunicorn master and what it wrote."""

    def __init__(self, proc: subprocess.Popen[bytes], logs: Path) -> None:
        self.proc = proc
        self.logs = logs

    @property
    def pid(self) -> int:
        return self.proc.pid

    def fail(self, message: str) -> None:
        text = self.logs.read_text(errors="replace").splitlines()[-LAST_LINES:]
        last = "\n".join(text) or "(no output)"
        pytest.fail(f"{message}\n--- gunicorn's last lines ---\n{last}", pytrace=False)

    def require_running(self) -> None:
        code = self.proc.poll()
        if code is not None:
            self.fail(f"gunicorn exited unexpectedly with code {code}")

    def stop(self, graceful: float = 15.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=graceful)
            except subprocess.TimeoutExpired:
                pass
        # Whatever is left of the session (workers orphaned by a dead master too).
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)


def parent_of(pid: int) -> int | None:
    """The parent PID of ``pid`` (Linux /proc), or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            data = stat.read()
    except OSError:
        return None
    return int(data[data.rindex(")") + 2 :].split()[1])


@contextlib.contextmanager
def gunicorn(
    app: str, workdir: Path, cwd: Path, env: dict[str, str]
) -> Iterator[tuple[Gunicorn, str]]:
    """Serves ``app`` ("module:callable") with 2 sync workers; yields gunicorn and its URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    host, port = sock.getsockname()
    argv = [
        sys.executable, "-m", "gunicorn", "--preload", "--workers", "2",
        "--worker-class", "sync", "--bind", f"fd://{sock.fileno()}", "--no-control-socket",
        "--worker-tmp-dir", str(workdir), "--timeout", "30", "--graceful-timeout", "10", app,
    ]  # fmt: skip
    logs = workdir / "gunicorn.log"
    try:
        with open(logs, "wb") as out:
            proc = subprocess.Popen(
                argv, cwd=cwd, env={**env, "PYTHONUNBUFFERED": "1"}, stdin=subprocess.DEVNULL,
                stdout=out, stderr=subprocess.STDOUT, pass_fds=[sock.fileno()],
                start_new_session=True,
            )  # fmt: skip
    finally:
        sock.close()  # only gunicorn holds it now
    served = Gunicorn(proc, logs)
    try:
        yield served, f"http://{host}:{port}"
    finally:
        served.stop()
