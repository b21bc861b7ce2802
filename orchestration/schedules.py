"""Schedules: crawl discovery (registers new WARC files and ingests them in one run) and the
weekly compaction of small files."""

import dagster as dg

from assets.warc_files import register_warc_files
from infra.delta_store import Lineage
from orchestration.jobs import ingest_job
from orchestration.resources import PairlakeResource
from orchestration.upkeep import optimize_lake_job


@dg.schedule(job=ingest_job, cron_schedule="0 * * * *", default_status=dg.DefaultScheduleStatus.STOPPED)
def crawl_discovery_schedule(context: dg.ScheduleEvaluationContext, pairlake: PairlakeResource):
    """Hourly: add new WARC files as partitions and request one run over exactly those files."""
    new, _ = register_warc_files(
        pairlake, context.instance, Lineage(run_id=f"schedule:{context.scheduled_execution_time}",
                                            asset_key="warc_files")
    )
    if not new:
        return dg.SkipReason("no new WARC files")
    # New partitions are added together, so they form one contiguous range: one run parses them all.
    return dg.RunRequest(
        run_key=f"warc:{new[0]}..{new[-1]}:{len(new)}",
        tags={"dagster/asset_partition_range_start": new[0], "dagster/asset_partition_range_end": new[-1]},
    )


# Weekly, Sunday 03:00: every run adds files, compaction packs them (off until turned on, like the above).
lake_compaction_schedule = dg.ScheduleDefinition(
    job=optimize_lake_job, cron_schedule="0 3 * * 0", default_status=dg.DefaultScheduleStatus.STOPPED,
)
