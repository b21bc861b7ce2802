"""What the local servers that the demo and the tests start share (the Spark standalone cluster,
the S3 server): free loopback ports, and running one in the foreground until Ctrl-C."""

from __future__ import annotations

import socket
import time


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_until_interrupted() -> None:
    """Block until Ctrl-C (``python -m infra.<server>`` keeps its server up meanwhile)."""
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
