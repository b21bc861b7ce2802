"""The Dagster code location: `dagster dev -m orchestration.definitions`."""

import dagster as dg

from assets import (
    blocklist,
    candidates,
    clip_scores,
    curated,
    dedup,
    funnel_report,
    image_tags,
    images,
    kept_pairs,
    knn_index,
    optout_requests,
    release,
    warc_files,
)
from orchestration.jobs import apply_optout_job, discover_job, ingest_job, release_job, rerelease_job
from orchestration.resources import PairlakeResource
from orchestration.run_recovery import dead_run_sensor
from orchestration.schedules import crawl_discovery_schedule, lake_compaction_schedule
from orchestration.sensors import optout_inbox_sensor, rerelease_sensor
from orchestration.upkeep import optimize_lake_job

defs = dg.Definitions(
    assets=dg.load_assets_from_modules(
        [warc_files, candidates, images, clip_scores, image_tags, kept_pairs, blocklist, dedup, curated, knn_index,
         release, funnel_report, optout_requests]
    ),
    asset_checks=dg.load_asset_checks_from_modules([curated]),
    jobs=[discover_job, ingest_job, release_job, apply_optout_job, rerelease_job, optimize_lake_job],
    schedules=[crawl_discovery_schedule, lake_compaction_schedule],
    sensors=[optout_inbox_sensor, rerelease_sensor, dead_run_sensor],
    resources={"pairlake": PairlakeResource()},
)
