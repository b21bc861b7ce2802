"""CLIP scores: embeddings and image–text cosine for every downloaded image, per model."""

import dagster as dg

from gpu_jobs.clip_model import model_identity
from infra.tables import CANDIDATES, IMAGES
from orchestration.partitions import per_warc_file_asset
from orchestration.resources import PairlakeResource, code_version, summed
from spark_jobs import clip_scores_job

CODE_VERSION = code_version("gpu_jobs.clip_model", "gpu_jobs.clip_scoring", "gpu_jobs.embedding_format",
                            "spark_jobs.clip_scores_job")


@per_warc_file_asset(
    deps=["images"],
    kinds={"spark", "pytorch", "delta"},
    code_version=CODE_VERSION,
    description="L2-normalised CLIP image/text embeddings (float16) and their cosine (table clip_scores), "
    "scored by Spark tasks on the GPUs Spark assigns them, or on CPU.",
)
def clip_scores(context: dg.AssetExecutionContext, pairlake: PairlakeResource) -> dg.MaterializeResult:
    settings, lake = pairlake.settings, pairlake.lake
    keys = list(context.partition_keys)
    lineage = pairlake.lineage(context, (CANDIDATES, IMAGES), CODE_VERSION)
    threshold = settings.clip_threshold()
    context.log.info(f"scoring the images of {len(keys)} WARC files with {model_identity(settings.clip)} on Spark")
    outcome = clip_scores_job.score_partitions(pairlake.spark(), lake, keys, settings.clip, lineage, threshold)
    pairlake.record_stats("clip_scores", outcome.counts, lineage)
    totals = summed(outcome.counts)
    return dg.MaterializeResult(
        metadata={
            "delta_version": outcome.version,
            "model_id": model_identity(settings.clip),
            "scored": totals.get("scored", 0),
            "threshold": threshold,
            "above_threshold": totals.get("above_threshold", 0),
            "mean_similarity": round(outcome.mean_similarity, 4),
            "devices": dg.MetadataValue.json(outcome.devices),
            "worker_peak_rss_mb": outcome.worker_peak_rss_mb,
        }
    )
