"""What the local servers that the demo and the tests start share (the Spark standalone cluster,
the S3 server): free loopback ports, and running one in the foreground until Ctrl-C."""

from __future__ import annotations

import contextlib
import signal
import socket
import time
from collections.abc import Iterator


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def until_interrupted() -> Iterator[None]:
    """``with until_interrupted(): with Server() as s: ...; wait_forever()``: a server that runs in
    the foreground (``python -m infra.<server>``) until Ctrl-C or SIGTERM. Both end the block the
    same way, whenever they arrive (while the server starts too), so the inner ``with`` stops the
    server it started: the server runs in a session of its own and would outlive this process."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)


def wait_forever() -> None:
    while True:
        time.sleep(3600)
