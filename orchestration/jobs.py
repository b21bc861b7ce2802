"""Jobs: discovery, per-file ingestion (one partitioned run), the release (curation over the whole
lake, then the next release version and the report), opt-out removal and re-release."""

import dagster as dg

discover_job = dg.define_asset_job("discover_warc_files", selection=dg.AssetSelection.assets("warc_files"))

ingest_job = dg.define_asset_job(
    "ingest_warc_files",
    selection=dg.AssetSelection.assets("candidates", "images", "clip_scores", "image_tags", "kept_pairs"),
)

release_job = dg.define_asset_job(
    "export_release",
    selection=dg.AssetSelection.assets("blocklist_matches", "dedup", "curated", "knn_index", "release", "funnel_report"),
)

# One run per request file (run config names it); launched by the inbox sensor.
apply_optout_job = dg.define_asset_job("apply_optout", selection=dg.AssetSelection.assets("optout_requests"))

# The previous version minus what was removed or hash-listed since: matches are refreshed first.
rerelease_job = dg.define_asset_job(
    "rerelease",
    selection=dg.AssetSelection.assets("blocklist_matches", "release"),
    config={"ops": {"release": {"config": {"mode": "rerelease"}}}},
)
