"""The release: a named, versioned export of a curated variant (webdataset shards + manifest), and
its Re-LAION-style re-releases after removals. Materializing it is "make the next release"."""

import dagster as dg

from pyspark.sql import functions as F

from gpu_jobs.clip_model import model_identity
from infra.spark import read_table
from infra.tables import BLOCKLIST, BLOCKLIST_MATCHES, CLIP_SCORES, CURATED, DEDUP, IMAGE_TAGS, IMAGES, KEPT_PAIRS, REMOVALS
from orchestration.optout_requests import removal_lease
from orchestration.resources import PairlakeResource, code_version
from spark_jobs import release as release_module
from spark_jobs.release import ReleaseNeedsConfirmation

CODE_VERSION = code_version("spark_jobs.release", "spark_jobs.shard_export", "spark_jobs.shard_export_job")
PINNED = (CURATED, KEPT_PAIRS, IMAGES, CLIP_SCORES, IMAGE_TAGS, DEDUP, BLOCKLIST, BLOCKLIST_MATCHES, REMOVALS)


class ReleaseRunConfig(dg.Config):
    # auto: a snapshot when samples were added, a re-release when they only left.
    # rerelease: the previous version minus what was removed or hash-listed since.
    mode: str = "auto"
    # Who confirmed a version that drops more than release.max_auto_drop_fraction (empty: refuse it).
    confirmed_by: str = ""


def release_rules(pairlake: PairlakeResource) -> dict:
    """What decided membership, recorded with every version."""
    settings, spark, lake = pairlake.settings, pairlake.spark(), pairlake.lake
    # Counted in Spark: hash lists run to millions of digests, and removals grow with every request.
    lists = {} if lake.version(BLOCKLIST) is None else {
        f"{row['source']}/{row['kind']}": {"digests": row["digests"], "list_date": str(row["list_date"])}
        for row in read_table(spark, lake, BLOCKLIST, columns=["source", "kind", "list_date"])
        .groupBy("source", "kind").agg(F.count("*").alias("digests"), F.min("list_date").alias("list_date")).collect()
    }
    removals = 0 if lake.version(REMOVALS) is None else read_table(spark, lake, REMOVALS, columns=["uid"]).count()
    return {
        "clip_model": model_identity(settings.clip),
        "clip_threshold": settings.clip_threshold(),
        "variant": settings.release.variant,
        "variant_max_punsafe": settings.curation.variants[settings.release.variant],
        "near_duplicate_threshold": settings.curation.near_duplicate_threshold,
        "languages": list(settings.curation.languages) or "all",
        "hash_lists": dict(sorted(lists.items())),
        "opt_outs_applied": removals,
    }


@dg.asset(
    group_name="release",
    kinds={"webdataset", "delta"},
    deps=["curated"],
    code_version=CODE_VERSION,
    automation_condition=dg.AutomationCondition.eager(),
    description="Versioned release of a curated variant: shards, per-shard parquet, manifest, diff (table releases).",
)
def release(context: dg.AssetExecutionContext, config: ReleaseRunConfig, pairlake: PairlakeResource) -> dg.MaterializeResult:
    lake, settings = pairlake.lake, pairlake.settings
    if lake.version(CURATED) is None:
        raise dg.Failure("curated has never been materialized: nothing to release")
    # Under the removal lease: a removal rewrites the shards on disk, so it must not run while a
    # version is being written from tables it is about to purge.
    with removal_lease(settings, f"release export (run {context.run.run_id})"):
        source_versions = {spec.name: v for spec in PINNED if (v := lake.version(spec)) is not None}
        try:
            made = release_module.make_release(
                pairlake.spark(), lake, settings.release, release_rules(pairlake), source_versions,
                pairlake.lineage(context, PINNED, CODE_VERSION), image_ext=settings.download.encode_format,
                mode=config.mode, confirmed_by=config.confirmed_by.strip() or None,
            )
        except ReleaseNeedsConfirmation as exc:
            raise dg.Failure(str(exc), metadata={"needs_confirmation": True}) from None
    last = release_module.latest(lake, settings.release.name)
    if made is None:
        context.log.info(f"{settings.release.name} v{last['version']} is current: nothing to release")
        return dg.MaterializeResult(metadata={"release": settings.release.name, "version": last["version"],
                                              "new_version": False, "samples": last["samples"]})
    context.log.info(f"{made.kind} {made.release} v{made.version}: {made.samples} samples in {made.shards} shards, "
                     f"{made.removed} removed / {made.added} added since the previous version")
    last_shard = f"{made.shards - 1:05d}" if made.shards else "00000"
    return dg.MaterializeResult(
        metadata={
            "release": made.release,
            "version": made.version,
            "new_version": True,
            "kind": made.kind,
            "samples": made.samples,
            "shards": made.shards,
            "removed_since_previous": made.removed,
            "added_since_previous": made.added,
            "source_versions": dg.MetadataValue.json(source_versions),
            "train_data": f"{made.path}/{{00000..{last_shard}}}.tar",
            "path": dg.MetadataValue.path(made.path),
        }
    )
