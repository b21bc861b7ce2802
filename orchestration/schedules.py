"""The crawl-discovery schedule: registers new WARC files and ingests them in one run."""

import dagster as dg

from assets.warc_files import register_warc_files
from infra.delta_store import Lineage
from orchestration.jobs import ingest_job
from orchestration.resources import PairlakeResource


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
