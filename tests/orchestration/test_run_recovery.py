"""A run whose process was killed is failed, so the queue (opt-out runs) moves again.

Real processes, a real SQLite instance made from infra/dagster/dagster.yaml and, in the slow test,
a real `dagster-daemon` on pairlake's code location. This module is the code location of the killed
processes (`-m tests.orchestration.test_run_recovery`).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest

from orchestration.run_recovery import PID_TAG, dead_run_sensor, fail_dead_runs, process_tags

REPO = Path(__file__).resolve().parents[2]
MODULE = "tests.orchestration.test_run_recovery"  # as the daemon and the child processes import it


@dg.op
def block() -> None:
    time.sleep(600)  # until killed


@dg.job
def blocking_job():
    block()


def run_blocking() -> None:
    """What a `pairlake materialize` process does, with a job that never ends."""
    with dg.DagsterInstance.get() as instance:
        blocking_job.execute_in_process(instance=instance, tags=process_tags())


@pytest.fixture
def dagster_home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "infra" / "dagster" / "dagster.yaml", home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    return home


def start_blocked_run() -> subprocess.Popen:
    """A process running ``blocking_job`` as runner.py runs jobs; its output goes to a log beside the instance."""
    log = Path(os.environ["DAGSTER_HOME"]) / f"blocked-{time.monotonic_ns()}.log"
    with log.open("w") as out:  # the child holds its own copy
        return subprocess.Popen([sys.executable, "-c", f"import {MODULE} as m; m.run_blocking()"], cwd=REPO,
                                stdout=out, stderr=subprocess.STDOUT)


def started_run_of(instance: dg.DagsterInstance, process: subprocess.Popen, timeout: float = 90) -> dg.DagsterRun:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = instance.get_runs(filters=dg.RunsFilter(tags={PID_TAG: str(process.pid)},
                                                       statuses=[dg.DagsterRunStatus.STARTED]))
        if runs:
            return runs[0]
        assert process.poll() is None, f"the blocked run's process exited; see {Path(os.environ['DAGSTER_HOME'])}"
        time.sleep(0.5)
    raise AssertionError("the blocked run never started")


def kill(process: subprocess.Popen) -> None:
    process.kill()  # SIGKILL: nothing gets to write the run's end
    process.wait()


def failure_message(instance: dg.DagsterInstance, run_id: str) -> str:
    events = instance.all_logs(run_id, of_type=dg.DagsterEventType.RUN_FAILURE)
    assert len(events) == 1
    return events[0].message


def test_a_run_whose_process_is_gone_is_failed_and_a_live_one_is_not(dagster_home):
    processes = []
    try:
        # The instance's storage is created here first: two processes creating it at once collide.
        with dg.DagsterInstance.get() as instance:
            processes += [start_blocked_run(), start_blocked_run()]
            gone, reused = (started_run_of(instance, p) for p in processes)
            assert fail_dead_runs(instance) == []  # both processes alive
            for process in processes:
                kill(process)
            # A PID now held by another process (this one) that started at another time.
            instance.add_run_tags(reused.run_id, {PID_TAG: str(os.getpid())})
            assert {instance.get_run_by_id(r.run_id).status for r in (gone, reused)} == {dg.DagsterRunStatus.STARTED}

            with dg.build_sensor_context(instance=instance) as context:
                result = dead_run_sensor.evaluate_tick(context)
            assert gone.run_id in result.skip_message and reused.run_id in result.skip_message
            for run, why in ((gone, "the PID no longer exists"), (reused, "the PID was reused by another process")):
                assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.FAILURE
                message = failure_message(instance, run.run_id)
                assert message.startswith("pairlake run recovery: the process that ran this run (pid ") and why in message
            assert fail_dead_runs(instance) == []
    finally:
        for process in processes:
            if process.poll() is None:
                kill(process)


@pytest.mark.slow
def test_the_daemon_fails_a_killed_run_and_then_applies_the_queued_opt_out(dagster_home, tmp_path, monkeypatch):
    """The daemon on pairlake's own code location: a kill -9'd run holds the only run slot, the inbox
    sensor queues an opt-out run behind it, the dead-run sensor fails the stale run, and the opt-out
    is applied."""
    from infra.config import load_config
    from orchestration.optout_requests import request_status, submit_request

    monkeypatch.setenv("PAIRLAKE_CONFIG", "")
    monkeypatch.setenv("PAIRLAKE__LAKE__ROOT", str(tmp_path / "lake"))
    config = load_config()
    blocked = daemon = None
    try:
        with dg.DagsterInstance.get() as instance, (dagster_home / "daemon.log").open("w") as log:
            blocked = start_blocked_run()
            stale = started_run_of(instance, blocked)
            kill(blocked)
            assert instance.get_run_by_id(stale.run_id).status == dg.DagsterRunStatus.STARTED
            submit_request(config, {"request_id": "after-the-crash", "kind": "md5", "value": "0" * 32,
                                    "requester": "ticket", "reason": "queued behind a dead run"})

            daemon = subprocess.Popen([Path(sys.executable).parent / "dagster-daemon", "run", "-m",
                                       "orchestration.definitions"],
                                      cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            deadline = time.monotonic() + 300

            def applied() -> list[dg.DagsterRun]:
                return instance.get_runs(filters=dg.RunsFilter(job_name="apply_optout",
                                                               statuses=[dg.DagsterRunStatus.SUCCESS]))

            while not applied():
                assert time.monotonic() < deadline, (dagster_home / "daemon.log").read_text()[-3000:]
                time.sleep(1)

            assert instance.get_run_by_id(stale.run_id).status == dg.DagsterRunStatus.FAILURE
            assert "no longer exists" in failure_message(instance, stale.run_id)
            # The opt-out run was launched only once the stale one was failed.
            stale_end = instance.get_run_record_by_id(stale.run_id).end_time
            assert stale_end <= instance.get_run_record_by_id(applied()[0].run_id).start_time
            assert request_status(config, "after-the-crash")[0]["status"] == "applied"
    finally:
        if blocked is not None and blocked.poll() is None:
            kill(blocked)
        if daemon is not None:
            stop_process_group(daemon)


def stop_process_group(process: subprocess.Popen) -> None:
    """The daemon, its code server and any run worker share the daemon's process group."""
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(process.pid, signal.SIGKILL)  # whatever outlived the daemon
    except ProcessLookupError:
        pass
    process.wait()
