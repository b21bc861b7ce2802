"""Crawl source → WARC registry: discovers WARC files and adds each as a partition."""

from datetime import datetime, timezone

import dagster as dg
import pyarrow as pa

from infra import crawl_source
from infra.tables import WARC_FILES
from orchestration.partitions import warc_partitions
from orchestration.resources import PairlakeResource, code_version


def register_warc_files(pairlake: PairlakeResource, instance: dg.DagsterInstance, lineage) -> tuple[list[str], int]:
    """Record every WARC file of the crawl source and add new ones as partitions; returns (new, version)."""
    settings, lake = pairlake.settings, pairlake.lake
    found = crawl_source.list_warc_files(settings.crawl)
    known = lake.read(WARC_FILES)
    known_names = set(known.column("warc_file").to_pylist())
    now = datetime.now(timezone.utc)
    new = [f for f in found if f.warc_file not in known_names]
    if new:
        rows = pa.Table.from_pylist(
            [
                {"warc_file": f.warc_file, "crawl_id": settings.crawl.crawl_id, "uri": f.uri,
                 "size_bytes": f.size_bytes, "discovered_at": now}
                for f in new
            ],
            schema=WARC_FILES.schema,
        )
        lake.append(WARC_FILES, rows, lineage)
    missing = sorted({f.warc_file for f in found} - set(instance.get_dynamic_partitions(warc_partitions.name)))
    if missing:
        instance.add_dynamic_partitions(warc_partitions.name, missing)
    return [f.warc_file for f in new], lake.version(WARC_FILES) or 0


@dg.asset(
    group_name="ingest",
    kinds={"delta"},
    code_version=code_version("infra.crawl_source"),
    description="Registry of the crawl's WARC files (table warc_files); each file becomes a partition.",
)
def warc_files(context: dg.AssetExecutionContext, pairlake: PairlakeResource) -> dg.MaterializeResult:
    new, version = register_warc_files(pairlake, context.instance, pairlake.lineage(context))
    total = pairlake.lake.read(WARC_FILES, columns=["warc_file"]).num_rows
    context.log.info(f"{len(new)} new WARC files, {total} known")
    return dg.MaterializeResult(
        metadata={"new_files": len(new), "known_files": total, "delta_version": version,
                  "new": dg.MetadataValue.md("\n".join(f"- {n}" for n in new[:50]) or "none")}
    )
