"""The kNN index: faiss over the curated variant's CLIP image (and caption) embeddings, with its manifest."""

import dagster as dg

from gpu_jobs import knn_index as knn
from gpu_jobs.clip_model import model_identity
from infra.tables import CLIP_SCORES, CURATED
from orchestration.optout_requests import removal_lease
from orchestration.resources import PairlakeResource, code_version
from spark_jobs import knn_index_job

CODE_VERSION = code_version("gpu_jobs.knn_index", "spark_jobs.knn_index_job")


@dg.asset(
    group_name="curation",
    kinds={"spark", "faiss"},
    deps=["curated"],
    code_version=CODE_VERSION,
    automation_condition=dg.AutomationCondition.eager(),
    description="faiss indexes over the curated variant's image and caption embeddings; recall@10 in its manifest.",
)
def knn_index(context: dg.AssetExecutionContext, pairlake: PairlakeResource) -> dg.MaterializeResult:
    settings = pairlake.settings
    # Under the removal lease: a removal that lands mid-build would miss this index (not yet
    # published) while the build still holds the removed vectors.
    with removal_lease(settings, f"knn_index build (run {context.run.run_id})"):
        lineage = pairlake.lineage(context, (CURATED, CLIP_SCORES), CODE_VERSION)
        manifest = knn_index_job.build_variant_index(
            pairlake.spark(), pairlake.lake, settings.index, model_identity(settings.clip), lineage, progress=True
        )
    context.log.info(f"index {manifest['factory']} over {manifest['vectors']} vectors: recall@10 {manifest['recall_at_10']}")
    folder = knn.index_folder(pairlake.lake, settings.index.variant)
    return dg.MaterializeResult(
        metadata={
            "vectors": manifest["vectors"],
            "factory": manifest["factory"],
            "recall_at_10": manifest["recall_at_10"],
            # the caption embeddings' index (modality "text"), when index.text_index is on
            **({"text_recall_at_10": manifest["text_recall_at_10"]} if "text_recall_at_10" in manifest else {}),
            "curated_version": manifest["source_version"],
            "plan": manifest["plan_reason"],
            "shards": len(manifest["shards"]),
            # "bucket/prefix/..." in a bucket: not a path on any machine
            "path": dg.MetadataValue.path(folder.path) if folder.is_local else dg.MetadataValue.text(folder.path),
        }
    )
