"""Physical removal from Delta tables: delete rows, then make the bytes unreachable and gone.

A Delta delete only writes a new version; the old Parquet files (and, in the log, the add actions
whose column statistics can quote a removed URL) stay for time travel. ``purge_history`` removes
them: it vacuums every file the current version does not reference, writes a checkpoint of the
current version and deletes every log entry before it. The table then starts at that checkpoint:
time travel to any earlier version is gone, which is what a removal must mean.

Ordinary history is left to the tables' own retention; only removals call ``purge_history``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

import pyarrow.fs as pafs

from infra.delta_store import Lake, Lineage, partition_predicate
from infra.tables import TableSpec

_LOG_ENTRY = re.compile(r"^(\d{20})\.(json|crc|checkpoint\.parquet|checkpoint\.\d+\.\d+\.parquet)$")
_IN_LIST_CHUNK = 50_000  # uids per IN list term; one delete commit either way


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

    ``partitions`` (values of the table's first partition column) narrows the files read and
    rewritten to those partitions; it must cover every partition holding one of the uids.
    """
    table = lake.table(spec)
    if table is None or not uids:
        return 0
    unique = sorted(set(uids))
    terms = [
        partition_predicate("uid", unique[i:i + _IN_LIST_CHUNK]) for i in range(0, len(unique), _IN_LIST_CHUNK)
    ]
    predicate = terms[0] if len(terms) == 1 else "(" + " OR ".join(terms) + ")"
    if partitions and spec.partition_by:
        predicate = f"{partition_predicate(spec.partition_by[0], partitions)} AND {predicate}"
    metrics = table.delete(predicate, commit_properties=lake._commit_properties(lineage))
    return int(metrics.get("num_deleted_rows", 0))


def purge_history(lake: Lake, spec: TableSpec) -> tuple[int, int]:
    """Vacuum unreferenced files and drop the log before a fresh checkpoint; returns (files
    vacuumed, log entries removed)."""
    table = lake.table(spec)
    if table is None:
        return 0, 0
    vacuumed = table.vacuum(retention_hours=0, enforce_retention_duration=False, dry_run=False)
    table = lake.table(spec)
    table.create_checkpoint()
    current = table.version()
    fs, log_dir = pafs.FileSystem.from_uri(f"{lake.uri(spec)}/_delta_log")
    removed = 0
    for info in fs.get_file_info(pafs.FileSelector(log_dir)):
        match = _LOG_ENTRY.match(info.base_name)
        if match and int(match.group(1)) < current:
            fs.delete_file(info.path)
            removed += 1
    return len(vacuumed), removed


def purge_uids(lake: Lake, spec: TableSpec, uids: Sequence[str], lineage: Lineage,
               partitions: Sequence[str] = ()) -> PurgeResult:
    """Delete ``uids`` from ``spec`` and purge its history. The history is purged even when the
    current version holds none of them: an earlier version may (a pair dropped by a later filter)."""
    deleted = delete_uids(lake, spec, uids, lineage, partitions)
    vacuumed, log_removed = purge_history(lake, spec)
    return PurgeResult(spec.name, deleted, lake.version(spec), vacuumed, log_removed)
