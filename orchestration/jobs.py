"""Jobs: discovery, per-file ingestion (one partitioned run), and the release: curation over the
whole lake (hash-list matches, dedup, curated variants, kNN index), then shards and the report."""

import dagster as dg

discover_job = dg.define_asset_job("discover_warc_files", selection=dg.AssetSelection.assets("warc_files"))

ingest_job = dg.define_asset_job(
    "ingest_warc_files",
    selection=dg.AssetSelection.assets("candidates", "images", "clip_scores", "image_tags", "kept_pairs"),
)

release_job = dg.define_asset_job(
    "export_release",
    selection=dg.AssetSelection.assets(
        "blocklist_matches", "dedup", "curated", "knn_index", "training_shards", "funnel_report"
    ),
)
