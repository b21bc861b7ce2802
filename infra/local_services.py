"""What the local servers that the demo and the tests start share (the Spark standalone cluster,
the S3 server): free loopback ports, and running one in the foreground until Ctrl-C."""

from __future__ import annotations

import signal
import socket
import time


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_until_interrupted() -> None:
    """Block until Ctrl-C or SIGTERM (``python -m infra.<server>`` keeps its server up meanwhile).
    A TERM ends the wait like Ctrl-C, so the caller's ``with`` stops the server it started: the
    server runs in a session of its own and would outlive this process otherwise."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
