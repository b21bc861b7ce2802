"""The curated set: kept, unblocked, deduplicated and tagged pairs, per safety variant."""

import hashlib

import dagster as dg
import pyarrow.compute as pc

from gpu_jobs.clip_model import model_identity
from infra.tables import BLOCKLIST, BLOCKLIST_MATCHES, CLIP_SCORES, CURATED, DEDUP, IMAGE_TAGS, KEPT_PAIRS
from orchestration.resources import PairlakeResource, code_version
from spark_jobs import curation_job
from spark_jobs.blocklist import KINDS

CODE_VERSION = code_version(curation_job)


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


@dg.asset_check(asset=curated, description="No curated pair's image or URL digest is on a hash list.")
def no_blocklisted_hash(pairlake: PairlakeResource) -> dg.AssetCheckResult:
    rows = pairlake.lake.read(CURATED)
    listed = pairlake.lake.read(BLOCKLIST, columns=["kind", "digest"])
    digests = {(k, d) for k, d in zip(listed["kind"].to_pylist(), listed["digest"].to_pylist())}
    found = []
    for row in rows.select(["uid", "url", "md5", "sha1", "sha256"]).to_pylist():
        for kind in KINDS.values():
            value = row[kind.algorithm] if kind.target == "image" else hashlib.new(kind.algorithm, row["url"].encode()).hexdigest()
            if (kind.name, value) in digests:
                found.append(row["uid"])
    return dg.AssetCheckResult(passed=not found, metadata={"blocklisted_uids": dg.MetadataValue.json(sorted(set(found))[:20])})


@dg.asset_check(asset=curated, description="No uid appears twice within a variant.")
def unique_uid_per_variant(pairlake: PairlakeResource) -> dg.AssetCheckResult:
    rows = pairlake.lake.read(CURATED)
    counts = rows.group_by(["variant", "uid"]).aggregate([("uid", "count")])
    repeated = counts.filter(pc.greater(counts["uid_count"], 1))
    return dg.AssetCheckResult(passed=repeated.num_rows == 0, metadata={"repeated": repeated.num_rows})


@dg.asset_check(asset=curated, description="Every curated pair has a stored CLIP embedding of the scoring model.")
def every_row_has_an_embedding(pairlake: PairlakeResource) -> dg.AssetCheckResult:
    rows = pairlake.lake.read(CURATED)
    scores = pairlake.lake.read(CLIP_SCORES, columns=["uid", "model_id", "embedding_dim"])
    scores = scores.filter(pc.greater(scores["embedding_dim"], 0))
    have = set(zip(scores["uid"].to_pylist(), scores["model_id"].to_pylist()))
    missing = [u for u, m in zip(rows["uid"].to_pylist(), rows["model_id"].to_pylist()) if (u, m) not in have]
    return dg.AssetCheckResult(passed=not missing, metadata={"missing": len(missing)})
