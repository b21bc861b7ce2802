"""Jobs: discovery, per-file ingestion (one partitioned run), and the release (shards + report)."""

import dagster as dg

discover_job = dg.define_asset_job("discover_warc_files", selection=dg.AssetSelection.assets("warc_files"))

ingest_job = dg.define_asset_job(
    "ingest_warc_files",
    selection=dg.AssetSelection.assets("candidates", "images", "clip_scores", "kept_pairs"),
)

release_job = dg.define_asset_job(
    "export_release", selection=dg.AssetSelection.assets("training_shards", "funnel_report")
)
