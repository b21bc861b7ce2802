"""Synthetic CLIP-like embeddings for index and dedup tests."""

from __future__ import annotations

import numpy as np


def clustered(n: int, dim: int = 64, centres: int = 200, noise: float = 0.5, seed: int = 0) -> np.ndarray:
    """Gaussian blobs around random unit centres, L2-normalised: cosine ~0.8 within a blob, ~0
    across, so an IVF index has structure to find."""
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, dim)).astype(np.float32)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    x = c[rng.integers(0, centres, n)] + noise / np.sqrt(dim) * rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)
