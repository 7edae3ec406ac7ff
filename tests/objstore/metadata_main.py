"""A small EC2 instance-metadata endpoint (IMDSv2) on 127.0.0.1 that keeps connections alive
and logs which connection carried each request.

object_store's instance credential provider (``AmazonS3Builder::with_metadata_endpoint``) asks
it for a session token (``PUT /latest/api/token``), the role name and the role's credentials.
Each credential set it hands out is numbered (``AccessKeyId`` ``forksafe-imds-<n>``) and expires
in 200 s: less than object_store's 300 s refresh margin, so a client that holds it fetches a new
one on its next request (after object_store's 100 ms back-off). The log lines are
``<connection> <method> <path>``, connections numbered from 1 in accept order.

Usage: ``metadata_main.py CONNECTION_LOG``; prints ``PORT <n>`` once listening and stops when
its stdin closes (run as a subprocess, so the test process has no server threads when it forks).
"""

from __future__ import annotations

import datetime
import itertools
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import IO

ROLE = "forksafe-test-role"
CREDENTIALS_PATH = "/latest/meta-data/iam/security-credentials/"
LIFETIME = datetime.timedelta(seconds=200)


class Metadata(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, log: IO[str]) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.log = log
        self.lock = threading.Lock()
        self.connections = itertools.count(1)
        self.issued = itertools.count(1)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: a client's pool holds the connection
    disable_nagle_algorithm = True  # no 40 ms delayed-ACK stall between headers and body
    server: Metadata

    def setup(self) -> None:
        super().setup()
        self.number = next(self.server.connections)

    def log_message(self, format: str, *args: object) -> None:
        pass  # the connection log is the record

    def _reply(self, status: int, body: bytes, content_type: str = "text/plain") -> None:
        with self.server.lock:
            self.server.log.write(f"{self.number} {self.command} {self.path}\n")
            self.server.log.flush()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_PUT(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        if self.path == "/latest/api/token":
            self._reply(200, b"forksafe-imds-session")
        else:
            self._reply(404, b"not found")

    def do_GET(self) -> None:
        if self.headers.get("X-aws-ec2-metadata-token") != "forksafe-imds-session":
            self._reply(401, b"no session token")
        elif self.path == CREDENTIALS_PATH:
            self._reply(200, ROLE.encode())
        elif self.path == CREDENTIALS_PATH + ROLE:
            n = next(self.server.issued)
            expires = datetime.datetime.now(datetime.timezone.utc) + LIFETIME
            body = {
                "Code": "Success",
                "Type": "AWS-HMAC",
                "AccessKeyId": f"forksafe-imds-{n}",
                "SecretAccessKey": f"forksafe-imds-secret-{n}",
                "Token": f"forksafe-imds-token-{n}",
                "Expiration": expires.strftime("%Y-%m-%dT%H:%M:%SZ"),
            }
            self._reply(200, json.dumps(body).encode(), "application/json")
        else:
            self._reply(404, b"not found")


def main() -> None:
    with open(sys.argv[1], "a", encoding="utf-8") as log:
        server = Metadata(log)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        print(f"PORT {server.server_address[1]}", flush=True)
        sys.stdin.read()  # until the tests close our stdin
        server.shutdown()


if __name__ == "__main__":
    main()
