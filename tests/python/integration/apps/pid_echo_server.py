"""An HTTP/1.1 keep-alive server that echoes the client's PID and records who used each connection.

Every request carries ``X-Client-Pid``. The response is JSON: that PID, the TCP connection the
request arrived on (the client's ``address:port``) and how many requests that connection has
carried. ``GET /stats`` returns, for every connection, the PIDs of the requests it carried, in
order, and the errors the server hit on it (a garbled request line, say).

Usage: ``python pid_echo_server.py --fd N`` with N a listening socket bound by the caller.
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_lock = threading.Lock()
_usage: dict[str, list[int]] = {}
_errors: dict[str, list[str]] = {}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive unless the client asks to close
    timeout = 60  # an idle keep-alive connection ends after this many seconds

    def _conn(self) -> str:
        host, port = self.client_address[:2]
        return f"{host}:{port}"

    def _reply(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        conn = self._conn()
        if self.path == "/stats":
            with _lock:
                self._reply(200, {"connections": _usage, "errors": _errors})
            return
        header = self.headers.get("X-Client-Pid", "")
        try:
            pid = int(header)
        except ValueError:
            self.send_error(400, f"bad X-Client-Pid {header!r}")
            return
        with _lock:
            used = _usage.setdefault(conn, [])
            used.append(pid)
            count = len(used)
        self._reply(200, {"pid": pid, "conn": conn, "n": count, "path": self.path})

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        with _lock:
            _errors.setdefault(self._conn(), []).append(f"{code} {message}")
        super().send_error(code, message, explain)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # one line per request would drown the failure output; errors are in /stats


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--fd", type=int, required=True, help="a listening TCP socket")
    args = parser.parse_args()
    sock = socket.socket(fileno=args.fd)
    server = ThreadingHTTPServer(sock.getsockname(), Handler, bind_and_activate=False)
    server.socket.close()
    server.socket = sock
    server.daemon_threads = True
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"serving on {sock.getsockname()}", flush=True)
    server.serve_forever(poll_interval=0.1)


if __name__ == "__main__":
    main()
