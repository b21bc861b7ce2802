"""A Spark 4 Python data source over the lake's Delta tables, backed by delta-rs.

Reads hand Spark the active Parquet files of a chosen table version, one input partition per file.
Writes run on executors, each task writing Parquet files into the table directory; the driver then
commits all of them in one Delta transaction with the lineage metadata (or deletes them on abort).
No delta-spark jars are involved, so nothing is fetched from Maven.

    spark.read.format("pairlake_delta").option("root", lake_root).option("table", "candidates").load()
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import time
import urllib.parse
import uuid
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from deltalake.exceptions import DeltaError
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

from infra import lake_layout, lake_storage
from infra.delta_store import Lake, LakeError, Lineage
from infra.tables import TableSpec, table_spec

log = logging.getLogger(__name__)

FORMAT = "pairlake_delta"
_READ_BATCH_ROWS = 1024  # rows per Arrow batch a read hands Spark (option batch_rows)
# A read task's share of files, as Spark's own Parquet scan (spark.sql.files.maxPartitionBytes and
# openCostInBytes); read_table passes the session's values (options split_bytes, parallelism).
_SPLIT_BYTES = 128 * 2**20
_OPEN_COST_BYTES = 4 * 2**20


def _spec(options: dict[str, str]) -> TableSpec:
    if "table" not in options or "root" not in options:
        raise ValueError(f"the {FORMAT} data source needs the options 'root' and 'table'")
    return table_spec(options["table"])


def _projected(options: dict[str, str]) -> pa.Schema:
    """The columns a read asks for (option ``columns``, a JSON list), in the table's order.

    Spark does not tell a Python data source which columns a query uses, so callers name them:
    without it, every read of ``images`` would move every image's bytes."""
    spec = _spec(options)
    if not options.get("columns"):
        return spec.schema
    wanted = _known(spec, json.loads(options["columns"]))
    return pa.schema([f for f in spec.schema if f.name in wanted])


def _known(spec: TableSpec, columns: Iterable[str]) -> set[str]:
    unknown = sorted(set(columns) - set(spec.schema.names))
    if unknown:
        raise ValueError(f"table {spec.name} has no column {', '.join(unknown)}")
    return set(columns)


def _lake(options: dict[str, str]) -> Lake:
    """The lake the options name, opened where the code runs: an executor reads the credentials
    from its own environment, so none travels in a task (readers and writers keep no Lake)."""
    return Lake(options["root"], lake_storage.from_json(options.get("storage")))


@contextlib.contextmanager
def _store_errors(options: dict[str, str], *also: type[Exception]) -> Iterator[None]:
    """An I/O error of the lake's store (a bucket that stopped answering, a full disk) as one
    line naming the lake: the caller (``infra.spark``) relays a task's LakeError as itself."""
    try:
        yield
    except (OSError, *also) as exc:
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise LakeError(f"lake {options['root']} cannot be read or written: {detail}") from None


def _table_dir(options: dict[str, str], spec: TableSpec) -> tuple[pafs.FileSystem, str]:
    lake = _lake(options)
    return lake.filesystem[0], lake.location(lake_layout.table(spec.name))


def _partition_dir(spec: TableSpec, values: tuple[str, ...]) -> str:
    # Hive-style directories, as delta-rs lays them out, so that readers inferring partitions from
    # paths (Polars) agree with the log.
    return "/".join(f"{col}={urllib.parse.quote(val, safe='')}" for col, val in zip(spec.partition_by, values))


@dataclass
class _DataFile:
    path: str  # of one Parquet file, relative to the table's folder
    partition_values: dict[str, str]


@dataclass
class _FilePartition(InputPartition):
    files: list[_DataFile]  # read one after the other by one task


def _packed(files: list[tuple[_DataFile, int]], split_bytes: int, parallelism: int) -> list[_FilePartition]:
    """Files (with their sizes) packed into read tasks, as Spark packs a Parquet scan: each file
    costs its size plus an open cost, a task takes files up to a split size, and the split shrinks
    so that a small table still gives every core a task. A task per file costs tens of ms each."""
    open_cost = _OPEN_COST_BYTES
    total = sum(size + open_cost for _, size in files)
    split = min(split_bytes, max(open_cost, total // max(1, parallelism)))
    parts: list[_FilePartition] = []
    current: list[_DataFile] = []
    filled = 0
    for file, size in files:
        if current and filled + size + open_cost > split:
            parts.append(_FilePartition(current))
            current, filled = [], 0
        current.append(file)
        filled += size + open_cost
    if current:
        parts.append(_FilePartition(current))
    return parts


def _wanted(options: dict[str, str], spec: TableSpec) -> dict[str, list[Any]]:
    """The read's row selection (option ``where``, JSON ``{column: [values]}``): rows whose column
    holds one of the values. Files of other partitions, and files and row groups whose statistics
    exclude the values, are never opened.

    Spark's own filter pushdown for Python data sources (``pushFilters``) is not used: in Spark
    4.3 the filters pushed for one scan of a DataFrame leaked into another scan of it in the same
    plan (a union of two filtered copies returned no rows), and a wrong answer is worse than a slow one."""
    where = json.loads(options["where"]) if options.get("where") else {}
    _known(spec, where)
    return {column: list(values) for column, values in where.items()}


def _may_hold(values: list[Any], lo: Any, hi: Any) -> bool:
    """Whether a file whose column spans [lo, hi] can hold one of ``values``; unknown statistics
    (None) never skip a file."""
    if lo is None or hi is None:
        return True
    try:
        return any(v is not None and lo <= v <= hi for v in values)
    except TypeError:  # statistics of another type than the values
        return True


class _DeltaReader(DataSourceReader):
    def __init__(self, options: dict[str, str], schema: StructType):
        self.options = options
        self.spec = _spec(options)
        self.schema = _projected(options)
        self.where = _wanted(options, self.spec)

    def partitions(self) -> list[InputPartition]:
        lake = _lake(self.options)
        version = int(self.options["version"]) if self.options.get("version") else None
        table = lake.table(self.spec, version)
        if table is None:
            return []
        wanted = set(json.loads(self.options["partitions"])) if self.options.get("partitions") else None
        actions = pa.table(table.get_add_actions(flatten=True)).to_pylist()
        files: list[tuple[_DataFile, int]] = []
        for action in actions:
            values = {c: action[f"partition.{c}"] for c in self.spec.partition_by}
            if wanted is not None and values[self.spec.partition_by[0]] not in wanted:
                continue
            if not all(self._file_may_hold(column, allowed, action, values) for column, allowed in self.where.items()):
                continue
            files.append((_DataFile(urllib.parse.unquote(action["path"]), values), action["size_bytes"]))
        split_bytes = int(self.options.get("split_bytes") or _SPLIT_BYTES)
        return _packed(files, split_bytes, int(self.options.get("parallelism") or 1))

    def _file_may_hold(self, column: str, allowed: list[Any], action: dict[str, Any], values: dict[str, str]) -> bool:
        if column in values:
            return values[column] in allowed
        if not _has_statistics(self.spec.schema.field(column).type):
            return True
        return _may_hold(allowed, action.get(f"min.{column}"), action.get(f"max.{column}"))

    def read(self, partition: InputPartition) -> Iterator[pa.RecordBatch]:
        if not isinstance(partition, _FilePartition):
            return  # a table with no files: Spark still reads one (empty) default partition
        with _store_errors(self.options):
            filesystem, table_dir = _table_dir(self.options, self.spec)
            for file in partition.files:
                yield from self._read_file(filesystem, f"{table_dir}/{file.path}", file)

    def _read_file(self, filesystem: pafs.FileSystem, path: str, file: _DataFile) -> Iterator[pa.RecordBatch]:
        # Imported here, not with the module: Spark's planner processes import this module to plan
        # reads and commit writes, and pyarrow.dataset would cost each of them ~0.6 CPU-s (pandas).
        # Task workers fork from a daemon that has it imported (infra/spark_worker_daemon.py).
        import pyarrow.dataset as pads

        dataset = pads.dataset(path, filesystem=filesystem, format="parquet")
        stored = set(dataset.schema.names)
        row_filter = None
        for column, allowed in self.where.items():
            if column in file.partition_values:
                continue  # the file was chosen by it
            # A column the file predates is null there, and null is never one of the values.
            part = pads.field(column).isin(allowed) if column in stored else pads.scalar(False)
            row_filter = part if row_filter is None else row_filter & part
        # Streamed a batch at a time, one batch ahead: a file of images is never held whole.
        scanner = dataset.scanner(
            columns=[n for n in self.schema.names if n in stored], filter=row_filter,
            batch_size=int(self.options.get("batch_rows") or _READ_BATCH_ROWS), batch_readahead=1, fragment_readahead=1,
        )
        for batch in scanner.to_batches():
            if not batch.num_rows:
                continue
            data = pa.Table.from_batches([batch])
            for field in self.schema:
                if field.name in file.partition_values:
                    data = data.append_column(field, pa.array([file.partition_values[field.name]] * data.num_rows, field.type))
                elif field.name not in stored:  # written before the column existed
                    data = data.append_column(field, pa.nulls(data.num_rows, field.type))
            yield from data.select(self.schema.names).cast(self.schema).to_batches()


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
        # Every file of this write carries its id, so an abort can find the files of tasks that
        # were still running when the job failed (their commit messages never reach the driver).
        self.write_id = uuid.uuid4().hex

    def _abort_marker(self, table_path: str) -> str:
        return f"{table_path}/{_ABORTED_DIR}/{self.write_id}"

    def write(self, iterator: Iterator[pa.RecordBatch]) -> _WrittenFiles:
        with _store_errors(self.options):
            return self._write(iterator)

    def _write(self, iterator: Iterator[pa.RecordBatch]) -> _WrittenFiles:
        """Stream the task's rows into one Parquet file per table partition they fall in.

        Rows come sorted by partition (``write_table`` sorts them), so a file is closed as soon
        as the next partition's rows begin: one open file per task, whatever the number of
        partitions, instead of one per partition each holding the metadata of its row groups."""
        filesystem, table_path = _table_dir(self.options, self.spec)
        open_files: dict[tuple[str, ...], _OpenFile] = {}
        files: list[dict[str, Any]] = []
        try:
            for batch in iterator:
                if not batch.num_rows:
                    continue
                data = pa.Table.from_batches([batch]).select(self.spec.schema.names).cast(self.spec.schema)
                groups = [((), data)] if not self.spec.partition_by else _split_by_partition(data, self.spec)
                for values, rows in groups:
                    if values not in open_files:
                        for done in list(open_files):
                            files.append(open_files.pop(done).close(filesystem))
                        open_files[values] = self._open(filesystem, table_path, values)
                    open_files[values].write(rows.drop_columns(list(self.spec.partition_by)))
            files += [f.close(filesystem) for f in open_files.values()]
        except BaseException:
            for f in open_files.values():
                f.discard(filesystem)
            with contextlib.suppress(OSError):  # a store that stopped answering: the abort's sweep or a vacuum
                for written in files:
                    filesystem.delete_file(f"{table_path}/{written['path']}")
            raise
        # A task that outlives the job's failure (Spark kills it asynchronously) finds the abort
        # marker here and removes its own files: either this check sees the marker, or the files
        # were complete before the marker existed and the abort's sweep deletes them.
        if filesystem.get_file_info(self._abort_marker(table_path)).type != pafs.FileType.NotFound:
            for written in files:
                filesystem.delete_file(f"{table_path}/{written['path']}")
            raise RuntimeError(f"write {self.write_id} was aborted")
        return _WrittenFiles(files=files)

    def _open(self, filesystem: pafs.FileSystem, table_path: str, values: tuple[str, ...]) -> "_OpenFile":
        rel_dir = _partition_dir(self.spec, values)
        name = f"part-{self.write_id}-{uuid.uuid4().hex}.parquet"
        rel_path = f"{rel_dir}/{name}" if rel_dir else name
        full = f"{table_path}/{rel_path}"
        filesystem.create_dir(full.rsplit("/", 1)[0], recursive=True)
        schema = pa.schema([f for f in self.spec.schema if f.name not in self.spec.partition_by])
        writer = pq.ParquetWriter(full, schema, filesystem=filesystem)
        return _OpenFile(rel_path, full, dict(zip(self.spec.partition_by, values)), writer, self.spec.row_group_rows)

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
                json.dumps(f["stats"]),
            )
            for m in messages
            if isinstance(m, _WrittenFiles)
            for f in m.files
        ]
        lineage = _lineage_from_json(self.options["lineage"]) if self.options.get("lineage") else Lineage()
        replace = json.loads(self.options["replace_partitions"]) if self.options.get("replace_partitions") else None
        try:
            with _store_errors(self.options, DeltaError):
                _lake(self.options).commit_files(
                    self.spec, adds, lineage, replace_partitions=replace, overwrite=self.overwrite and replace is None
                )
        except Exception:
            # A refused commit (the removal fence, a conflict) leaves no written file behind.
            self.abort(messages)
            raise

    def abort(self, messages: list[WriterCommitMessage | None]) -> None:
        try:
            self._sweep()
        except OSError as exc:  # the store is down: the files stay unreferenced until a vacuum
            log.warning("write %s aborted, its files not removed: %s", self.write_id, exc)

    def _sweep(self) -> None:
        filesystem, table_path = _table_dir(self.options, self.spec)
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


# Statistics longer than this are left out (a reader then never skips the file on that column):
# Delta's statistics are for skipping files, and long captions or URLs would bloat the log.
_MAX_STAT_CHARS = 64


class _OpenFile:
    """One Parquet file a task is writing, with the Delta statistics of what went into it."""

    def __init__(self, rel_path: str, full: str, partition_values: dict[str, str], writer: pq.ParquetWriter,
                 row_group_rows: int | None):
        self.rel_path, self.full, self.partition_values, self.writer = rel_path, full, partition_values, writer
        self.row_group_rows = row_group_rows
        self.rows = 0
        self.lo: dict[str, Any] = {}
        self.hi: dict[str, Any] = {}
        self.nulls: dict[str, int] = {}

    def write(self, rows: pa.Table) -> None:
        self.writer.write_table(rows, row_group_size=self.row_group_rows)  # each call: row groups of its own
        self.rows += rows.num_rows
        for name, column in zip(rows.column_names, rows.columns):
            self.nulls[name] = self.nulls.get(name, 0) + column.null_count
            if not _has_statistics(column.type) or column.null_count == len(column):
                continue
            bounds = pc.min_max(column).as_py()
            self.lo[name] = bounds["min"] if name not in self.lo else min(self.lo[name], bounds["min"])
            self.hi[name] = bounds["max"] if name not in self.hi else max(self.hi[name], bounds["max"])

    def close(self, filesystem: pafs.FileSystem) -> dict[str, Any]:
        self.writer.close()
        kept = [n for n in self.lo if _stat_fits(self.lo[n]) and _stat_fits(self.hi[n])]
        stats = {
            "numRecords": self.rows,
            "minValues": {n: self.lo[n] for n in kept},
            "maxValues": {n: self.hi[n] for n in kept},
            "nullCount": self.nulls,
        }
        return {
            "path": self.rel_path,
            "size": filesystem.get_file_info(self.full).size,
            "partition_values": self.partition_values,
            "stats": stats,
        }

    def discard(self, filesystem: pafs.FileSystem) -> None:
        try:
            self.writer.close()
            filesystem.delete_file(self.full)
        except (OSError, pa.ArrowException):
            pass  # the abort's sweep removes it by its write id


def _has_statistics(kind: pa.DataType) -> bool:
    # Not timestamps: Delta truncates their statistics to milliseconds, too coarse to skip on.
    return pa.types.is_string(kind) or pa.types.is_integer(kind)


def _stat_fits(value: Any) -> bool:
    return not isinstance(value, str) or len(value) <= _MAX_STAT_CHARS


def _split_by_partition(data: pa.Table, spec: TableSpec) -> list[tuple[tuple[str, ...], pa.Table]]:
    keys = data.select(list(spec.partition_by)).group_by(list(spec.partition_by)).aggregate([]).to_pylist()
    out = []
    for key in keys:
        mask = None
        for col in spec.partition_by:
            m = pc.equal(data.column(col), key[col])
            mask = m if mask is None else pc.and_(mask, m)
        out.append((tuple(key[c] for c in spec.partition_by), data.filter(mask)))
    return sorted(out, key=lambda group: group[0])  # the order write_table sorted the rows in


class DeltaDataSource(DataSource):
    @classmethod
    def name(cls) -> str:
        return FORMAT

    def schema(self) -> StructType:
        return from_arrow_schema(_projected(self.options))

    def reader(self, schema: StructType) -> DataSourceReader:
        return _DeltaReader(dict(self.options), schema)

    def writer(self, schema: StructType, overwrite: bool) -> DataSourceArrowWriter:
        return _DeltaWriter(dict(self.options), overwrite)


def lineage_option(lineage: Lineage) -> str:
    return json.dumps(dataclasses.asdict(lineage))


def _lineage_from_json(text: str) -> Lineage:
    data = json.loads(text)
    return Lineage(**{**data, "partition_keys": tuple(data["partition_keys"])})
