"""The funnel report: counts per stage and an HTML page with plots, refreshed after each export."""

import dagster as dg

from orchestration import report
from orchestration.resources import PairlakeResource, code_version

CODE_VERSION = code_version("orchestration.report")


@dg.asset(
    group_name="release",
    kinds={"html"},
    deps=["release"],
    code_version=CODE_VERSION,
    automation_condition=dg.AutomationCondition.eager(),
    description="Funnel table and HTML report (funnel, CLIP similarity histogram, failure reasons).",
)
def funnel_report(context: dg.AssetExecutionContext, pairlake: PairlakeResource) -> dg.MaterializeResult:
    funnel = report.build_funnel(pairlake.lake, pairlake.settings.clip_threshold())
    location = report.write_report(funnel, pairlake.lake)
    context.log.info("\n" + funnel.table())
    return dg.MaterializeResult(
        metadata={
            **{name: count for name, count in funnel.steps},
            "funnel": dg.MetadataValue.md(f"```\n{funnel.table()}\n```"),
            "report": dg.MetadataValue.path(location),
        }
    )
