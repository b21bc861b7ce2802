"""The kept set: pairs whose CLIP image–text cosine clears the model's threshold (LAION's filter)."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from gpu_jobs.clip_scoring import kept_mask
from infra.tables import KEPT_PAIRS


def select_kept(candidates: pa.Table, images: pa.Table, scores: pa.Table, threshold: float) -> pa.Table:
    """Join candidates, successful images and scores; keep similarity > threshold (KEPT_PAIRS rows)."""
    passing = scores.filter(pa.array(kept_mask(scores["similarity"], threshold))).select(["uid", "similarity", "model_id"])
    ok = images.filter(pc.equal(images["status"], "ok")).select(
        ["uid", "width", "height", "original_width", "original_height", "sha256", "sha1", "md5"]
    )
    pairs = candidates.select(["uid", "warc_file", "url", "caption", "language"])
    kept = pairs.join(passing, "uid", join_type="inner").join(ok, "uid", join_type="inner")
    return kept.select(KEPT_PAIRS.schema.names).cast(KEPT_PAIRS.schema).sort_by("uid")
