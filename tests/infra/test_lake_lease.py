"""The lake's leases: one removal at a time across processes; a lease left by a killed process is
taken over; the holder may take it again."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from infra.lake_lease import LEASE_DIR, LeaseBusy, lease

HOLD = textwrap.dedent("""
    import sys, time
    from infra.lake_lease import lease
    with lease(sys.argv[1], "removal", "test holder", 0):
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
            with lease(tmp_path, "removal", "second", wait_s=1):
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
    with lease(tmp_path, "removal", "after the crash", wait_s=0):
        assert "after the crash" in (tmp_path / LEASE_DIR / "removal.json").read_text()
    assert list((tmp_path / LEASE_DIR).iterdir()) == []


def test_the_holder_may_take_it_again_and_the_next_waiter_gets_it_when_released(tmp_path):
    with lease(tmp_path, "removal", "outer", wait_s=0):
        with lease(tmp_path, "removal", "inner", wait_s=0):
            pass
        assert (tmp_path / LEASE_DIR / "removal.json").exists()  # the inner block did not release it
    proc = _holder(tmp_path, seconds=1)
    try:
        with lease(tmp_path, "removal", "next", wait_s=30):
            assert proc.wait(timeout=10) == 0  # the holder released it by finishing its block
    finally:
        proc.kill()
        proc.wait()
