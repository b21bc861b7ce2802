"""Hash-list blocklists: imported with `pairlake blocklist import`, matched against stored digests."""

import dagster as dg

from infra.tables import BLOCKLIST, CANDIDATES, IMAGES
from orchestration.resources import PairlakeResource, code_version
from spark_jobs import curation_job

CODE_VERSION = code_version("spark_jobs.blocklist", "spark_jobs.curation_job")

# Written outside Dagster runs (the import command reports each import as a materialization).
blocklist = dg.AssetSpec(
    "blocklist",
    group_name="curation",
    kinds={"delta"},
    description="Imported hash lists: MD5/SHA1/SHA256 of image bytes or of URLs, per source (table blocklist).",
)


@dg.asset(
    group_name="curation",
    kinds={"spark", "delta"},
    deps=["blocklist", "images"],
    code_version=CODE_VERSION,
    automation_condition=dg.AutomationCondition.eager(),
    description="Pairs whose image or URL digest is on a hash list, per list (table blocklist_matches).",
)
def blocklist_matches(context: dg.AssetExecutionContext, pairlake: PairlakeResource) -> dg.MaterializeResult:
    lineage = pairlake.lineage(context, (BLOCKLIST, CANDIDATES, IMAGES), CODE_VERSION)
    version, per_list = curation_job.match_blocklists(pairlake.spark(), pairlake.lake, lineage)
    return dg.MaterializeResult(
        metadata={
            "delta_version": version,
            "matches": sum(per_list.values()),
            "matches_per_list": dg.MetadataValue.json(per_list),
        }
    )
