"""A local server run in the foreground (``make s3-server``) stops its server when it is stopped,
by Ctrl-C or by SIGTERM: the server runs in a session of its own and would be left behind."""

import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

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


def test_a_disk_below_the_servers_floor_is_one_line_before_anything_starts(tmp_path):
    """SeaweedFS makes its volumes read-only below its floor of free disk, and a server that
    cannot write never became ready: a 60 s wait, then a page of its log."""
    data = tmp_path / "s3"
    data.mkdir()
    floor = shutil.disk_usage(data).total + 1
    with pytest.raises(RuntimeError, match=r"^the local S3 server needs \d+ MiB free under .*; the disk has \d+ MiB$"):
        LocalS3Server(data, min_free_bytes=floor).start()
    assert _weed_processes(data) == []


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["term", "ctrl-c"])
def test_a_stop_while_the_server_starts_leaves_nothing_running(tmp_path, stop):
    (port,) = free_ports(1)
    data = tmp_path / "s3"
    proc = subprocess.Popen([sys.executable, "-m", "infra.s3_server", str(data), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while not _weed_processes(data):  # SeaweedFS started, the server not yet ready
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()
            time.sleep(0.05)
        proc.send_signal(stop)
        assert proc.wait(timeout=60) == 0, proc.stdout.read()
        assert _weed_processes(data) == []
    finally:
        proc.kill()


def _weed_processes(data) -> list[int]:
    """SeaweedFS processes serving ``data``."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            command = (entry / "cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        if any(part.endswith(b"weed") for part in command[:1]) and any(str(data).encode() in part for part in command):
            found.append(int(entry.name))
    return found
