"""Training shards: webdataset tars in img2dataset's layout, exported from a pinned kept_pairs version."""

from pathlib import Path

import dagster as dg
import pyarrow.compute as pc

from infra.tables import IMAGES, KEPT_PAIRS, SHARDS
from orchestration.resources import PairlakeResource, code_version
from spark_jobs import shard_export

CODE_VERSION = code_version(shard_export)


def shard_dir(pairlake: PairlakeResource, export_id: str) -> Path:
    output = Path(pairlake.settings.shards.output)
    base = output if output.is_absolute() else Path(pairlake.lake.root) / output
    return base / export_id


@dg.asset(
    group_name="release",
    kinds={"webdataset", "delta"},
    deps=["kept_pairs"],
    code_version=CODE_VERSION,
    automation_condition=dg.AutomationCondition.eager(),
    description="webdataset shards of the kept set at a pinned Delta version (manifest in table shards).",
)
def training_shards(context: dg.AssetExecutionContext, pairlake: PairlakeResource) -> dg.MaterializeResult:
    lake = pairlake.lake
    source_version = lake.version(KEPT_PAIRS)
    if source_version is None:
        raise dg.Failure("kept_pairs has never been materialized: nothing to export")
    export_id = f"kept_pairs-v{source_version}"
    kept = lake.read(KEPT_PAIRS, version=source_version)
    images = lake.read(IMAGES, columns=["uid", "image"], filter=pc.field("uid").isin(kept.column("uid")))
    samples = kept.join(images, "uid", join_type="inner").sort_by("uid")
    out_dir = shard_dir(pairlake, export_id)
    context.log.info(f"exporting {samples.num_rows} samples of kept_pairs v{source_version} to {out_dir}")
    # Same kept_pairs version, same bytes: a re-run rewrites the export in place.
    shards = shard_export.export_shards(
        samples, out_dir, pairlake.settings.shards.samples_per_shard,
        image_ext=pairlake.settings.download.encode_format, overwrite=True,
    )
    manifest = shard_export.manifest_table(shards, export_id, source_version)
    lineage = pairlake.lineage(context, (KEPT_PAIRS, IMAGES), CODE_VERSION)
    version = lake.replace_partitions(SHARDS, manifest, [export_id], lineage)
    last = f"{len(shards) - 1:05d}" if shards else "00000"
    return dg.MaterializeResult(
        metadata={
            "export_id": export_id,
            "kept_pairs_version": source_version,
            "shards": len(shards),
            "samples": samples.num_rows,
            "bytes": sum(s.bytes for s in shards),
            "train_data": f"{out_dir}/{{00000..{last}}}.tar",
            "delta_version": version,
        }
    )
