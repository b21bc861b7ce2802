"""Fail runs whose process is gone, so that a killed run does not hold the run queue forever.

`pairlake materialize` (and every other CLI command that runs a job) executes in its own process
(`execute_in_process`) on the persistent instance. Killed with SIGKILL, or by a reboot, it never
writes its end: the run stays STARTED and, with `max_concurrent_runs: 1`, the daemon's queue
never launches another run. Dagster's run monitoring cannot see this: it asks the run launcher
about the run's worker, and an in-process run has none.

So such runs carry the identity of their process as tags (`process_tags`), and `fail_dead_runs`
marks a run FAILURE when that process is gone from this host: no such PID, a zombie, or a PID
reused by a process that started later (a different start time or boot).
"""

from __future__ import annotations

import os
import socket

import dagster as dg

from infra.process_identity import process_identity

PID_TAG = "pairlake/pid"
HOST_TAG = "pairlake/host"
PROCESS_TAG = "pairlake/process"  # boot id and start time of the PID: tells a reused PID apart

# Statuses that hold a slot of the run queue (dagster's ACTIVE_RUN_STATUSES).
_ACTIVE = [dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING]


def process_tags() -> dict[str, str]:
    """Tags naming this process, for runs executed in it (``execute_in_process``)."""
    pid = os.getpid()
    return {PID_TAG: str(pid), HOST_TAG: socket.gethostname(), PROCESS_TAG: process_identity(pid) or ""}


def fail_dead_runs(instance: dg.DagsterInstance) -> list[str]:
    """Mark FAILURE every active run of this host whose process is gone; returns their run ids.

    Only runs tagged by ``process_tags`` are judged: a run launched by the daemon runs in a run
    worker the run launcher tracks, and runs of other hosts are their host's to judge.
    """
    host = socket.gethostname()
    failed = []
    for run in instance.get_runs(filters=dg.RunsFilter(statuses=_ACTIVE, tags={HOST_TAG: host})):
        pid, identity = int(run.tags[PID_TAG]), run.tags.get(PROCESS_TAG, "")
        current = process_identity(pid)
        if current is not None and current == identity:
            continue
        # The process is gone, so nothing writes to this run any more: read it once more in case
        # it finished between the query and the check.
        run = instance.get_run_by_id(run.run_id)
        if run is None or run.status not in _ACTIVE:
            continue
        why = "no longer exists" if current is None else "was reused by another process"
        instance.report_run_failed(
            run,
            f"pairlake run recovery: the process that ran this run (pid {pid} on {host}) is gone (the PID {why}): "
            "it was killed before the run could finish. Its stages are safe to re-run.",
        )
        failed.append(run.run_id)
    return failed


@dg.sensor(minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.RUNNING)
def dead_run_sensor(context: dg.SensorEvaluationContext) -> dg.SkipReason:
    """Fails runs whose process was killed, so that queued runs (opt-outs) can start."""
    failed = fail_dead_runs(context.instance)
    return dg.SkipReason(f"marked failed: {', '.join(failed)}" if failed else "no dead runs")
