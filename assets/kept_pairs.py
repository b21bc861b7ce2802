"""The kept set: pairs above the configured CLIP threshold for the scoring model."""

import dagster as dg

from infra.tables import CANDIDATES, CLIP_SCORES, IMAGES, KEPT_PAIRS
from orchestration.partitions import per_warc_file_asset
from orchestration.resources import PairlakeResource, code_version
from spark_jobs import kept_set

CODE_VERSION = code_version(kept_set)
_IMAGE_COLUMNS = ["uid", "status", "width", "height", "original_width", "original_height", "sha256", "sha1", "md5"]


@per_warc_file_asset(
    deps=["clip_scores"],
    kinds={"delta"},
    code_version=CODE_VERSION,
    description="Pairs whose CLIP similarity clears the model's threshold (table kept_pairs).",
)
def kept_pairs(context: dg.AssetExecutionContext, pairlake: PairlakeResource) -> dg.MaterializeResult:
    settings, lake = pairlake.settings, pairlake.lake
    keys = list(context.partition_keys)
    lineage = pairlake.lineage(context, (CANDIDATES, IMAGES, CLIP_SCORES), CODE_VERSION)
    threshold = settings.clip_threshold()
    kept = kept_set.select_kept(
        lake.read(CANDIDATES, partitions=keys),
        lake.read(IMAGES, columns=_IMAGE_COLUMNS + ["warc_file"], partitions=keys),
        lake.read(CLIP_SCORES, columns=["uid", "similarity", "model_id", "warc_file"], partitions=keys),
        threshold,
    )
    version = lake.replace_partitions(KEPT_PAIRS, kept, keys, lineage)
    counts = {k: {"kept": 0} for k in keys}
    for name in kept.column("warc_file").to_pylist():
        counts[name]["kept"] += 1
    pairlake.record_stats("kept_pairs", counts, lineage)
    return dg.MaterializeResult(metadata={"delta_version": version, "kept": kept.num_rows, "threshold": threshold})
