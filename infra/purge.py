"""Physical removal from Delta tables: delete rows, then make the bytes unreachable and gone.

A Delta delete only writes a new version; the old Parquet files (and, in the log, the add actions
whose column statistics can quote a removed URL) stay for time travel. ``purge_history`` removes
them: it vacuums every file the current version does not reference, writes a checkpoint of the
current version and deletes every log entry before it. The table then starts at that checkpoint:
time travel to any earlier version is gone, which is what a removal must mean.

Ordinary history is kept for ``lake.history_retention_hours`` (``vacuum_history``, run by
``pairlake vacuum``); only removals call ``purge_history``, which keeps nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from infra import lake_layout
from infra.delta_store import Lake, Lineage
from infra.tables import TableSpec

_LOG_ENTRY = re.compile(r"^(\d{20})\.(json|crc|checkpoint\.parquet|checkpoint\.\d+\.\d+\.parquet)$")


@dataclass(frozen=True)
class PurgeResult:
    table: str
    rows_deleted: int
    version: int | None  # the table's version after the purge
    files_vacuumed: int
    log_entries_removed: int


def delete_uids(lake: Lake, spec: TableSpec, uids: Sequence[str], lineage: Lineage,
                partitions: Sequence[str] = ()) -> int:
    """Delete every row of ``spec`` whose uid is in ``uids``, in one commit; returns rows deleted.

    The partitions holding them (an unpartitioned table: all of it) are rewritten through the
    ordinary writer, streamed batch by batch so memory stays flat however many partitions a
    request touches. (delta-rs's own DELETE writes string_view Parquet that pyarrow then cannot
    filter on, and overflows the stack on large IN lists.) ``partitions`` (values of the first
    partition column) narrows the search for them.
    """
    if lake.table(spec) is None or not uids:
        return 0
    wanted = pa.array(sorted(set(uids)), pa.string())
    matching = pc.field("uid").isin(wanted)
    touched: list[str] = []
    if spec.partition_by:
        column = spec.partition_by[0]
        holding = lake.read(spec, columns=[column], filter=matching, partitions=partitions or None)
        touched = sorted(set(holding[column].to_pylist()))
        if not touched:
            return 0
        scope = pc.field(column).isin(touched)
        deleted = lake.read(spec, columns=["uid"], filter=scope & matching).num_rows
    else:
        scope = None
        deleted = lake.read(spec, columns=["uid"], filter=matching).num_rows
        if not deleted:
            return 0
    kept = ~matching if scope is None else scope & ~matching
    dataset = lake.dataset(spec)
    batches = (b.select(spec.schema.names).cast(spec.schema) for b in dataset.to_batches(filter=kept))
    lake.rewrite(spec, pa.RecordBatchReader.from_batches(spec.schema, batches), lineage, touched)
    return deleted


def purge_history(lake: Lake, spec: TableSpec, lineage: Lineage) -> tuple[int, int]:
    """Vacuum unreferenced files and drop the log before a fresh checkpoint; returns (files
    vacuumed, log entries removed). The vacuum's commit, the first the table keeps, carries
    ``lineage``: the table's history then starts at the removal run."""
    table = lake.table(spec)
    if table is None:
        return 0, 0
    vacuumed = table.vacuum(retention_hours=0, enforce_retention_duration=False, dry_run=False,
                            commit_properties=lake.commit_properties(lineage))
    table = lake.table(spec)
    table.create_checkpoint()
    current = table.version()
    fs, _ = lake.filesystem
    log_dir = lake.location(f"{lake_layout.table(spec.name)}/_delta_log")
    removed = 0
    for info in fs.get_file_info(pafs.FileSelector(log_dir)):
        match = _LOG_ENTRY.match(info.base_name)
        if match and int(match.group(1)) < current:
            fs.delete_file(info.path)
            removed += 1
    return len(vacuumed), removed


def vacuum_history(lake: Lake, spec: TableSpec, retention_hours: int, lineage: Lineage) -> int:
    """Ordinary upkeep: delete files no version younger than ``retention_hours`` references;
    returns files deleted. The log is left to Delta's own retention."""
    table = lake.table(spec)
    if table is None:
        return 0
    return len(table.vacuum(retention_hours=retention_hours, enforce_retention_duration=False, dry_run=False,
                            commit_properties=lake.commit_properties(lineage)))


def purge_uids(lake: Lake, spec: TableSpec, uids: Sequence[str], lineage: Lineage,
               partitions: Sequence[str] = ()) -> PurgeResult:
    """Delete ``uids`` from ``spec`` and purge its history. The history is purged even when the
    current version holds none of them: an earlier version may (a pair dropped by a later filter)."""
    deleted = delete_uids(lake, spec, uids, lineage, partitions)
    vacuumed, log_removed = purge_history(lake, spec, lineage)
    return PurgeResult(spec.name, deleted, lake.version(spec), vacuumed, log_removed)
