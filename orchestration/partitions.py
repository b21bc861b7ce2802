"""The partitioning of every per-file stage: one dynamic partition per WARC file."""

import dagster as dg

warc_partitions = dg.DynamicPartitionsDefinition(name="warc_files")

# A backfill of many WARC files runs as one run, so Spark parses the files in parallel tasks.
per_file_backfill = dg.BackfillPolicy.single_run()
