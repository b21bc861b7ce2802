"""Compaction: rewrite a table's small files into files of about ``lake.compact_target_mb``.

Every Spark commit writes at most one file per task and partition, and every run of a stage
commits, so a partition of a busy table collects many small files; each costs a read task its
open cost and the Delta log an entry. ``compact`` bin-packs each partition's files with delta-rs's
OPTIMIZE (row groups and statistics as the table's writer makes them), in one commit per table
that carries the caller's lineage and changes no row. Old files stay for time travel until
``pairlake vacuum``. Callers hold the removal lease, so a compaction never races a purge.
"""

from __future__ import annotations

from dataclasses import dataclass

from infra.delta_store import Lake, Lineage, row_groups_for
from infra.tables import TableSpec


@dataclass(frozen=True)
class Compaction:
    table: str
    files_before: int
    files_after: int
    version: int | None  # the OPTIMIZE commit; None when nothing needed rewriting


def compact(lake: Lake, spec: TableSpec, target_mb: int, lineage: Lineage) -> Compaction:
    """Bin-pack ``spec``'s files partition by partition into files of about ``target_mb``."""
    table = lake.table(spec)
    if table is None:
        return Compaction(spec.name, 0, 0, None)
    before = len(table.file_uris())
    metrics = table.optimize.compact(
        target_size=target_mb * 2**20,
        writer_properties=row_groups_for(spec),
        commit_properties=lake.commit_properties(lineage),
    )
    rewritten = metrics.get("numFilesRemoved", 0) > 0
    return Compaction(spec.name, before, before - metrics.get("numFilesRemoved", 0) + metrics.get("numFilesAdded", 0),
                      lake.version(spec) if rewritten else None)
