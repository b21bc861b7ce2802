"""The curated set: kept, unblocked, deduplicated and tagged pairs, per safety variant."""

import dagster as dg

from gpu_jobs.clip_model import model_identity
from infra.tables import BLOCKLIST_MATCHES, DEDUP, IMAGE_TAGS, KEPT_PAIRS
from orchestration.resources import PairlakeResource, code_version
from spark_jobs import curation_job

CODE_VERSION = code_version("spark_jobs.curation_job")


@dg.asset(
    group_name="curation",
    kinds={"spark", "delta"},
    deps=["dedup", "image_tags", "blocklist_matches"],
    code_version=CODE_VERSION,
    automation_condition=dg.AutomationCondition.eager(),
    description="Kept, unblocked, deduplicated, tagged pairs per safety variant (table curated).",
)
def curated(context: dg.AssetExecutionContext, pairlake: PairlakeResource) -> dg.MaterializeResult:
    settings = pairlake.settings
    lineage = pairlake.lineage(context, (KEPT_PAIRS, DEDUP, IMAGE_TAGS, BLOCKLIST_MATCHES), CODE_VERSION)
    version, per_variant, dropped = curation_job.curate(
        pairlake.spark(), pairlake.lake, settings.curation, model_identity(settings.clip), lineage
    )
    return dg.MaterializeResult(
        metadata={
            "delta_version": version,
            **{f"variant_{name}": rows for name, rows in per_variant.items()},
            "dropped": dg.MetadataValue.json(dropped),
            "rules": dg.MetadataValue.json(
                {"clip_threshold": settings.clip_threshold(), "languages": list(settings.curation.languages) or "all",
                 "variants_max_punsafe": settings.curation.variants}
            ),
        }
    )


@dg.asset_check(asset=curated, description="No curated pair's image or URL digest is on a hash list (or under an opt-out URL rule).")
def no_blocklisted_hash(pairlake: PairlakeResource) -> dg.AssetCheckResult:
    found, shown = curation_job.curated_on_hash_lists(pairlake.spark(), pairlake.lake)
    return dg.AssetCheckResult(passed=found == 0,
                               metadata={"blocklisted": found, "blocklisted_uids": dg.MetadataValue.json(shown)})


@dg.asset_check(asset=curated, description="No uid appears twice within a variant.")
def unique_uid_per_variant(pairlake: PairlakeResource) -> dg.AssetCheckResult:
    repeated = curation_job.repeated_curated_uids(pairlake.spark(), pairlake.lake)
    return dg.AssetCheckResult(passed=repeated == 0, metadata={"repeated": repeated})


@dg.asset_check(asset=curated, description="Every curated pair has a stored CLIP embedding of the scoring model.")
def every_row_has_an_embedding(pairlake: PairlakeResource) -> dg.AssetCheckResult:
    missing = curation_job.curated_without_embedding(pairlake.spark(), pairlake.lake)
    return dg.AssetCheckResult(passed=missing == 0, metadata={"missing": missing})
