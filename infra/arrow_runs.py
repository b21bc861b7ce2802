"""Runs of equal keys in a stream of Arrow batches sorted by that key (a Spark task's input after
``sortWithinPartitions``): the unit a task works on when one partition holds several groups."""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np
import pyarrow as pa


def key_runs(batches: Iterator[pa.RecordBatch], column: str) -> Iterator[tuple[Any, pa.RecordBatch]]:
    """(key, slice) for each run of equal ``column`` values, in order; a key's rows may come in
    several consecutive slices when they span batches."""
    for batch in batches:
        if batch.num_rows == 0:
            continue
        keys = batch.column(column).to_numpy(zero_copy_only=False)
        bounds = [0, *(np.flatnonzero(keys[1:] != keys[:-1]) + 1), len(keys)]
        for start, end in zip(bounds[:-1], bounds[1:]):
            yield batch.column(column)[start].as_py(), batch.slice(start, end - start)
