"""CLIP scores: embeddings and image–text cosine for every downloaded image, per model."""

import dagster as dg
import pyarrow.compute as pc

from gpu_jobs import clip_model, clip_scoring
from infra.tables import CANDIDATES, CLIP_SCORES, IMAGES
from orchestration.partitions import per_warc_file_asset
from orchestration.resources import PairlakeResource, code_version

CODE_VERSION = code_version(clip_model, clip_scoring)


@per_warc_file_asset(
    deps=["images"],
    kinds={"pytorch", "delta"},
    code_version=CODE_VERSION,
    description="L2-normalised CLIP image/text embeddings (float16) and their cosine (table clip_scores).",
)
def clip_scores(context: dg.AssetExecutionContext, pairlake: PairlakeResource) -> dg.MaterializeResult:
    settings, lake = pairlake.settings, pairlake.lake
    keys = list(context.partition_keys)
    lineage = pairlake.lineage(context, (CANDIDATES, IMAGES), CODE_VERSION)
    clip = clip_model.load_clip(settings.clip)
    images = lake.read(IMAGES, partitions=keys, filter=pc.field("status") == "ok")
    captions = lake.read(CANDIDATES, columns=["uid", "caption"], partitions=keys)
    context.log.info(f"scoring {images.num_rows} images with {clip.model_id}")
    scores = clip_scoring.score_images(
        images, captions, clip, settings.clip.batch_size, settings.clip.workers, progress=True
    )
    version = lake.replace_partitions(CLIP_SCORES, scores, keys, lineage)
    threshold = settings.clip_threshold()
    counts = {k: {"scored": 0, "above_threshold": 0} for k in keys}
    above = clip_scoring.kept_mask(scores["similarity"], threshold)
    for name, kept in zip(scores.column("warc_file").to_pylist(), above):
        counts[name]["scored"] += 1
        counts[name]["above_threshold"] += int(kept)
    pairlake.record_stats("clip_scores", counts, lineage)
    sims = scores.column("similarity")
    return dg.MaterializeResult(
        metadata={
            "delta_version": version,
            "model_id": clip.model_id,
            "scored": scores.num_rows,
            "threshold": threshold,
            "above_threshold": sum(c["above_threshold"] for c in counts.values()),
            "mean_similarity": float(pc.mean(sims).as_py() or 0.0) if scores.num_rows else 0.0,
        }
    )
