"""Candidate pairs (Spark): (image URL, alt text) pairs from the WARC files of the run's partitions."""

import dagster as dg
import pyarrow.compute as pc

from infra.crawl_source import WarcFile
from infra.tables import WARC_FILES
from orchestration.partitions import per_warc_file_asset
from orchestration.resources import PairlakeResource, code_version, summed
from spark_jobs import candidates_job

CODE_VERSION = code_version(
    "spark_jobs.warc_input", "spark_jobs.warc_reader", "spark_jobs.http_response", "spark_jobs.page_charset",
    "spark_jobs.html_nesting", "spark_jobs.html_images", "spark_jobs.warc_pairs",
    "spark_jobs.candidates_job",
)


@per_warc_file_asset(
    deps=["warc_files"],
    kinds={"spark", "delta"},
    code_version=CODE_VERSION,
    description="Pairs from <img alt> in HTML responses, unique by uid (table candidates; rejects in warc_rejects).",
)
def candidates(context: dg.AssetExecutionContext, pairlake: PairlakeResource) -> dg.MaterializeResult:
    settings, lake = pairlake.settings, pairlake.lake
    keys = list(context.partition_keys)
    registry = lake.read(WARC_FILES, filter=pc.field("warc_file").isin(keys))
    files = [WarcFile(r["warc_file"], r["uri"], r["size_bytes"]) for r in registry.to_pylist()]
    unknown = set(keys) - {f.warc_file for f in files}
    if unknown:
        raise dg.Failure(f"WARC files not in the registry (materialize warc_files first): {sorted(unknown)}")
    lineage = pairlake.lineage(context, (WARC_FILES,), CODE_VERSION)
    context.log.info(f"extracting pairs from {len(files)} WARC files")
    outcome = candidates_job.build_candidates(
        pairlake.spark(), lake, files, settings.crawl.crawl_id, settings.extract, lineage, settings.crawl.storage_options
    )
    if outcome.counts:
        pairlake.record_stats("candidates", outcome.counts, lineage)
    totals = summed(outcome.counts)
    metadata = {
        "delta_version": outcome.version,
        "partitions": len(keys),
        "candidates": totals.get("candidates", 0),
        "rejected_records": outcome.rejects.num_rows,
        "counts": dg.MetadataValue.json(totals),
    }
    if outcome.failed:
        # Raised after the other files' partitions were committed: the run fails, naming the files,
        # and re-running it reads them again (their partitions were left as stored).
        lines = [f"{name}: {reason}" for name, reason in sorted(outcome.failed.items())]
        raise dg.Failure(
            f"{len(lines)} of {len(keys)} WARC files could not be read; the other partitions were committed:\n"
            + "\n".join(lines),
            metadata={**metadata, "failed_files": dg.MetadataValue.json(dict(sorted(outcome.failed.items())))},
        )
    return dg.MaterializeResult(metadata=metadata)
