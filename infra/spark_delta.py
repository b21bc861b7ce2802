"""A Spark 4 Python data source over the lake's Delta tables, backed by delta-rs.

Reads hand Spark the active Parquet files of a chosen table version, one input partition per file.
Writes run on executors, each task writing Parquet files into the table directory; the driver then
commits all of them in one Delta transaction with the lineage metadata (or deletes them on abort).
No delta-spark jars are involved, so nothing is fetched from Maven.

    spark.read.format("pairlake_delta").option("root", lake_root).option("table", "candidates").load()
"""

from __future__ import annotations

import dataclasses
import json
import time
import urllib.parse
import uuid
from dataclasses import dataclass
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pyarrow import fs as pafs
from pyspark.sql.datasource import (
    DataSource,
    DataSourceArrowWriter,
    DataSourceReader,
    InputPartition,
    WriterCommitMessage,
)
from pyspark.sql.pandas.types import from_arrow_schema
from pyspark.sql.types import StructType

from infra.delta_store import Lake, Lineage
from infra.tables import TableSpec, table_spec

FORMAT = "pairlake_delta"


def _spec(options: dict[str, str]) -> TableSpec:
    if "table" not in options or "root" not in options:
        raise ValueError(f"the {FORMAT} data source needs the options 'root' and 'table'")
    return table_spec(options["table"])


def _filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    if "://" not in uri:
        return pafs.LocalFileSystem(), uri
    return pafs.FileSystem.from_uri(uri)


def _partition_dir(spec: TableSpec, values: tuple[str, ...]) -> str:
    # Hive-style directories, as delta-rs lays them out, so that readers inferring partitions from
    # paths (Polars) agree with the log.
    return "/".join(f"{col}={urllib.parse.quote(val, safe='')}" for col, val in zip(spec.partition_by, values))


@dataclass
class _FilePartition(InputPartition):
    path: str  # absolute URI or path of one Parquet file
    partition_values: dict[str, str]


class _DeltaReader(DataSourceReader):
    def __init__(self, options: dict[str, str], schema: StructType):
        self.options = options
        self.spec = _spec(options)

    def partitions(self) -> list[InputPartition]:
        lake = Lake(self.options["root"])
        version = int(self.options["version"]) if self.options.get("version") else None
        table = lake.table(self.spec, version)
        if table is None:
            return []
        wanted = set(json.loads(self.options["partitions"])) if self.options.get("partitions") else None
        actions = pa.table(table.get_add_actions(flatten=True)).to_pylist()
        parts: list[InputPartition] = []
        for action in actions:
            values = {c: action[f"partition.{c}"] for c in self.spec.partition_by}
            if wanted is not None and values[self.spec.partition_by[0]] not in wanted:
                continue
            path = f"{table.table_uri.rstrip('/')}/{urllib.parse.unquote(action['path'])}"
            parts.append(_FilePartition(path=path.removeprefix("file://"), partition_values=values))
        return parts

    def read(self, partition: InputPartition) -> Iterator[pa.RecordBatch]:
        if not isinstance(partition, _FilePartition):
            return  # a table with no files: Spark still reads one (empty) default partition
        filesystem, path = _filesystem(partition.path)
        data = pq.read_table(path, filesystem=filesystem)
        for col, value in partition.partition_values.items():
            data = data.append_column(col, pa.array([value] * data.num_rows, pa.string()))
        for missing in set(self.spec.schema.names) - set(data.column_names):  # written before the column existed
            data = data.append_column(self.spec.schema.field(missing), pa.nulls(data.num_rows, self.spec.schema.field(missing).type))
        yield from data.select(self.spec.schema.names).cast(self.spec.schema).to_batches()


@dataclass
class _WrittenFiles(WriterCommitMessage):
    files: list[dict[str, Any]]  # path (relative to the table), size, partition values, numRecords


# Abort markers live beside the data; Delta readers skip directories whose names start with "_".
_ABORTED_DIR = "_pairlake_aborted"


class _DeltaWriter(DataSourceArrowWriter):
    def __init__(self, options: dict[str, str], overwrite: bool):
        self.options = options
        self.overwrite = overwrite
        self.spec = _spec(options)
        self.table_uri = Lake(options["root"]).uri(self.spec)
        # Every file of this write carries its id, so an abort can find the files of tasks that
        # were still running when the job failed (their commit messages never reach the driver).
        self.write_id = uuid.uuid4().hex

    def _abort_marker(self, table_path: str) -> str:
        return f"{table_path}/{_ABORTED_DIR}/{self.write_id}"

    def write(self, iterator: Iterator[pa.RecordBatch]) -> _WrittenFiles:
        batches = [b for b in iterator if b.num_rows]
        if not batches:
            return _WrittenFiles(files=[])
        data = pa.Table.from_batches(batches).select(self.spec.schema.names).cast(self.spec.schema)
        filesystem, table_path = _filesystem(self.table_uri)
        files: list[dict[str, Any]] = []
        groups = [((), data)] if not self.spec.partition_by else _split_by_partition(data, self.spec)
        for values, rows in groups:
            rel_dir = _partition_dir(self.spec, values)
            name = f"part-{self.write_id}-{uuid.uuid4().hex}.parquet"
            rel_path = f"{rel_dir}/{name}" if rel_dir else name
            full = f"{table_path}/{rel_path}"
            filesystem.create_dir(full.rsplit("/", 1)[0], recursive=True)
            pq.write_table(rows.drop_columns(list(self.spec.partition_by)), full, filesystem=filesystem)
            files.append(
                {
                    "path": rel_path,
                    "size": filesystem.get_file_info(full).size,
                    "partition_values": dict(zip(self.spec.partition_by, values)),
                    "num_records": rows.num_rows,
                }
            )
            # A task that outlives the job's failure (Spark kills it asynchronously) finds the abort
            # marker here and removes its own files: either this check sees the marker, or the file
            # was complete before the marker existed and the abort's sweep deletes it.
            if filesystem.get_file_info(self._abort_marker(table_path)).type != pafs.FileType.NotFound:
                for written in files:
                    filesystem.delete_file(f"{table_path}/{written['path']}")
                raise RuntimeError(f"write {self.write_id} was aborted")
        return _WrittenFiles(files=files)

    def commit(self, messages: list[WriterCommitMessage | None]) -> None:
        from deltalake.transaction import AddAction

        now_ms = int(time.time() * 1000)
        adds = [
            AddAction(
                urllib.parse.quote(f["path"], safe="/="),
                f["size"],
                f["partition_values"],
                now_ms,
                True,
                json.dumps({"numRecords": f["num_records"]}),
            )
            for m in messages
            if isinstance(m, _WrittenFiles)
            for f in m.files
        ]
        lineage = _lineage_from_json(self.options["lineage"]) if self.options.get("lineage") else Lineage()
        replace = json.loads(self.options["replace_partitions"]) if self.options.get("replace_partitions") else None
        try:
            Lake(self.options["root"]).commit_files(
                self.spec, adds, lineage, replace_partitions=replace, overwrite=self.overwrite and replace is None
            )
        except Exception:
            # A refused commit (the removal fence, a conflict) leaves no written file behind.
            self.abort(messages)
            raise

    def abort(self, messages: list[WriterCommitMessage | None]) -> None:
        filesystem, table_path = _filesystem(self.table_uri)
        # The marker goes first, so every file that the sweep below misses is removed by its writer.
        marker = self._abort_marker(table_path)
        filesystem.create_dir(marker.rsplit("/", 1)[0], recursive=True)
        with filesystem.open_output_stream(marker):
            pass
        prefix = f"part-{self.write_id}-"
        for info in filesystem.get_file_info(pafs.FileSelector(table_path, recursive=True)):
            if info.type == pafs.FileType.File and info.base_name.startswith(prefix):
                try:
                    filesystem.delete_file(info.path)
                except FileNotFoundError:
                    pass  # its writer found the marker and removed it first


def _split_by_partition(data: pa.Table, spec: TableSpec) -> list[tuple[tuple[str, ...], pa.Table]]:
    keys = data.select(list(spec.partition_by)).group_by(list(spec.partition_by)).aggregate([]).to_pylist()
    out = []
    for key in keys:
        mask = None
        for col in spec.partition_by:
            m = pc.equal(data.column(col), key[col])
            mask = m if mask is None else pc.and_(mask, m)
        out.append((tuple(key[c] for c in spec.partition_by), data.filter(mask)))
    return out


class DeltaDataSource(DataSource):
    @classmethod
    def name(cls) -> str:
        return FORMAT

    def schema(self) -> StructType:
        return from_arrow_schema(_spec(self.options).schema)

    def reader(self, schema: StructType) -> DataSourceReader:
        return _DeltaReader(dict(self.options), schema)

    def writer(self, schema: StructType, overwrite: bool) -> DataSourceArrowWriter:
        return _DeltaWriter(dict(self.options), overwrite)


def lineage_option(lineage: Lineage) -> str:
    return json.dumps(dataclasses.asdict(lineage))


def _lineage_from_json(text: str) -> Lineage:
    data = json.loads(text)
    return Lineage(**{**data, "partition_keys": tuple(data["partition_keys"])})
