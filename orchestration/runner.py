"""Materialize the asset graph through Dagster on the persistent instance, in three runs.

Runs are the same jobs the UI shows: discovery (unpartitioned), ingestion over every WARC partition
in one run (Spark parses the files in parallel), and the release (shards + report).
"""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg

from gpu_jobs.clip_model import load_clip
from infra.config import PairlakeConfig
from infra.crawl_source import list_warc_files
from infra.delta_store import Lake
from orchestration.run_recovery import fail_dead_runs, process_tags

DAGSTER_HOME_DEFAULT = ".dagster_home"
_INSTANCE_YAML = Path(__file__).resolve().parent.parent / "infra" / "dagster" / "dagster.yaml"


def ensure_dagster_home() -> Path:
    """$DAGSTER_HOME, defaulting to a project-local folder holding the SQLite storage."""
    home = Path(os.environ.setdefault("DAGSTER_HOME", str(Path(DAGSTER_HOME_DEFAULT).resolve())))
    home.mkdir(parents=True, exist_ok=True)
    target = home / "dagster.yaml"
    if not target.exists():
        target.write_text(_INSTANCE_YAML.read_text())
    return home


class RunFailed(RuntimeError):
    pass


def _execute(job_name: str, instance: dg.DagsterInstance, tags: dict[str, str] | None = None,
             run_config: dict | None = None) -> dg.ExecuteInProcessResult:
    from orchestration.definitions import defs

    fail_dead_runs(instance)  # a run killed earlier shows FAILURE and frees the queue
    job = defs.resolve_job_def(job_name)
    result = job.execute_in_process(instance=instance, tags={**(tags or {}), **process_tags()}, run_config=run_config,
                                    raise_on_error=False)
    if not result.success:
        failures = [e for e in result.all_events if e.is_step_failure]
        detail = "see the Dagster UI"
        if failures:
            error = failures[0].step_failure_data.error
            while error.cause is not None:  # the user's exception, not Dagster's wrapper
                error = error.cause
            detail = f"{failures[0].step_key}: {error.message.strip().splitlines()[-1]}"
        raise RunFailed(f"run {result.run_id} of {job_name} failed: {detail}")
    return result


def preflight(config: PairlakeConfig) -> None:
    """Refuse, with one line and before any commit, what would fail a stage halfway through."""
    Lake.of(config.lake).ensure_writable()
    list_warc_files(config.crawl)
    load_clip(config.clip)
    config.clip_threshold()


def materialize_all(instance: dg.DagsterInstance | None = None, partitions: list[str] | None = None) -> list[str]:
    """Discover WARC files, ingest ``partitions`` (default: all) in one run, export the release.

    Returns the run ids, in order.
    """
    from orchestration.partitions import warc_partitions

    from orchestration.resources import PairlakeResource

    preflight(PairlakeResource().settings)
    instance = instance or dg.DagsterInstance.get()
    runs = [_execute("discover_warc_files", instance).run_id]
    known = instance.get_dynamic_partitions(warc_partitions.name)
    wanted = partitions or known
    unknown = set(wanted) - set(known)
    if unknown:
        raise RunFailed(f"unknown WARC partitions: {sorted(unknown)}")
    if wanted:
        # A partition range is contiguous in the dynamic partition order; a selection that is not
        # is run range by range.
        for start, end in _ranges(known, wanted):
            tags = {"dagster/asset_partition_range_start": start, "dagster/asset_partition_range_end": end}
            runs.append(_execute("ingest_warc_files", instance, tags).run_id)
    runs.append(_execute("export_release", instance).run_id)
    return runs


def _ranges(ordered: list[str], wanted: list[str]) -> list[tuple[str, str]]:
    chosen = set(wanted)
    ranges: list[tuple[str, str]] = []
    start = prev = None
    for key in ordered:
        if key in chosen:
            start = start or key
            prev = key
        elif start is not None:
            ranges.append((start, prev))  # type: ignore[arg-type]
            start = None
    if start is not None:
        ranges.append((start, prev))  # type: ignore[arg-type]
    return ranges


def tick_sensor(sensor_name: str, instance: dg.DagsterInstance | None = None) -> list[str]:
    """Evaluate a sensor once and run what it requests in this process, as the daemon would
    (a run key that already has a successful run is skipped). Every request is run even when an
    earlier one fails; then RunFailed names the failures. Returns the run ids."""
    from orchestration.definitions import defs
    from orchestration.resources import PairlakeResource

    instance = instance or dg.DagsterInstance.get()
    sensor = defs.resolve_sensor_def(sensor_name)
    with dg.build_sensor_context(instance=instance, resources={"pairlake": PairlakeResource()}) as context:
        result = sensor.evaluate_tick(context)
    runs, failures = [], []
    for request in result.run_requests or []:
        done = instance.get_runs(filters=dg.RunsFilter(
            tags={"dagster/run_key": request.run_key, "dagster/sensor_name": sensor_name},
            statuses=[dg.DagsterRunStatus.SUCCESS]))
        if done:
            continue
        tags = {**request.tags, "dagster/run_key": request.run_key, "dagster/sensor_name": sensor_name}
        try:
            runs.append(_execute(sensor.job_name, instance, tags, request.run_config).run_id)
        except RunFailed as exc:
            failures.append(str(exc))
    if failures:
        raise RunFailed(f"{len(failures)} of {len(failures) + len(runs)} runs failed; first: {failures[0]}")
    return runs


def execute_job(job_name: str, instance: dg.DagsterInstance | None = None, run_config: dict | None = None,
                tags: dict[str, str] | None = None) -> str:
    """Run one job of the code location in this process; returns its run id."""
    return _execute(job_name, instance or dg.DagsterInstance.get(), tags, run_config).run_id
