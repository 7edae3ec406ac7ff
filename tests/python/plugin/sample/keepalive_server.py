"""A local HTTP/1.1 keep-alive server on 127.0.0.1: each connection answers with the client
that opened it, so a connection shared across processes shows up."""

from __future__ import annotations

import http.server
import threading
from typing import Any


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


def start() -> http.server.ThreadingHTTPServer:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="keepalive-server", daemon=True).start()
    return server


def ask(connection: Any, client: str) -> tuple[str, str]:
    """One request on a pooled connection: (the client it answered, the connection's opener)."""
    connection.request("GET", "/", headers={"X-Client": client})
    answered, opener = connection.getresponse().read().decode().split()
    return answered, opener
