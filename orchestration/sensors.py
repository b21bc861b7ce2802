"""Sensors: the opt-out inbox (one run per request file) and the re-release after removals."""

from __future__ import annotations

import datetime as dt
import json

import dagster as dg
import pyarrow.compute as pc

from infra.tables import BLOCKLIST, REMOVALS
from orchestration.jobs import apply_optout_job, rerelease_job
from orchestration.optout_requests import pending_requests
from orchestration.resources import PairlakeResource
from spark_jobs import release


# A request whose run failed (another removal held the lake past optout.lock_wait_s, a killed
# process) is tried again under a new run key, this many times in all.
MAX_ATTEMPTS = 5
_ENDED_BADLY = (dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED)


def _attempt_key(instance: dg.DagsterInstance, key: str) -> str | None:
    """The run key of the next attempt at a request file, or None when every attempt failed."""
    for attempt in range(1, MAX_ATTEMPTS + 1):
        candidate = key if attempt == 1 else f"{key}:attempt-{attempt}"
        runs = instance.get_runs(filters=dg.RunsFilter(tags={"dagster/run_key": candidate}), limit=1)
        if not runs or runs[0].status not in _ENDED_BADLY:
            return candidate  # not run yet, or running or done: the daemon skips a key it has seen
    return None


@dg.sensor(job=apply_optout_job, minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.RUNNING)
def optout_inbox_sensor(context: dg.SensorEvaluationContext, pairlake: PairlakeResource):
    """One run per request file, in a local inbox or under the inbox prefix of a bucket alike. The
    run key is the file's name and a short sha256 of its bytes (requests are small and capped), the
    one version tag for both: an object's etag is no content hash after a multipart upload, and an
    mtime changes on a mere copy. So a request is applied once, the same bytes put back under the
    same name are not run again (their id is used up anyway), a file re-uploaded under the same
    name with other bytes is a new request, and a failed run is retried."""
    requests = []
    for pending in pending_requests(pairlake.settings):
        key = _attempt_key(context.instance, f"{pending.name}:{pending.version}")
        if key is None:
            context.log.warning(f"{pending.name}: {MAX_ATTEMPTS} runs failed; fix the cause, then change the "
                                "request (or submit it under a new name)")
            continue
        requests.append(dg.RunRequest(
            run_key=key,
            run_config={"ops": {"optout_requests": {"config": {"request_file": pending.name}}}},
            tags={"pairlake/request_file": pending.name},
        ))
    return requests or dg.SkipReason("no opt-out requests in the inbox")


def _changed_since(pairlake: PairlakeResource, pinned: dict[str, int]) -> dt.datetime | None:
    """When the newest removal or hash-list import that the pinned versions predate landed."""
    lake, landed = pairlake.lake, []
    for spec, column in ((REMOVALS, "removed_at"), (BLOCKLIST, "imported_at")):
        version = lake.version(spec)
        if version is not None and version != pinned.get(spec.name):
            # The newest time, a batch at a time: the sensor ticks every minute over any lake size.
            landed += [t for batch in lake.batches(spec, [column]) if (t := pc.max(batch.column(column)).as_py())]
    return max(landed, default=None)


@dg.sensor(job=rerelease_job, minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.RUNNING)
def rerelease_sensor(context: dg.SensorEvaluationContext, pairlake: PairlakeResource):
    """Re-release once removals have landed and none came for ``release.rerelease_debounce_s``."""
    settings = pairlake.settings.release
    last = release.latest(pairlake.lake, settings.name)
    if last is None:
        return dg.SkipReason(f"release {settings.name} has no version yet")
    pinned = json.loads(last["source_versions"])
    changed = _changed_since(pairlake, pinned)
    if changed is None or changed <= last["created_at"]:
        return dg.SkipReason(f"no removals since {settings.name} v{last['version']}")
    quiet = (dt.datetime.now(dt.timezone.utc) - changed).total_seconds()
    if quiet < settings.rerelease_debounce_s:
        return dg.SkipReason(f"removals landed {quiet:.0f} s ago; waiting {settings.rerelease_debounce_s} s for more")
    return dg.RunRequest(run_key=f"rerelease:{settings.name}:v{last['version']}:{changed.isoformat()}")
