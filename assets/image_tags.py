"""Tags: safety and quality scores from the stored CLIP image embeddings, per WARC file."""

import dagster as dg

from gpu_jobs.clip_model import model_config, model_identity
from infra.tables import CLIP_SCORES
from orchestration.partitions import per_warc_file_asset
from orchestration.resources import PairlakeResource, code_version
from spark_jobs import image_tags_job

CODE_VERSION = code_version("gpu_jobs.embedding_heads", "gpu_jobs.tagging", "spark_jobs.image_tags_job")


@per_warc_file_asset(
    deps=["clip_scores"],
    kinds={"spark", "pytorch", "delta"},
    code_version=CODE_VERSION,
    description="punsafe, pwatermark, aesthetic and extra tags from stored CLIP embeddings (table image_tags), "
    "tagged by Spark tasks.",
)
def image_tags(context: dg.AssetExecutionContext, pairlake: PairlakeResource) -> dg.MaterializeResult:
    from gpu_jobs import tagging  # torch: imported by the step that needs it, not by the definitions

    settings, lake = pairlake.settings, pairlake.lake
    keys = list(context.partition_keys)
    lineage = pairlake.lineage(context, (CLIP_SCORES,), CODE_VERSION)
    with tagging.registered_heads(lake) as registered:
        scorers, identities = tagging.load_scorers(
            settings.tags, settings.clip, model_config(settings.clip.model)["embed_dim"], registered
        )
    version, tagged, means = image_tags_job.tag_partitions(
        pairlake.spark(), lake, keys, model_identity(settings.clip), scorers, identities, lineage
    )
    return dg.MaterializeResult(
        metadata={"delta_version": version, "tagged": tagged, "scorers": dg.MetadataValue.json(identities),
                  **{f"mean_{tag}": value for tag, value in means.items()}}
    )
