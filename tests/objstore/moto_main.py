"""Runs moto's S3 server on 127.0.0.1 behind a keep-alive front end that logs connections.

moto's server (werkzeug's development server, >= 2.1) sends ``Connection: close`` on every
response, even under HTTP/1.1, and drains the socket after each request, so it cannot keep a
connection open: a client's pool would never hold one, and a forked child would never find one
inherited. A real S3 endpoint keeps connections alive. So this process puts a small HTTP/1.1
front end (standard library) before moto: it keeps each client connection open across requests
(unless the client asks to close), forwards each request to moto on a fresh connection, and
appends ``<connection> <method> <path>`` to a log file, ``<connection>`` numbering the accepted
client connections from 1, and ``<connection> CLOSED <how>`` when one ends. The tests read that
log to see which requests shared a connection.

Usage: ``moto_main.py CONNECTION_LOG``. Started by the tests as a subprocess, so the test process
has no server threads when it forks. Prints ``PORT <n>`` (the front end's ephemeral port) once
listening; stops when its stdin closes, so it never outlives the tests.
"""

from __future__ import annotations

import http.client
import itertools
import logging
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import IO

from moto.server import ThreadedMotoServer

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length"}


class FrontEnd(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, moto_port: int, log: IO[str]) -> None:
        super().__init__(("127.0.0.1", 0), KeepAliveProxy)
        self.moto_port = moto_port
        self.log = log
        self.log_lock = threading.Lock()
        self.connections = itertools.count(1)


class KeepAliveProxy(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive unless the client sends Connection: close
    # Headers and body go out in separate writes: with Nagle on, the body of a response on a
    # kept-alive connection waits for the client's delayed ACK (40 ms). Real servers do not.
    disable_nagle_algorithm = True
    server: FrontEnd

    def setup(self) -> None:
        super().setup()
        self.number = next(self.server.connections)

    def log_message(self, format: str, *args: object) -> None:
        pass  # the connection log below is the record

    def _note(self, method: str, path: str) -> None:
        with self.server.log_lock:
            self.server.log.write(f"{self.number} {method} {path}\n")
            self.server.log.flush()

    def handle(self) -> None:
        # How the connection ended, as a log line ``<n> CLOSED <how>`` (``eof``: the client closed
        # it; ``after-request``: this end did; ``server-error:...``): the tests tell a client
        # that dropped a pooled connection from a server that closed it.
        try:
            super().handle()
        except Exception as error:
            self._note("CLOSED", f"server-error:{type(error).__name__}")
            raise
        how = "eof" if not getattr(self, "raw_requestline", b"") else "after-request"
        self._note("CLOSED", how)

    def _forward(self) -> None:
        self._note(self.command, self.path)
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.send_error(501, "chunked request bodies are not forwarded")
            return
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        upstream = http.client.HTTPConnection("127.0.0.1", self.server.moto_port, timeout=60)
        try:
            # The client's own Host header goes through unchanged: it is part of the signature.
            upstream.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
            for name, value in self.headers.items():
                if name.lower() not in HOP_BY_HOP:
                    upstream.putheader(name, value)
            if body or self.command in ("PUT", "POST"):
                upstream.putheader("Content-Length", str(len(body)))
            upstream.endheaders(body)
            response = upstream.getresponse()
            data = response.read()
            self.send_response_only(response.status, response.reason)
            for name, value in response.getheaders():
                if name.lower() not in HOP_BY_HOP:
                    self.send_header(name, value)
            if self.command == "HEAD":
                self.send_header("Content-Length", response.getheader("Content-Length", "0"))
            else:
                self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
        finally:
            upstream.close()

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward


def main() -> None:
    # One log line per request would fill the stderr pipe of a long run: errors only.
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    log = open(sys.argv[1], "a", encoding="utf-8")
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    _, moto_port = moto.get_host_and_port()
    front = FrontEnd(moto_port, log)
    threading.Thread(target=front.serve_forever, name="front-end", daemon=True).start()
    print(f"PORT {front.server_address[1]}", flush=True)
    sys.stdin.read()  # until EOF
    front.shutdown()
    moto.stop()


if __name__ == "__main__":
    main()
