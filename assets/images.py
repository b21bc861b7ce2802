"""Images (download): one row per candidate, the resized image or the reason it failed."""

import dagster as dg

from infra.tables import BLOCKLIST, CANDIDATES, IMAGES
from orchestration.partitions import per_warc_file_asset
from orchestration.resources import PairlakeResource, code_version, summed
from spark_jobs import images_job

CODE_VERSION = code_version(
    "spark_jobs.download.address_guard", "spark_jobs.download.robots", "spark_jobs.download.origin_policies",
    "spark_jobs.download.tdmrep", "spark_jobs.download.hosts", "spark_jobs.download.decode_budget",
    "spark_jobs.download.fetcher", "spark_jobs.download.resizer", "spark_jobs.download.downloader",
    "spark_jobs.blocklist", "spark_jobs.images_job",
)


@per_warc_file_asset(
    deps=["candidates", "blocklist"],
    kinds={"spark", "delta"},
    code_version=CODE_VERSION,
    description="Downloaded, validated and resized images, or a failure reason, per candidate (table images).",
)
def images(context: dg.AssetExecutionContext, pairlake: PairlakeResource) -> dg.MaterializeResult:
    keys = list(context.partition_keys)
    lineage = pairlake.lineage(context, (CANDIDATES, BLOCKLIST, IMAGES), CODE_VERSION)
    version, counts = images_job.download_images(pairlake.spark(), pairlake.lake, keys, pairlake.settings.download, lineage)
    pairlake.record_stats("images", counts, lineage)
    totals = summed(counts)
    failures = {k.removeprefix("failed_"): v for k, v in totals.items() if k.startswith("failed_")}
    return dg.MaterializeResult(
        metadata={
            "delta_version": version,
            "images_ok": totals.get("images_ok", 0),
            "images_failed": totals.get("images_failed", 0),
            "failure_reasons": dg.MetadataValue.json(failures),
        }
    )
