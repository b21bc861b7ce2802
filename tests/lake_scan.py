"""A byte scan of a lake: which files (or objects, in a bucket) hold a needle, raw or inside
Parquet's compressed columns."""

from __future__ import annotations

import io
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from infra.delta_store import Lake


def _parquet_values(data: bytes) -> list[bytes]:
    table = pq.read_table(io.BytesIO(data))
    values: list[bytes] = []
    for column in table.columns:
        if pa.types.is_binary(column.type) or pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            values += [v if isinstance(v, bytes) else v.encode() for v in column.to_pylist() if v is not None]
        elif not (pa.types.is_primitive(column.type) or pa.types.is_temporal(column.type)):
            values.append(str(column.to_pylist()).encode())  # nested (checkpoint actions, maps): as text
    return values


def files_holding(root: Path | Lake, needle: bytes) -> list[str]:
    """Every file under ``root`` (a folder, or a lake's root on its store: every object under the
    prefix) whose bytes contain ``needle``; Parquet files are also decoded, so compression cannot
    hide a match. Names are relative to the root."""
    fs, base = root.filesystem if isinstance(root, Lake) else (pafs.LocalFileSystem(), str(root))
    found = []
    for info in sorted(fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True)),
                       key=lambda i: i.path):
        if info.type != pafs.FileType.File:
            continue
        with fs.open_input_stream(info.path, compression=None) as fh:
            data = fh.read()
        hit = needle in data
        if not hit and info.path.endswith(".parquet"):
            hit = any(needle in value for value in _parquet_values(data))
        if hit:
            found.append(info.path[len(base):].lstrip("/"))
    return found
