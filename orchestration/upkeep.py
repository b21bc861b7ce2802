"""Lake upkeep: compaction of every table's small files, from the CLI (`pairlake optimize`) or the
``optimize_lake`` job (weekly schedule in orchestration/schedules.py)."""

from collections.abc import Callable, Iterable

import dagster as dg

from infra.compaction import Compaction, compact
from infra.config import PairlakeConfig
from infra.delta_store import Lake, Lineage
from infra.tables import ALL_TABLES, table_spec
from orchestration.optout_requests import removal_lease
from orchestration.resources import PairlakeResource


def optimize_lake(config: PairlakeConfig, lineage: Lineage, tables: Iterable[str] = (),
                  report: Callable[[Compaction], None] = lambda _: None) -> list[Compaction]:
    """Compact ``tables`` (every table when none is named), each in one commit, under the removal
    lease so that no purge runs meanwhile; ``report`` hears of each table as it is done."""
    specs = [table_spec(name) for name in tables] or list(ALL_TABLES.values())
    lake = Lake.of(config.lake)
    done = []
    with removal_lease(config, f"compaction ({lineage.run_id})"):
        for spec in specs:
            done.append(compact(lake, spec, config.lake.compact_target_mb, lineage))
            report(done[-1])
    return done


@dg.op(description="Compact every table's small files (as `pairlake optimize`), under the removal lease.")
def compact_tables(context: dg.OpExecutionContext, pairlake: PairlakeResource) -> dg.Output[int]:
    def report(done: Compaction) -> None:
        context.log.info(f"{done.table}: {done.files_before} files -> {done.files_after}")

    done = optimize_lake(pairlake.settings, Lineage(run_id=context.run_id), report=report)
    return dg.Output(
        sum(d.files_before - d.files_after for d in done),
        metadata={
            "files_removed": sum(d.files_before - d.files_after for d in done),
            "tables_compacted": [d.table for d in done if d.version is not None],
            "files_per_table": dg.MetadataValue.json({d.table: [d.files_before, d.files_after] for d in done}),
        },
    )


@dg.job(name="optimize_lake", description="Compact the lake's small files: one OPTIMIZE commit per table, no row changes.")
def optimize_lake_job() -> None:
    compact_tables()
