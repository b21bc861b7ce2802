"""The table registry: every Delta table of the lake, with its schema and partition columns.

One place names the tables so that stages, the report and later removal (issue C) agree on what
exists. Locations are ``<lake root>/<name>``; the root may be a local path or a URI.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa


@dataclass(frozen=True)
class TableSpec:
    name: str
    schema: pa.Schema
    partition_by: tuple[str, ...] = ()
    key: tuple[str, ...] = ()  # the columns that identify a row
    description: str = ""
    # Rows per Parquet row group, for tables of large rows: a reader decodes a whole row group at
    # once, so this bounds what one read of the table holds. None: the writer's default.
    row_group_rows: int | None = None


_TS = pa.timestamp("us", tz="UTC")

WARC_FILES = TableSpec(
    name="warc_files",
    description="Registry of discovered WARC files: one row per file, the Dagster partition key.",
    key=("warc_file",),
    schema=pa.schema(
        [
            pa.field("warc_file", pa.string(), nullable=False),  # partition key: the file's name
            pa.field("crawl_id", pa.string(), nullable=False),
            pa.field("uri", pa.string(), nullable=False),  # where to read it (path or URL)
            pa.field("size_bytes", pa.int64()),
            pa.field("discovered_at", _TS, nullable=False),
        ]
    ),
)

CANDIDATES = TableSpec(
    name="candidates",
    description="(image URL, alt text) pairs from HTML responses, unique by uid across the lake.",
    partition_by=("warc_file",),
    key=("uid",),
    schema=pa.schema(
        [
            pa.field("uid", pa.string(), nullable=False),
            pa.field("url", pa.string(), nullable=False),
            pa.field("caption", pa.string(), nullable=False),
            pa.field("page_url", pa.string(), nullable=False),
            pa.field("crawl_id", pa.string(), nullable=False),
            pa.field("warc_file", pa.string(), nullable=False),
            pa.field("record_offset", pa.int64(), nullable=False),
            pa.field("fetch_date", _TS),
            # The page's own opt-out, read at parse time ("meta-robots", "tdm-meta"): the image is
            # never requested. Null when none (and in tables written before the column existed).
            pa.field("optout_signal", pa.string()),
        ]
    ),
)

# Record-level parse problems: malformed, truncated or undecodable records, one row each.
WARC_REJECTS = TableSpec(
    name="warc_rejects",
    description="WARC records that could not be parsed, with the reason; counted, never fatal.",
    partition_by=("warc_file",),
    schema=pa.schema(
        [
            pa.field("warc_file", pa.string(), nullable=False),
            pa.field("record_offset", pa.int64()),
            pa.field("page_url", pa.string()),
            pa.field("reason", pa.string(), nullable=False),
            pa.field("detail", pa.string()),
        ]
    ),
)

IMAGES = TableSpec(
    name="images",
    description="One row per candidate: the resized image bytes on success, a failure reason otherwise.",
    partition_by=("warc_file",),
    key=("uid",),
    row_group_rows=1024,  # resized images of <= ~100 KB: ~100 MB per row group at most
    schema=pa.schema(
        [
            pa.field("uid", pa.string(), nullable=False),
            pa.field("url", pa.string(), nullable=False),
            pa.field("warc_file", pa.string(), nullable=False),
            pa.field("status", pa.string(), nullable=False),  # "ok" or "failed"
            pa.field("error", pa.string()),  # failure reason code (http_404, timeout, not_image, ...)
            pa.field("error_detail", pa.string()),
            pa.field("retryable", pa.bool_(), nullable=False),
            pa.field("http_status", pa.int32()),
            pa.field("attempts", pa.int32(), nullable=False),
            pa.field("final_url", pa.string()),  # after redirects
            pa.field("fetched_at", _TS, nullable=False),
            pa.field("image", pa.binary()),  # re-encoded, resized bytes
            pa.field("image_format", pa.string()),
            pa.field("width", pa.int32()),
            pa.field("height", pa.int32()),
            pa.field("original_width", pa.int32()),
            pa.field("original_height", pa.int32()),
            pa.field("original_bytes", pa.int64()),
            pa.field("sha256", pa.string()),  # of the original bytes
            pa.field("sha1", pa.string()),  # of the original bytes
            pa.field("md5", pa.string()),  # of the original bytes
        ]
    ),
)

CLIP_SCORES = TableSpec(
    name="clip_scores",
    description="CLIP embeddings (L2-normalised, float16 bytes) and image-text cosine per pair and model.",
    partition_by=("warc_file",),
    key=("uid", "model_id"),
    schema=pa.schema(
        [
            pa.field("uid", pa.string(), nullable=False),
            pa.field("warc_file", pa.string(), nullable=False),
            pa.field("model_id", pa.string(), nullable=False),  # "<model>/<pretrained or checkpoint sha>"
            pa.field("embedding_dim", pa.int32(), nullable=False),
            pa.field("image_embedding", pa.binary(), nullable=False),  # float16 little-endian
            pa.field("text_embedding", pa.binary(), nullable=False),  # float16 little-endian
            pa.field("similarity", pa.float32(), nullable=False),
        ]
    ),
)

KEPT_PAIRS = TableSpec(
    name="kept_pairs",
    description="The kept set: pairs whose CLIP similarity clears the model's threshold.",
    partition_by=("warc_file",),
    key=("uid",),
    schema=pa.schema(
        [
            pa.field("uid", pa.string(), nullable=False),
            pa.field("warc_file", pa.string(), nullable=False),
            pa.field("url", pa.string(), nullable=False),
            pa.field("caption", pa.string(), nullable=False),
            pa.field("language", pa.string()),
            pa.field("similarity", pa.float32(), nullable=False),
            pa.field("model_id", pa.string(), nullable=False),
            pa.field("width", pa.int32()),
            pa.field("height", pa.int32()),
            pa.field("original_width", pa.int32()),
            pa.field("original_height", pa.int32()),
            pa.field("sha256", pa.string()),
            pa.field("sha1", pa.string()),
            pa.field("md5", pa.string()),
        ]
    ),
)

SHARDS = TableSpec(
    name="shards",
    description="Every shard of every release version on disk now: path, samples and checksum.",
    partition_by=("export_id",),
    key=("export_id", "shard"),
    schema=pa.schema(
        [
            pa.field("export_id", pa.string(), nullable=False),  # "<release>/v<version>"
            pa.field("shard", pa.string(), nullable=False),  # "00000"
            pa.field("path", pa.string(), nullable=False),
            pa.field("samples", pa.int64(), nullable=False),
            pa.field("bytes", pa.int64(), nullable=False),
            pa.field("sha256", pa.string(), nullable=False),
            pa.field("source_version", pa.int64(), nullable=False),
            pa.field("created_at", _TS, nullable=False),
        ]
    ),
)

BLOCKLIST = TableSpec(
    name="blocklist",
    description="Imported hash lists (Re-LAION style): digests of image bytes or of URLs, per source.",
    partition_by=("source",),
    key=("source", "kind", "digest"),
    schema=pa.schema(
        [
            pa.field("source", pa.string(), nullable=False),  # the list's name, e.g. "iwf-2024-08"
            pa.field("kind", pa.string(), nullable=False),  # image-md5, image-sha1, ..., url-sha256
            pa.field("target", pa.string(), nullable=False),  # "image" or "url"
            pa.field("digest", pa.string(), nullable=False),  # lowercase hex
            pa.field("line", pa.int64(), nullable=False),  # where it was in the imported file
            pa.field("list_date", pa.date32(), nullable=False),
            pa.field("imported_at", _TS, nullable=False),
        ]
    ),
)

BLOCKLIST_MATCHES = TableSpec(
    name="blocklist_matches",
    description="Pairs whose image or URL digest is on an imported hash list, per list.",
    key=("uid", "source", "kind"),
    schema=pa.schema(
        [
            pa.field("uid", pa.string(), nullable=False),
            pa.field("warc_file", pa.string(), nullable=False),
            pa.field("source", pa.string(), nullable=False),
            pa.field("kind", pa.string(), nullable=False),
        ]
    ),
)

IMAGE_TAGS = TableSpec(
    name="image_tags",
    description="Safety and quality tags scored from the stored CLIP image embeddings.",
    partition_by=("warc_file",),
    key=("uid", "model_id"),
    schema=pa.schema(
        [
            pa.field("uid", pa.string(), nullable=False),
            pa.field("warc_file", pa.string(), nullable=False),
            pa.field("model_id", pa.string(), nullable=False),  # the CLIP model of the embeddings
            pa.field("punsafe", pa.float32()),
            pa.field("pwatermark", pa.float32()),
            pa.field("aesthetic", pa.float32()),
            pa.field("extra", pa.map_(pa.string(), pa.float32())),  # further named tags
            pa.field("scorers", pa.string(), nullable=False),  # JSON: tag -> scorer identity
        ]
    ),
)

DEDUP = TableSpec(
    name="dedup",
    description="Every kept, unblocked pair with its exact (sha256) and near-duplicate (CLIP) cluster.",
    key=("uid",),
    schema=pa.schema(
        [
            pa.field("uid", pa.string(), nullable=False),
            pa.field("warc_file", pa.string(), nullable=False),
            pa.field("sha256", pa.string(), nullable=False),
            pa.field("exact_representative", pa.string(), nullable=False),  # uid kept for this sha256
            pa.field("cluster", pa.string(), nullable=False),  # uid of the near-duplicate representative
            pa.field("cluster_size", pa.int64(), nullable=False),  # distinct images in the cluster
            pa.field("max_similarity", pa.float32()),  # best image cosine to another cluster member
            pa.field("reason", pa.string(), nullable=False),  # unique, exact_duplicate, near_duplicate
        ]
    ),
)

CURATED = TableSpec(
    name="curated",
    description="The curated set per safety variant: kept, unblocked, deduplicated and tagged pairs.",
    partition_by=("variant",),
    key=("variant", "uid"),
    # A kept pair plus the tags that decided its variants and its near-duplicate cluster's size.
    schema=pa.schema(
        [
            pa.field("variant", pa.string(), nullable=False),
            *KEPT_PAIRS.schema,
            pa.field("punsafe", pa.float32()),
            pa.field("pwatermark", pa.float32()),
            pa.field("aesthetic", pa.float32()),
            pa.field("cluster_size", pa.int64(), nullable=False),
        ]
    ),
)

RELEASES = TableSpec(
    name="releases",
    description="Release versions: what each pinned, the rules it applied, its counts and its diff.",
    partition_by=("release",),
    key=("release", "version"),
    schema=pa.schema(
        [
            pa.field("release", pa.string(), nullable=False),  # e.g. "demo-en-research"
            pa.field("version", pa.int64(), nullable=False),  # 1, 2, ...
            pa.field("kind", pa.string(), nullable=False),  # "snapshot" or "rerelease"
            pa.field("previous_version", pa.int64()),
            pa.field("variant", pa.string(), nullable=False),
            pa.field("samples", pa.int64(), nullable=False),
            pa.field("shards", pa.int64(), nullable=False),
            pa.field("removed", pa.int64(), nullable=False),  # against the previous version
            pa.field("added", pa.int64(), nullable=False),
            pa.field("source_versions", pa.string(), nullable=False),  # JSON: table -> Delta version
            pa.field("rules", pa.string(), nullable=False),  # JSON: thresholds, variant, hash lists
            pa.field("path", pa.string(), nullable=False),
            pa.field("created_at", _TS, nullable=False),
            pa.field("run_id", pa.string(), nullable=False),
        ]
    ),
)

OPTOUT_REQUESTS = TableSpec(
    name="optout_requests",
    description="Opt-out requests and what became of them, one row per step (append-only: rows are never "
                "rewritten). Exact URLs and hashes are kept as digests only.",
    key=("request_id", "recorded_at"),
    schema=pa.schema(
        [
            pa.field("request_id", pa.string(), nullable=False),
            pa.field("status", pa.string(), nullable=False),  # received, needs_confirmation, applied, rejected
            pa.field("kind", pa.string()),  # url, url_prefix, domain, sha256, md5, image
            pa.field("target", pa.string()),  # a prefix or domain as given; null for exact URLs and hashes
            pa.field("target_sha256", pa.string()),  # sha256 of the URL, hash or example image bytes
            pa.field("requester", pa.string()),
            pa.field("reason", pa.string()),
            pa.field("rejection", pa.string()),  # why a request was rejected
            pa.field("matched", pa.int64()),  # uids removed
            pa.field("rows_deleted", pa.string()),  # JSON: table -> rows
            pa.field("shards_rewritten", pa.int64()),
            pa.field("file_name", pa.string(), nullable=False),
            pa.field("received_at", _TS, nullable=False),
            pa.field("applied_at", _TS),
            pa.field("run_id", pa.string(), nullable=False),
            pa.field("recorded_at", _TS),  # when this row was written (null in rows of older lakes)
            pa.field("preview", pa.string()),  # JSON: matched, lake_pairs, fraction, matched_by, hosts, uids
            pa.field("hold_reason", pa.string()),  # why it needs a person's confirmation
            pa.field("confirmed_by", pa.string()),  # who confirmed a held request
        ]
    ),
)

REMOVALS = TableSpec(
    name="removals",
    description="Every uid removed from the lake, by which request: what re-releases and lineage read.",
    key=("uid",),
    schema=pa.schema(
        [
            pa.field("uid", pa.string(), nullable=False),
            pa.field("request_id", pa.string(), nullable=False),
            pa.field("matched_by", pa.string(), nullable=False),  # url, domain, sha256, image, same_bytes...
            pa.field("removed_at", _TS, nullable=False),
            pa.field("run_id", pa.string(), nullable=False),
        ]
    ),
)

# Per-stage counters (funnel, skip reasons), one row per (stage, partition, metric). Partitioned by
# the WARC partition; a stage replaces its own rows for its partitions (see Lake.replace_partitions).
STAGE_STATS = TableSpec(
    name="stage_stats",
    description="Counters per stage and partition: funnel counts and skip/failure reasons.",
    partition_by=("partition",),
    key=("stage", "partition", "metric"),
    schema=pa.schema(
        [
            pa.field("stage", pa.string(), nullable=False),
            pa.field("partition", pa.string(), nullable=False),
            pa.field("metric", pa.string(), nullable=False),
            pa.field("value", pa.int64(), nullable=False),
        ]
    ),
)

ALL_TABLES: dict[str, TableSpec] = {
    spec.name: spec
    for spec in (
        WARC_FILES, CANDIDATES, WARC_REJECTS, IMAGES, CLIP_SCORES, KEPT_PAIRS, BLOCKLIST, BLOCKLIST_MATCHES,
        IMAGE_TAGS, DEDUP, CURATED, SHARDS, RELEASES, OPTOUT_REQUESTS, REMOVALS, STAGE_STATS,
    )
}

# Tables whose rows are samples (they carry a uid): a removal deletes its uids from each of them.
# The removals table itself keeps the uids it removed, the audit trail; uids are opaque digests.
SAMPLE_TABLES: tuple[TableSpec, ...] = tuple(
    spec for spec in ALL_TABLES.values() if "uid" in spec.schema.names and spec is not REMOVALS
)


def table_spec(name: str) -> TableSpec:
    try:
        return ALL_TABLES[name]
    except KeyError:
        raise KeyError(f"unknown table {name!r}; known: {', '.join(sorted(ALL_TABLES))}") from None
