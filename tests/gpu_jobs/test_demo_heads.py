"""The demo's tag heads: trained on synthetic overlays over the demo model, accurate, and cached."""

import json

import pytest

from gpu_jobs import demo_heads as heads_module
from gpu_jobs.demo_model import MODEL_NAME
from gpu_jobs.embedding_heads import HeadError, load_head


def test_heads_are_accurate_on_held_out_renders(demo_heads):
    report = json.loads((demo_heads / heads_module.REPORT_NAME).read_text())
    assert set(report["heads"]) == set(heads_module.HEADS)
    for tag, head in report["heads"].items():
        assert head["held_out_accuracy"] >= 0.85, (tag, head)
        assert head["n_holdout"] >= 200


def test_heads_load_for_the_demo_model_only(demo_heads):
    for tag in heads_module.HEADS:
        head = load_head(demo_heads / f"{tag}.pt")
        head.check_compatible(MODEL_NAME, 64)
        with pytest.raises(HeadError, match="64-wide"):
            head.check_compatible("ViT-B-32", 512)


def test_cached_heads_are_reused(demo_heads, demo_checkpoint):
    before = (demo_heads / "punsafe.pt").stat().st_mtime_ns
    assert heads_module.ensure_demo_heads(demo_checkpoint.parent) == demo_heads
    assert (demo_heads / "punsafe.pt").stat().st_mtime_ns == before
