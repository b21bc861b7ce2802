"""Import a hash list into the lake and show the import on the `blocklist` asset in Dagster."""

from __future__ import annotations

import uuid
from datetime import date
from pathlib import Path

import dagster as dg

from infra.config import PairlakeConfig
from infra.delta_store import Lake, Lineage
from orchestration.resources import code_version
from orchestration.runner import ensure_dagster_home
from spark_jobs import blocklist


def import_hash_list(
    config: PairlakeConfig,
    path: Path,
    source: str,
    kind: str,
    list_date: date | None = None,
    instance: dg.DagsterInstance | None = None,
) -> tuple[int, int]:
    """Import ``path`` as ``source``'s ``kind`` list; returns (blocklist Delta version, digests)."""
    lineage = Lineage(run_id=f"import-{uuid.uuid4().hex[:12]}", asset_key="blocklist", partition_keys=(source,),
                      code_version=code_version("spark_jobs.blocklist"))
    version, imported = blocklist.import_blocklist(Lake.of(config.lake), path, source, kind, lineage, list_date)
    if instance is None:
        ensure_dagster_home()
        instance = dg.DagsterInstance.get()
    # Imports happen outside runs; a runless materialization puts each on the asset's timeline.
    instance.report_runless_asset_event(
        dg.AssetMaterialization(
            "blocklist",
            metadata={"source": source, "kind": kind, "digests": imported, "delta_version": version, "file": str(path)},
        )
    )
    return version, imported
