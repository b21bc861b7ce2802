"""Training shards: webdataset tars in img2dataset's layout, from a curated variant at a pinned version."""

from pathlib import Path
from typing import Iterator

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc

from infra.delta_store import Lake
from infra.tables import CURATED, IMAGES, SHARDS
from orchestration.resources import PairlakeResource, code_version
from spark_jobs import shard_export

CODE_VERSION = code_version(shard_export)


def shard_dir(pairlake: PairlakeResource, export_id: str) -> Path:
    output = Path(pairlake.settings.shards.output)
    base = output if output.is_absolute() else Path(pairlake.lake.root) / output
    return base / export_id


UIDS_PER_READ = 2000  # image bytes are read this many samples at a time, never all at once


def _samples(lake: Lake, rows: pa.Table) -> Iterator[pa.RecordBatch]:
    """``rows`` (sorted by uid) joined with their image bytes, a slice at a time."""
    for start in range(0, rows.num_rows, UIDS_PER_READ):
        chunk = rows.slice(start, UIDS_PER_READ)
        images = lake.read(IMAGES, columns=["uid", "image"], filter=pc.field("uid").isin(chunk["uid"]))
        yield from chunk.join(images, "uid", join_type="inner").sort_by("uid").to_batches()


@dg.asset(
    group_name="release",
    kinds={"webdataset", "delta"},
    deps=["curated"],
    code_version=CODE_VERSION,
    automation_condition=dg.AutomationCondition.eager(),
    description="webdataset shards of a curated variant at a pinned Delta version (manifest in table shards).",
)
def training_shards(context: dg.AssetExecutionContext, pairlake: PairlakeResource) -> dg.MaterializeResult:
    lake, variant = pairlake.lake, pairlake.settings.shards.variant
    source_version = lake.version(CURATED)
    if source_version is None:
        raise dg.Failure("curated has never been materialized: nothing to export")
    export_id = f"{variant}-v{source_version}"
    rows = lake.read(CURATED, version=source_version, filter=pc.field("variant") == variant)
    rows = rows.drop_columns(["variant"]).sort_by("uid")
    out_dir = shard_dir(pairlake, export_id)
    context.log.info(f"exporting {rows.num_rows} samples of curated {variant} v{source_version} to {out_dir}")
    # Same curated version, same bytes: a re-run rewrites the export in place.
    shards = shard_export.export_shards(
        _samples(lake, rows), out_dir, pairlake.settings.shards.samples_per_shard,
        image_ext=pairlake.settings.download.encode_format, overwrite=True,
    )
    manifest = shard_export.manifest_table(shards, export_id, source_version)
    lineage = pairlake.lineage(context, (CURATED, IMAGES), CODE_VERSION)
    version = lake.replace_partitions(SHARDS, manifest, [export_id], lineage)
    last = f"{len(shards) - 1:05d}" if shards else "00000"
    return dg.MaterializeResult(
        metadata={
            "export_id": export_id,
            "variant": variant,
            "curated_version": source_version,
            "shards": len(shards),
            "samples": sum(s.samples for s in shards),
            "bytes": sum(s.bytes for s in shards),
            "train_data": f"{out_dir}/{{00000..{last}}}.tar",
            "delta_version": version,
        }
    )
