"""A byte scan of a folder: which files hold a needle, raw or inside Parquet's compressed columns."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


def _parquet_values(path: Path) -> list[bytes]:
    table = pq.read_table(path)
    values: list[bytes] = []
    for column in table.columns:
        if pa.types.is_binary(column.type) or pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            values += [v if isinstance(v, bytes) else v.encode() for v in column.to_pylist() if v is not None]
        elif not (pa.types.is_primitive(column.type) or pa.types.is_temporal(column.type)):
            values.append(str(column.to_pylist()).encode())  # nested (checkpoint actions, maps): as text
    return values


def files_holding(root: Path, needle: bytes) -> list[str]:
    """Every file under ``root`` whose bytes contain ``needle``; Parquet files are also decoded, so
    compression cannot hide a match."""
    found = []
    for path in sorted(Path(root).rglob("*")):
        if not path.is_file():
            continue
        data = path.read_bytes()
        hit = needle in data
        if not hit and path.suffix == ".parquet":
            hit = any(needle in value for value in _parquet_values(path))
        if hit:
            found.append(str(path.relative_to(root)))
    return found
