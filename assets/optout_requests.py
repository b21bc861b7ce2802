"""Opt-out removal: one run per request file, launched by the inbox sensor."""

from pathlib import Path

import dagster as dg

from infra import purge
from orchestration import optout_requests as request_handling
from orchestration.resources import PairlakeResource, code_version
from spark_jobs import optout, release

CODE_VERSION = code_version(request_handling, optout, purge, release)


class OptOutRunConfig(dg.Config):
    request_file: str  # a .json file in the inbox


@dg.asset(
    group_name="removal",
    kinds={"delta"},
    code_version=CODE_VERSION,
    description="Opt-out requests applied to every table, index and shard (table optout_requests).",
)
def optout_requests(
    context: dg.AssetExecutionContext, config: OptOutRunConfig, pairlake: PairlakeResource
) -> dg.MaterializeResult:
    path = Path(config.request_file)
    if not path.exists():
        raise dg.Failure(f"request file {path} is gone (applied by an earlier run, or moved)")
    lineage = pairlake.lineage(context, (), CODE_VERSION)
    outcome = request_handling.apply_request_file(pairlake.settings, path, lineage)
    # Each purged table gets an observation: the UI shows the removal on that table's timeline.
    for result in outcome.purges:
        context.log_event(dg.AssetObservation(
            result.table,  # sample tables are written by the asset of the same name
            metadata={"request_id": outcome.request_id, "rows_deleted": result.rows_deleted,
                      "delta_version": result.version, "files_vacuumed": result.files_vacuumed,
                      "log_entries_removed": result.log_entries_removed},
        ))
    if outcome.status == "rejected":
        context.log.warning(f"request {outcome.request_id} rejected: {outcome.rejection}")
    return dg.MaterializeResult(
        metadata={
            "request_id": outcome.request_id,
            "status": outcome.status,
            "rejection": outcome.rejection,
            "uids_removed": outcome.matched,
            "rows_deleted": dg.MetadataValue.json(outcome.rows_deleted),
            "index_vectors_removed": dg.MetadataValue.json(outcome.index_vectors_removed),
            "shards_rewritten": dg.MetadataValue.json(outcome.shards_rewritten),
            "seconds": dg.MetadataValue.json(outcome.seconds),
            "delta_version": pairlake.lake.version("optout_requests"),
        }
    )
