"""The Dagster code location: `dagster dev -m orchestration.definitions`."""

import dagster as dg

from assets import candidates, clip_scores, funnel_report, images, kept_pairs, training_shards, warc_files
from orchestration.jobs import discover_job, ingest_job, release_job
from orchestration.resources import PairlakeResource
from orchestration.schedules import crawl_discovery_schedule

defs = dg.Definitions(
    assets=dg.load_assets_from_modules(
        [warc_files, candidates, images, clip_scores, kept_pairs, training_shards, funnel_report]
    ),
    jobs=[discover_job, ingest_job, release_job],
    schedules=[crawl_discovery_schedule],
    resources={"pairlake": PairlakeResource()},
)
