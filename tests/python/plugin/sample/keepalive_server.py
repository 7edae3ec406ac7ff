"""A local HTTP/1.1 keep-alive server on 127.0.0.1: each connection answers with the client
that opened it, so a connection shared across processes shows up.

It serves from a process of its own. A server thread inside the pytest process would be a thread
of the parent the plugin forks: a handler running at the instant of a C-level or raw fork (which
skip CPython's fork preparation) leaves the child a lock or an attached thread state that is
never released, and the child hangs at exit for the sample's sake, not forksafe's."""

from __future__ import annotations

import http.server
import subprocess
import sys
import threading
from typing import IO, Any


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keeps connections open (with Content-Length)

    def do_GET(self) -> None:
        client = self.headers.get("X-Client", "?")
        opener = getattr(self, "opener", None) or client
        self.opener = opener
        body = f"{client} {opener}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


class Served:
    """The server process: its address, and ``shutdown()``."""

    def __init__(self) -> None:
        self._process = subprocess.Popen(
            [sys.executable, __file__], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        stdout: IO[str] | None = self._process.stdout
        assert stdout is not None
        line = stdout.readline()
        if not line.strip().isdigit():
            self._process.kill()
            self._process.wait()
            raise RuntimeError(f"the keep-alive server did not start: {line!r}")
        self.server_address = ("127.0.0.1", int(line))

    def shutdown(self) -> None:
        """Closes the server's stdin (it exits on EOF) and reaps it."""
        if self._process.stdin is not None:
            self._process.stdin.close()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        if self._process.stdout is not None:
            self._process.stdout.close()


def start() -> Served:
    return Served()


def ask(connection: Any, client: str) -> tuple[str, str]:
    """One request on a pooled connection: (the client it answered, the connection's opener)."""
    connection.request("GET", "/", headers={"X-Client": client})
    answered, opener = connection.getresponse().read().decode().split()
    return answered, opener


if __name__ == "__main__":
    # Serves until stdin closes: when the test's process shuts it down, or dies.
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="keepalive-server", daemon=True).start()
    print(server.server_address[1], flush=True)
    sys.stdin.read()
    server.shutdown()
