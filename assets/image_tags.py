"""Tags: safety and quality scores from the stored CLIP image embeddings, per WARC file."""

import dagster as dg
import pyarrow.compute as pc

from gpu_jobs import embedding_heads, tagging
from gpu_jobs.clip_model import model_config, model_identity
from infra.tables import CLIP_SCORES, IMAGE_TAGS
from orchestration.partitions import per_warc_file_asset
from orchestration.resources import PairlakeResource, code_version

CODE_VERSION = code_version(embedding_heads, tagging)


@per_warc_file_asset(
    deps=["clip_scores"],
    kinds={"pytorch", "delta"},
    code_version=CODE_VERSION,
    description="punsafe, pwatermark, aesthetic and extra tags from stored CLIP embeddings (table image_tags).",
)
def image_tags(context: dg.AssetExecutionContext, pairlake: PairlakeResource) -> dg.MaterializeResult:
    settings, lake = pairlake.settings, pairlake.lake
    keys = list(context.partition_keys)
    lineage = pairlake.lineage(context, (CLIP_SCORES,), CODE_VERSION)
    model_id = model_identity(settings.clip)
    scores = lake.read(
        CLIP_SCORES, columns=["uid", "warc_file", "model_id", "embedding_dim", "image_embedding"],
        partitions=keys, filter=pc.field("model_id") == model_id,
    )
    scorers, identities = tagging.load_scorers(
        settings.tags, settings.clip, model_config(settings.clip.model)["embed_dim"], tagging.heads_dir(lake.root)
    )
    tags = tagging.tag_embeddings(scores, scorers, identities)
    version = lake.replace_partitions(IMAGE_TAGS, tags, keys, lineage)
    means = {f"mean_{n}": round(float(pc.mean(tags[n]).as_py() or 0.0), 4) for n in tagging.STANDARD_TAGS if tags.num_rows}
    return dg.MaterializeResult(
        metadata={"delta_version": version, "tagged": tags.num_rows, "scorers": dg.MetadataValue.json(identities), **means}
    )
