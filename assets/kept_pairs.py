"""The kept set: pairs above the configured CLIP threshold for the scoring model."""

import dagster as dg

from infra.tables import CANDIDATES, CLIP_SCORES, IMAGES
from orchestration.partitions import per_warc_file_asset
from orchestration.resources import PairlakeResource, code_version
from spark_jobs import kept_set

CODE_VERSION = code_version("spark_jobs.kept_set", "spark_jobs.caption_language")


@per_warc_file_asset(
    deps=["clip_scores"],
    kinds={"spark", "delta"},
    code_version=CODE_VERSION,
    description="Pairs whose CLIP similarity clears the model's threshold, with their caption's language (table kept_pairs).",
)
def kept_pairs(context: dg.AssetExecutionContext, pairlake: PairlakeResource) -> dg.MaterializeResult:
    keys = list(context.partition_keys)
    lineage = pairlake.lineage(context, (CANDIDATES, IMAGES, CLIP_SCORES), CODE_VERSION)
    threshold = pairlake.settings.clip_threshold()
    version, counts = kept_set.write_kept(pairlake.spark(), pairlake.lake, keys, threshold, lineage)
    pairlake.record_stats("kept_pairs", {key: {"kept": kept} for key, kept in counts.items()}, lineage)
    return dg.MaterializeResult(metadata={"delta_version": version, "kept": sum(counts.values()), "threshold": threshold})
