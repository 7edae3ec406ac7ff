"""Runs moto's S3 server (``ThreadedMotoServer``) on 127.0.0.1 with an ephemeral port.

Speaks HTTP/1.1 with keep-alive. Started by the tests as a subprocess, so the test process
itself has no server threads when it forks. Prints ``PORT <n>`` once listening; stops when its
stdin closes (the test process exited or closed the pipe), so it never outlives the tests.
"""

from __future__ import annotations

import logging
import sys

from moto.moto_server.werkzeug_app import MotoRequestHandler
from moto.server import ThreadedMotoServer


def main() -> None:
    # One log line per request would fill the stderr pipe of a long run: errors only.
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    # HTTP/1.1 keep-alive, as a real S3 endpoint: the client's connection pool then holds open
    # connections, which a forked child inherits (werkzeug's default, HTTP/1.0, closes each).
    MotoRequestHandler.protocol_version = "HTTP/1.1"
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    _, port = server.get_host_and_port()
    print(f"PORT {port}", flush=True)
    sys.stdin.read()  # until EOF
    server.stop()


if __name__ == "__main__":
    main()
