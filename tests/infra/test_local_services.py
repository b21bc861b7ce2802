"""A local server run in the foreground (``make s3-server``) stops its server when it is stopped,
by Ctrl-C or by SIGTERM: the server runs in a session of its own and would be left behind."""

import signal
import socket
import subprocess
import sys
import time

import pytest

from infra.s3_server import LocalS3Server, free_ports


def _answers(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["term", "ctrl-c"])
def test_stopping_the_foreground_s3_server_stops_the_server(tmp_path, stop):
    (port,) = free_ports(1)  # with its gRPC neighbour (+10000) free too
    proc = subprocess.Popen([sys.executable, "-m", "infra.s3_server", str(tmp_path / "s3"), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        first = proc.stdout.readline()
        assert first.startswith(f"S3 server at http://127.0.0.1:{port}"), first + proc.stdout.read()
        assert _answers(port)
        proc.send_signal(stop)
        assert proc.wait(timeout=30) == 0
        deadline = time.monotonic() + 15
        while _answers(port) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _answers(port)
    finally:
        proc.kill()


def test_a_port_without_room_for_its_grpc_neighbour_is_one_line():
    with pytest.raises(ValueError, match=r"port \+ 10000"):
        LocalS3Server(port=60000)
