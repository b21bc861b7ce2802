"""The partitioning of every per-file stage: one dynamic partition per WARC file."""

from typing import Callable

import dagster as dg

warc_partitions = dg.DynamicPartitionsDefinition(name="warc_files")


def per_warc_file_asset(*, deps: list[str], kinds: set[str], code_version: str, description: str) -> Callable:
    """An ingest asset partitioned by WARC file.

    A backfill of many WARC files runs as one run (single-run backfill policy), so Spark parses
    the files in parallel tasks and each table gets one commit for all of them.
    """
    return dg.asset(
        group_name="ingest",
        kinds=kinds,
        partitions_def=warc_partitions,
        backfill_policy=dg.BackfillPolicy.single_run(),
        deps=deps,
        code_version=code_version,
        description=description,
    )
