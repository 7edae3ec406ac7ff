"""Runs moto's S3 server (``ThreadedMotoServer``) on 127.0.0.1 with an ephemeral port.

Started by the tests as a subprocess, so the test process itself has no server threads when it
forks. Prints ``PORT <n>`` once listening; stops when its stdin closes (the test process exited
or closed the pipe), so it never outlives the tests.
"""

from __future__ import annotations

import logging
import sys

from moto.server import ThreadedMotoServer


def main() -> None:
    # One log line per request would fill the stderr pipe of a long run: errors only.
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    _, port = server.get_host_and_port()
    print(f"PORT {port}", flush=True)
    sys.stdin.read()  # until EOF
    server.stop()


if __name__ == "__main__":
    main()
