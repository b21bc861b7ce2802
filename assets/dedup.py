"""Dedup: one pair per image (sha256), then near-duplicate clusters over the CLIP embeddings."""

import dagster as dg

from infra.tables import BLOCKLIST_MATCHES, CANDIDATES, CLIP_SCORES, KEPT_PAIRS
from orchestration.resources import PairlakeResource, code_version
from spark_jobs import curation_job

CODE_VERSION = code_version("gpu_jobs.near_duplicates", "spark_jobs.near_duplicates_job", "spark_jobs.curation_job")


@dg.asset(
    group_name="curation",
    kinds={"spark", "faiss", "delta"},
    deps=["kept_pairs", "clip_scores", "blocklist_matches"],
    code_version=CODE_VERSION,
    automation_condition=dg.AutomationCondition.eager(),
    description="Exact (sha256) and near-duplicate (CLIP cosine) clusters of the kept pairs (table dedup).",
)
def dedup(context: dg.AssetExecutionContext, pairlake: PairlakeResource) -> dg.MaterializeResult:
    config = pairlake.settings.curation
    lineage = pairlake.lineage(context, (KEPT_PAIRS, CANDIDATES, CLIP_SCORES, BLOCKLIST_MATCHES), CODE_VERSION)
    version, reasons = curation_job.deduplicate(pairlake.spark(), pairlake.lake, config, lineage, progress=True)
    return dg.MaterializeResult(
        metadata={
            "delta_version": version,
            "pairs": sum(reasons.values()),
            **{f"dedup_{reason}": count for reason, count in reasons.items()},
            "near_duplicate_threshold": config.near_duplicate_threshold,
        }
    )
