"""The storage layer: Delta tables under one lake root, written through delta-rs.

Every write is one atomic Delta commit that carries lineage (run id, asset key, partition, code
version, upstream table versions) in its commit metadata. Partitioned writes replace exactly the
named partitions in that one commit, so a retry or a crash-and-rerun never leaves duplicates or gaps.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
import urllib.parse
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Iterable, Iterator

import pyarrow as pa
import pyarrow.fs as pafs
from deltalake import DeltaTable, Schema, WriterProperties, write_deltalake
from deltalake.exceptions import DeltaError, TableNotFoundError
from deltalake.transaction import AddAction, CommitProperties, create_table_with_add_actions

from infra import lake_layout
from infra.config import LakeConfig, StorageOptions
from infra.lake_storage import Folder, bucket_versioning, delta_options, filesystem, is_object_store
from infra.removal_fence import UNPINNED, check_commit, pinned_version
from infra.tables import TableSpec

if TYPE_CHECKING:
    # Imported where used: it imports pandas (~0.6 CPU-s), which Spark's planner processes, importing
    # this module to list a table's files, never need.
    import pyarrow.dataset as pads

LINEAGE_PREFIX = "pairlake."


class LakeError(RuntimeError):
    """The lake root or a table cannot be used as asked."""


@dataclass(frozen=True)
class Lineage:
    """Who wrote a commit and from what: stored in the Delta commit's metadata."""

    run_id: str = "manual"
    asset_key: str = ""
    partition_keys: tuple[str, ...] = ()
    code_version: str = ""
    upstream: dict[str, int] = field(default_factory=dict)  # table name -> version read
    # The removals version this writer's reads reflect: commits to sample tables are checked against
    # removals that landed after it (infra/removal_fence.py). Not part of the commit metadata.
    removals_version: int = UNPINNED

    def commit_metadata(self) -> dict[str, str]:
        return {
            f"{LINEAGE_PREFIX}run_id": self.run_id,
            f"{LINEAGE_PREFIX}asset_key": self.asset_key,
            f"{LINEAGE_PREFIX}partition_keys": json.dumps(list(self.partition_keys)),
            f"{LINEAGE_PREFIX}code_version": self.code_version,
            f"{LINEAGE_PREFIX}upstream": json.dumps(self.upstream, sort_keys=True),
        }

    @staticmethod
    def from_commit(info: dict[str, Any]) -> "Lineage | None":
        """Lineage from a ``DeltaTable.history()`` entry, or None for commits pairlake did not write."""
        if f"{LINEAGE_PREFIX}run_id" not in info:
            return None
        return Lineage(
            run_id=info[f"{LINEAGE_PREFIX}run_id"],
            asset_key=info.get(f"{LINEAGE_PREFIX}asset_key", ""),
            partition_keys=tuple(json.loads(info.get(f"{LINEAGE_PREFIX}partition_keys", "[]"))),
            code_version=info.get(f"{LINEAGE_PREFIX}code_version", ""),
            upstream={k: int(v) for k, v in json.loads(info.get(f"{LINEAGE_PREFIX}upstream", "{}")).items()},
        )


def _sql_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def partition_predicate(column: str, values: Iterable[str]) -> str:
    """A delta-rs SQL predicate selecting the given partition values."""
    return f"{column} IN ({', '.join(_sql_literal(v) for v in sorted(set(values)))})"


_COMMIT_ENTRY = re.compile(r"^(\d{20})\.json$")
_CHECKPOINT = re.compile(r"^(\d{20})\.checkpoint(\.\d+\.\d+)?\.parquet$")
# The actions delta-rs 1.6 accepts in a commit entry; it refuses the whole table on any other.
_ACTIONS = frozenset({"add", "remove", "metaData", "protocol", "commitInfo", "txn", "cdc", "domainMetadata"})
# Log entries already found whole, path -> (size, mtime_ns). Entries are written once, so a read
# re-parses only entries that are new or were changed in place since.
_checked_entries: dict[str, tuple[int, int]] = {}


def _entry_problem(data: bytes) -> str | None:
    """What makes a commit entry unusable, or None when every line is one Delta action."""
    if not data:
        return "is empty (0 bytes)"
    actions = 0
    for number, line in enumerate(data.splitlines(), 1):
        if not line.strip():
            continue
        try:
            action = json.loads(line)
        except ValueError:
            return f"is cut short or garbled: line {number} is not JSON"
        if not (isinstance(action, dict) and len(action) == 1 and next(iter(action)) in _ACTIONS):
            return f"is garbled: line {number} is not a Delta action"
        actions += 1
    return None if actions else "holds no Delta action"


def _rollback(log: str, number: int, latest: int, missing: bool = False) -> str:
    """How to get back to the last good version when log entry ``number`` is lost or unusable.

    Checked with delta-rs 1.6.6: after deleting the entries from ``number`` on, the table reads as
    version ``number - 1``, the next write takes ``number`` again, and the data files of the
    deleted commits stay on disk until a full vacuum (``vacuum(full=True)``; a plain one keeps them).
    """
    if number == 0:
        return f"or delete the table folder {os.path.dirname(log)} and write the table again"
    later = latest - number
    after = f"the {later} {'entry' if later == 1 else 'entries'} after it"
    which = after if missing else "it" if later <= 0 else f"it and {after}"
    return (f"or delete {which} to roll back to version {number - 1} (the data files of the deleted commits "
            f"stay on disk unreferenced until a full vacuum)")


def row_groups_for(spec: TableSpec) -> WriterProperties | None:
    return WriterProperties(max_row_group_size=spec.row_group_rows) if spec.row_group_rows else None


# Object-store roots whose bucket this process has checked (it exists, never versioned).
_CHECKED_ROOTS: set[str] = set()


class Lake:
    """The Delta tables under one root (a local path or an object-store URI)."""

    def __init__(self, root: str, storage: StorageOptions | None = None):
        self.root = root.rstrip("/") if is_object_store(root) else str(Path(root).resolve())
        self.storage = storage or StorageOptions()
        self._filesystem: tuple[pafs.FileSystem, str] | None = None

    def __getstate__(self) -> dict[str, Any]:
        # A lake shipped to Spark tasks opens its filesystem there, with that machine's credentials.
        return {**self.__dict__, "_filesystem": None}

    @classmethod
    def of(cls, config: LakeConfig) -> "Lake":
        return cls(config.root, config.storage_options)

    @property
    def is_local(self) -> bool:
        return not is_object_store(self.root)

    @property
    def storage_options(self) -> dict[str, str] | None:
        """delta-rs options (credentials included: never log them); None for a local lake."""
        return None if self.is_local else delta_options(self.storage)

    @property
    def filesystem(self) -> tuple[pafs.FileSystem, str]:
        """The pyarrow filesystem holding the lake, and the root's path on it."""
        if self._filesystem is None:
            self._filesystem = filesystem(self.root, self.storage)
        return self._filesystem

    def location(self, key: str) -> str:
        """Where a layout key (``infra.lake_layout``) lives on ``self.filesystem``."""
        return key if key.startswith("/") else f"{self.filesystem[1]}/{key}"

    def path(self, key: str) -> Path:
        """A layout key as a local path: for the stages whose I/O needs local files (a local lake)."""
        if not self.is_local and not key.startswith("/"):
            raise LakeError(f"{key} on an object-store lake ({self.root}) is not supported yet: use a local lake root")
        return Path(self.location(key))

    def folder(self, key: str) -> Folder:
        """A layout key's folder on the lake's filesystem, for reading and writing its files."""
        return Folder(self.filesystem[0], self.location(key))

    def publish(self, key: str) -> contextlib.AbstractContextManager[IO[bytes]]:
        """Write the artefact at ``key`` whole or not at all (``atomic_output`` on the lake's
        filesystem), e.g. ``with lake.publish(lake_layout.report("funnel.html")) as fh: ...``."""
        directory, name = key.rsplit("/", 1)  # every artefact of the layout lives in a folder
        return self.folder(directory).publish(name)

    @contextlib.contextmanager
    def local_copy(self, key: str) -> Iterator[Path]:
        """A folder of the lake as local files, for readers that need files (torch, faiss): the
        folder itself on a local lake; on an object store a temporary copy of the objects under
        it, removed when the block ends (an empty folder if there are none)."""
        if self.is_local:
            yield self.path(key)
            return
        fs, _ = self.filesystem
        with tempfile.TemporaryDirectory(prefix="pairlake-lake-copy-") as out:
            if fs.get_file_info(self.location(key)).type == pafs.FileType.Directory:
                pafs.copy_files(self.location(key), out, source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
            yield Path(out)

    def uri(self, spec: TableSpec | str) -> str:
        """The table's URI, as delta-rs and other Delta readers take it."""
        name = spec if isinstance(spec, str) else spec.name
        return self.uri_of(lake_layout.table(name))

    def uri_of(self, key: str) -> str:
        """A layout key as users and other tools name it: a local path, or an s3:// URI."""
        return key if key.startswith("/") else f"{self.root}/{key}"

    def ensure_writable(self) -> None:
        """Fail early, with one line, when the lake root cannot take writes (a read-only folder, a
        bucket that does not exist, a store that does not answer, credentials it refuses)."""
        fs, base = self.filesystem
        probe = f"{base}/.write-probe-{uuid.uuid4().hex}"
        try:
            if self.is_local:
                fs.create_dir(base, recursive=True)
            else:
                self._check_bucket(fs, base.split("/", 1)[0])
            with fs.open_output_stream(probe):
                pass
            fs.delete_file(probe)
        except OSError as exc:
            detail = exc.strerror or (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise LakeError(f"lake root {self.root} is not writable: {detail}") from None

    def _check_bucket(self, fs: pafs.FileSystem, bucket: str) -> None:
        """Once per process and root: the bucket exists and never had versioning."""
        if self.root in _CHECKED_ROOTS:
            return
        if fs.get_file_info(bucket).type == pafs.FileType.NotFound:
            # Some stores create a bucket on the first write: a typo must not make a new one.
            raise LakeError(f"lake root {self.root}: bucket {bucket} does not exist")
        try:
            versioning = bucket_versioning(self.root, self.storage)
        except Exception as exc:  # botocore's errors share no base with OSError
            raise LakeError(f"lake root {self.root}: cannot read bucket {bucket}'s versioning: {exc}") from None
        if versioning:
            raise LakeError(
                f"lake root {self.root}: bucket {bucket} has versioning {versioning.lower()}: deleted objects stay as "
                "noncurrent versions, so a removal could not erase them; use a bucket that never had versioning")
        _CHECKED_ROOTS.add(self.root)

    # -- reading -------------------------------------------------------------------------------

    def table(self, spec: TableSpec | str, version: int | None = None) -> DeltaTable | None:
        """The Delta table at ``version`` (latest when None), or None if it was never written.

        A table whose log is corrupt raises LakeError naming the table, never a wrong answer."""
        name = spec if isinstance(spec, str) else spec.name
        if self.is_local:
            self._check_log(name, version)
        try:
            return DeltaTable(self.uri(spec), version=version, storage_options=self.storage_options)
        except TableNotFoundError:
            if version is not None and self.table(spec) is not None:
                # The table exists, that version does not: a removal purged the history before it.
                raise LakeError(f"version {version} of table {self.uri(spec)} is gone (purged by a removal)") from None
            return None
        except (DeltaError, OSError, ValueError) as exc:
            # delta-rs appends a Rust backtrace to its message: keep the first line.
            detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise LakeError(f"table {name} at {self.uri(spec)} cannot be loaded: {detail}") from exc

    def _check_log(self, name: str, version: int | None) -> None:
        """Refuse a table whose commit entries after the last checkpoint are not whole.

        delta-rs reads an empty entry as a commit that changes nothing (silently stale data) and
        fails on a cut one without naming the table. Only local tables can hold such entries: a
        file system can leave a renamed entry empty or cut after a crash, while an object store
        writes an object whole or not at all.
        """
        log = os.path.join(self.root, name, "_delta_log")  # plain strings: pathlib would double the cost
        try:
            names = os.listdir(log)
        except (FileNotFoundError, NotADirectoryError):
            return  # never written: DeltaTable says so
        commits, checkpoints = [], []
        for entry in names:
            if match := _COMMIT_ENTRY.match(entry):
                commits.append(int(match.group(1)))
            elif match := _CHECKPOINT.match(entry):
                checkpoints.append(int(match.group(1)))
        last = max(commits, default=-1) if version is None else version
        start = max((c for c in checkpoints if c <= last), default=-1)
        # Entries before the checkpoint may be gone (infra/purge.py deletes them); none after it may.
        expected = start + 1
        for number in sorted(c for c in commits if start < c <= last):
            if number != expected:
                raise LakeError(f"table {name} is corrupt: Delta log entry {log}/{expected:020d}.json is missing; "
                                f"restore it from a backup, {_rollback(log, expected, max(commits), missing=True)}")
            expected += 1
            path = f"{log}/{number:020d}.json"
            try:
                stat = os.stat(path)
                key = (stat.st_size, stat.st_mtime_ns)
                if _checked_entries.get(path) == key:
                    continue
                with open(path, "rb") as file:
                    problem = _entry_problem(file.read())
            except FileNotFoundError:
                continue  # purged since the listing: DeltaTable reads the log as it is now
            except OSError as exc:
                raise LakeError(f"table {name}: cannot read its Delta log entry {path}: {exc.strerror or exc}") from exc
            if problem is not None:
                raise LakeError(f"table {name} is corrupt: Delta log entry {path} {problem}; restore that file "
                                f"from a backup, {_rollback(log, number, max(commits))}")
            _checked_entries[path] = key

    def version(self, spec: TableSpec | str) -> int | None:
        table = self.table(spec)
        return None if table is None else table.version()

    def read(
        self,
        spec: TableSpec,
        version: int | None = None,
        columns: list[str] | None = None,
        partitions: Iterable[str] | None = None,
        filter: pads.Expression | None = None,
    ) -> pa.Table:
        """Rows of ``spec`` at ``version``; an empty table of the right schema if it does not exist."""
        table = self.table(spec, version)
        schema = spec.schema if columns is None else pa.schema([spec.schema.field(c) for c in columns])
        if table is None:
            return schema.empty_table()
        expr = filter
        if partitions is not None:
            import pyarrow.dataset as pads

            part_expr = pads.field(spec.partition_by[0]).isin(sorted(set(partitions)))
            expr = part_expr if expr is None else expr & part_expr
        # A table written by an older pairlake lacks the columns added since: they read as null.
        stored = set(table.schema().to_arrow().names)
        data = self._dataset(spec, table).to_table(columns=[n for n in schema.names if n in stored], filter=expr)
        for missing in (f for f in schema if f.name not in stored):
            data = data.append_column(missing, pa.nulls(data.num_rows, missing.type))
        return data.select(schema.names).cast(schema)

    def batches(self, spec: TableSpec, columns: list[str], batch_rows: int = 65_536) -> Iterator[pa.RecordBatch]:
        """The latest version's ``columns`` a batch at a time, for scans that aggregate or select as
        they go and so never hold a table (nothing when the table does not exist yet)."""
        dataset = self.dataset(spec)
        if dataset is not None:
            yield from dataset.to_batches(columns=columns, batch_size=batch_rows)

    def dataset(self, spec: TableSpec, version: int | None = None) -> pads.Dataset | None:
        """The table's files at ``version`` as a pyarrow dataset (to stream batches), or None."""
        table = self.table(spec, version)
        return None if table is None else self._dataset(spec, table)

    def _dataset(self, spec: TableSpec, table: DeltaTable) -> pads.Dataset:
        # pyarrow's own filesystem: scanning through delta-rs's filesystem handler on pyarrow's
        # threads aborted the process at exit ("terminate called without an active exception")
        # in about 1 run of 5 (deltalake 1.6.6).
        name = spec if isinstance(spec, str) else spec.name
        fs, _ = self.filesystem
        return table.to_pyarrow_dataset(filesystem=pafs.SubTreeFileSystem(self.location(lake_layout.table(name)), fs))

    def history(self, spec: TableSpec | str) -> list[dict[str, Any]]:
        table = self.table(spec)
        return [] if table is None else table.history()

    def lineage(self, spec: TableSpec | str, version: int | None = None) -> Lineage | None:
        """The lineage recorded with ``version`` (latest when None)."""
        for entry in self.history(spec):
            if version is None or entry.get("version") == version:
                return Lineage.from_commit(entry)
        return None

    # -- writing -------------------------------------------------------------------------------

    def _conform(self, spec: TableSpec, data: pa.Table) -> pa.Table:
        missing = set(spec.schema.names) - set(data.column_names)
        if missing:
            raise LakeError(f"rows for table {spec.name} lack columns: {', '.join(sorted(missing))}")
        return data.select(spec.schema.names).cast(spec.schema)

    def commit_properties(self, lineage: Lineage) -> CommitProperties:
        return CommitProperties(custom_metadata=lineage.commit_metadata())

    def replace_partitions(
        self,
        spec: TableSpec,
        data: pa.Table,
        partition_values: Iterable[str],
        lineage: Lineage,
        also_match: dict[str, str] | None = None,
    ) -> int:
        """Replace exactly ``partition_values`` of ``spec`` with ``data`` in one commit.

        ``also_match`` narrows the replaced rows further by column equality (a stage replacing only
        its own rows of a shared table such as ``stage_stats``).
        """
        if not spec.partition_by:
            raise LakeError(f"table {spec.name} is not partitioned; use overwrite()")
        column = spec.partition_by[0]
        values = sorted(set(partition_values))
        if not values:
            raise LakeError(f"no partitions named for a write to {spec.name}")
        data = self._conform(spec, data)
        predicate = partition_predicate(column, values)
        for col, value in sorted((also_match or {}).items()):
            predicate += f" AND {col} = {_sql_literal(value)}"
            if data.num_rows and set(data.column(col).unique().to_pylist()) != {value}:
                raise LakeError(f"rows for {spec.name} must all have {col} = {value!r}")
        stray = set(data.column(column).unique().to_pylist()) - set(values)
        if stray:
            raise LakeError(f"rows for {spec.name} fall outside the partitions being replaced: {sorted(stray)[:3]}")
        return self._write(spec, data, "overwrite", lineage, predicate=predicate)

    def rewrite(self, spec: TableSpec, rows: pa.RecordBatchReader, lineage: Lineage, partitions: Iterable[str] = ()) -> int:
        """Replace ``partitions`` (none named: the whole table) with the streamed ``rows`` (already
        of the table's schema) in one commit, without holding them all in memory."""
        values = sorted(set(partitions))
        if values and not spec.partition_by:
            raise LakeError(f"table {spec.name} is not partitioned")
        predicate = partition_predicate(spec.partition_by[0], values) if values else None
        return self._write(spec, rows, "overwrite", lineage, predicate=predicate)

    def overwrite(self, spec: TableSpec, data: pa.Table, lineage: Lineage) -> int:
        """Replace the whole table in one commit."""
        return self._write(spec, self._conform(spec, data), "overwrite", lineage)

    def append(self, spec: TableSpec, data: pa.Table, lineage: Lineage) -> int:
        return self._write(spec, self._conform(spec, data), "append", lineage)

    def _write(self, spec: TableSpec, data: pa.Table | pa.RecordBatchReader, mode: str, lineage: Lineage,
               predicate: str | None = None) -> int:
        if self.is_local:
            self.ensure_writable()
        if isinstance(data, pa.Table):  # streamed rewrites are the purge's own, already without them
            check_commit(self, spec, [data], lineage.removals_version)
        exists = self.table(spec) is not None
        write_deltalake(
            self.uri(spec),
            data,
            mode=mode,  # type: ignore[arg-type]
            # A predicate on a table that does not exist yet is meaningless: the first write creates it.
            predicate=predicate if exists else None,
            partition_by=list(spec.partition_by) or None,
            storage_options=self.storage_options,
            commit_properties=self.commit_properties(lineage),
            # A table written by an older pairlake gains the columns added since (nullable, so
            # its earlier rows read as null); _conform has already refused anything else.
            schema_mode="merge" if exists else None,
            writer_properties=row_groups_for(spec),
        )
        return self.version(spec)  # type: ignore[return-value]

    def _check_added_files(self, spec: TableSpec, add_actions: list[AddAction], lineage: Lineage) -> None:
        """The removal fence over files written by others (Spark executors), read column by column."""
        if not add_actions or pinned_version(self) == lineage.removals_version:
            return
        import pyarrow.dataset as pads  # not before: a commit with no removal since its pin reads no file

        filesystem, _ = self.filesystem
        base = self.location(lake_layout.table(spec.name))
        columns = [c for c in ("uid", "url", "final_url", "status", "sha256", "md5") if c in spec.schema.names]
        paths = [f"{base}/{urllib.parse.unquote(a.path)}" for a in add_actions]
        # Batch by batch: a run's written rows never sit in the committing process at once.
        rows = pads.dataset(paths, format="parquet", filesystem=filesystem).to_batches(columns=columns)
        check_commit(self, spec, rows, lineage.removals_version)

    def commit_files(
        self,
        spec: TableSpec,
        add_actions: list[AddAction],
        lineage: Lineage,
        replace_partitions: Iterable[str] | None = None,
        overwrite: bool = False,
    ) -> int:
        """Commit Parquet files already written into the table directory (by Spark executors).

        With ``replace_partitions`` the files of those partitions are removed in the same commit;
        with ``overwrite`` every current file is.
        """
        if replace_partitions is not None and spec.partition_by:  # before the fence reads every file
            stray = {a.partition_values.get(spec.partition_by[0]) for a in add_actions} - set(replace_partitions)
            if stray:
                raise LakeError(f"rows for {spec.name} fall outside the partitions being replaced: {sorted(map(str, stray))[:3]}")
        self._check_added_files(spec, add_actions, lineage)
        schema = Schema.from_arrow(spec.schema)
        partition_by = list(spec.partition_by) or None
        props = self.commit_properties(lineage)
        table = self.table(spec)
        if table is None:
            create_table_with_add_actions(
                self.uri(spec), schema, add_actions, mode="append", partition_by=partition_by,
                storage_options=self.storage_options, commit_properties=props,
            )
        elif overwrite:
            table.create_write_transaction(add_actions, mode="overwrite", schema=schema, partition_by=partition_by,
                                           commit_properties=props)
        elif replace_partitions is not None:
            values = sorted(set(replace_partitions))
            if not spec.partition_by or not values:
                raise LakeError(f"replace_partitions needs a partitioned table and partition values ({spec.name})")
            table.create_write_transaction(
                add_actions, mode="overwrite", schema=schema, partition_by=partition_by,
                partition_filters=[(spec.partition_by[0], "in", values)], commit_properties=props,
            )
        else:
            table.create_write_transaction(add_actions, mode="append", schema=schema, partition_by=partition_by,
                                           commit_properties=props)
        return self.version(spec)  # type: ignore[return-value]

