"""Opt-out removal: one run per request file, launched by the inbox sensor."""

import dagster as dg

from orchestration import optout_requests as request_handling
from orchestration.resources import PairlakeResource, code_version
from spark_jobs import optout

CODE_VERSION = code_version("orchestration.optout_requests", "spark_jobs.optout", "infra.purge", "spark_jobs.release")


class OptOutRunConfig(dg.Config):
    request_file: str  # the name of a .json file in the inbox (with confirm: among the held requests)
    confirm: bool = False  # apply a held (over-broad) request: a person looked at its preview
    confirmed_by: str = ""  # who confirmed it (required with confirm)


@dg.asset(
    group_name="removal",
    kinds={"delta"},
    code_version=CODE_VERSION,
    description="Opt-out requests applied to every table, index and shard (table optout_requests).",
)
def optout_requests(
    context: dg.AssetExecutionContext, config: OptOutRunConfig, pairlake: PairlakeResource
) -> dg.MaterializeResult:
    if config.confirm and not config.confirmed_by.strip():
        raise dg.Failure("confirm needs confirmed_by: who looked at the preview and confirmed it")
    try:
        folder = request_handling.request_folder(pairlake.settings, config.request_file, config.confirm)
    except optout.RequestError as exc:
        raise dg.Failure(str(exc)) from None
    if not folder.exists(config.request_file):
        where = "held requests" if config.confirm else "inbox"
        raise dg.Failure(f"request file {config.request_file} is not among the {where} (applied by an earlier run, "
                         "or moved)")
    lineage = pairlake.lineage(context, (), CODE_VERSION)
    outcome = request_handling.apply_request_file(pairlake.settings, folder, config.request_file, lineage,
                                                  config.confirmed_by.strip() if config.confirm else None)
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
    if outcome.status == "needs_confirmation":
        context.log.warning(f"request {outcome.request_id} held: {outcome.hold_reason}; see `pairlake optout preview "
                            f"{outcome.request_id}`, then `pairlake optout confirm {outcome.request_id} --by WHO`")
    return dg.MaterializeResult(
        metadata={
            "request_id": outcome.request_id,
            "status": outcome.status,
            "rejection": outcome.rejection,
            "hold_reason": outcome.hold_reason,
            "preview": dg.MetadataValue.json(outcome.preview),
            "uids_removed": outcome.matched,
            "rows_deleted": dg.MetadataValue.json(outcome.rows_deleted),
            "index_vectors_removed": dg.MetadataValue.json(outcome.index_vectors_removed),
            "shards_rewritten": dg.MetadataValue.json(outcome.shards_rewritten),
            "seconds": dg.MetadataValue.json(outcome.seconds),
            "delta_version": pairlake.lake.version("optout_requests"),
        }
    )
