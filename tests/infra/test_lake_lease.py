"""The lake's leases: one removal at a time across processes; a lease left by a killed process is
taken over; the holder may take it again."""

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from infra.delta_store import Lake
from infra.lake_lease import LEASE_DIR, LeaseBusy, lease

HOLD = textwrap.dedent("""
    import sys, time
    from infra.delta_store import Lake
    from infra.lake_lease import lease
    with lease(Lake(sys.argv[1]), "removal", "test holder", 0):
        print("held", flush=True)
        time.sleep(float(sys.argv[2]))
""")


def _holder(root, seconds=60):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(root), str(seconds)], stdout=subprocess.PIPE, text=True,
                            cwd=os.getcwd(), env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_holder_waits_then_says_who_holds_it_in_one_line(tmp_path):
    proc = _holder(tmp_path)
    try:
        started = time.monotonic()
        with pytest.raises(LeaseBusy) as info:
            with lease(Lake(str(tmp_path)), "removal", "second", wait_s=1):
                pass
        assert 1 <= time.monotonic() - started < 5
        message = str(info.value)
        assert "another removal is running: test holder" in message and f"pid {proc.pid}" in message
        assert "\n" not in message
    finally:
        proc.kill()
        proc.wait()


def test_a_lease_left_by_a_killed_process_is_taken_over(tmp_path):
    proc = _holder(tmp_path)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (tmp_path / LEASE_DIR / "removal.json").exists()  # kill -9: nothing released it
    with lease(Lake(str(tmp_path)), "removal", "after the crash", wait_s=0):
        assert "after the crash" in (tmp_path / LEASE_DIR / "removal.json").read_text()
    assert list((tmp_path / LEASE_DIR).iterdir()) == []


def test_the_holder_may_take_it_again_and_the_next_waiter_gets_it_when_released(tmp_path):
    with lease(Lake(str(tmp_path)), "removal", "outer", wait_s=0):
        with lease(Lake(str(tmp_path)), "removal", "inner", wait_s=0):
            pass
        assert (tmp_path / LEASE_DIR / "removal.json").exists()  # the inner block did not release it
    proc = _holder(tmp_path, seconds=1)
    try:
        with lease(Lake(str(tmp_path)), "removal", "next", wait_s=30):
            assert proc.wait(timeout=10) == 0  # the holder released it by finishing its block
    finally:
        proc.kill()
        proc.wait()


def test_in_a_bucket_one_holder_at_a_time_and_a_dead_holder_is_taken_over(s3_lake):
    """On object storage the lease is an object created only if absent (a conditional put) and
    taken over from a dead holder only if unchanged since it was read (If-Match)."""
    import json

    from infra.lake_layout import lease as lease_key
    from infra.lake_storage import bucket_and_key, s3_client

    client = s3_client(s3_lake.storage)
    bucket, key = bucket_and_key(s3_lake.root, lease_key("removal"))
    s3_lake.filesystem[0].create_dir(bucket)
    other = {"host": "elsewhere.example", "pid": 1, "process": "x", "purpose": "a run on another host"}
    client.put_object(Bucket=bucket, Key=key, Body=json.dumps(other).encode())
    with pytest.raises(LeaseBusy, match=r"^another removal is running: a run on another host \(pid 1 on elsewhere"):
        with lease(s3_lake, "removal", "second", wait_s=0.5):
            pass
    dead = {"host": socket.gethostname(), "pid": 999_999_999, "process": "gone", "purpose": "killed"}
    client.put_object(Bucket=bucket, Key=key, Body=json.dumps(dead).encode())
    with lease(s3_lake, "removal", "after the crash", wait_s=0):
        held = json.loads(client.get_object(Bucket=bucket, Key=key)["Body"].read())
        assert held["purpose"] == "after the crash"
        with lease(s3_lake, "removal", "again", wait_s=0):  # the holder may take it again
            pass
    with pytest.raises(client.exceptions.NoSuchKey):
        client.get_object(Bucket=bucket, Key=key)  # released
