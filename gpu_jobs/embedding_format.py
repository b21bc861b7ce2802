"""The stored embedding format: float16 little-endian bytes, one binary value per row (tables
clip_scores and the tables derived from it). numpy and pyarrow only, so Spark tasks that read
embeddings (dedup, the kNN index) need no model stack."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

EMBEDDING_DTYPE = np.dtype("<f2")  # float16, little-endian: the on-disk embedding format


def embedding_to_bytes(embedding: np.ndarray) -> bytes:
    """One embedding vector -> its stored form (float16 little-endian)."""
    return np.asarray(embedding).astype(EMBEDDING_DTYPE).tobytes()


def embedding_from_bytes(data: bytes, dim: int) -> np.ndarray:
    """A stored embedding -> float32 vector of length ``dim``."""
    if len(data) != dim * EMBEDDING_DTYPE.itemsize:
        raise ValueError(f"embedding has {len(data)} bytes, expected {dim * EMBEDDING_DTYPE.itemsize} for dim {dim}")
    return np.frombuffer(data, dtype=EMBEDDING_DTYPE).astype(np.float32)


def embeddings_from_column(column: pa.Array | pa.ChunkedArray, dim: int) -> np.ndarray:
    """A whole embedding column -> float32 matrix [rows, dim], without a Python loop (for dedup/kNN)."""
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    matrices = [_chunk_matrix(chunk, dim) for chunk in chunks]
    return np.concatenate(matrices) if matrices else np.empty((0, dim), dtype=np.float32)


def _chunk_matrix(chunk: pa.Array, dim: int) -> np.ndarray:
    row_bytes = dim * EMBEDDING_DTYPE.itemsize
    if chunk.null_count:
        raise ValueError("embedding column has nulls")
    # All values have the same length, so the data buffer is the row-major matrix itself.
    offsets = np.frombuffer(chunk.buffers()[1], dtype=np.int32, count=len(chunk) + 1, offset=chunk.offset * 4)
    if np.any(np.diff(offsets) != row_bytes):
        raise ValueError(f"embedding values must all be {row_bytes} bytes (dim {dim}, float16)")
    data = np.frombuffer(chunk.buffers()[2], dtype=np.uint8)[offsets[0] : offsets[-1]]
    return data.view(EMBEDDING_DTYPE).reshape(len(chunk), dim).astype(np.float32)
