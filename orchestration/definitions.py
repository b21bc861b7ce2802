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
    training_shards,
    warc_files,
)
from orchestration.jobs import discover_job, ingest_job, release_job
from orchestration.resources import PairlakeResource
from orchestration.schedules import crawl_discovery_schedule

defs = dg.Definitions(
    assets=dg.load_assets_from_modules(
        [warc_files, candidates, images, clip_scores, image_tags, kept_pairs, blocklist, dedup, curated, knn_index,
         training_shards, funnel_report]
    ),
    asset_checks=dg.load_asset_checks_from_modules([curated]),
    jobs=[discover_job, ingest_job, release_job],
    schedules=[crawl_discovery_schedule],
    resources={"pairlake": PairlakeResource()},
)
