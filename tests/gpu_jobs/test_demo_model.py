"""The demo CLIP model: loadable by open_clip, accurate on held-out classes, and separating matching
from mismatching captions of sample-crawl images at the configured threshold.

The trained model comes from the session fixture ``demo_checkpoint`` (tests/conftest.py): the one
committed in infra/demo_model, retrained there (about ten minutes) when the code that shapes it changed.
"""

import io
import json
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import gpu_jobs.demo_model as dm
from gpu_jobs.clip_model import MODEL_CONFIG_DIR
from infra.config import DownloadConfig, load_config
from infra.image_server import load_site
from infra.sample_crawl import generate_sample_crawl
from spark_jobs.download.resizer import resize_image


@pytest.fixture(scope="module")
def demo_clip(demo_checkpoint):
    return dm.load_demo_model(demo_checkpoint)


def test_checkpoint_loads_with_plain_open_clip(demo_checkpoint):
    open_clip.add_model_config(MODEL_CONFIG_DIR)
    model, _, preprocess = open_clip.create_model_and_transforms(dm.MODEL_NAME, pretrained=str(demo_checkpoint))
    image = preprocess(Image.new("RGB", (256, 256), "white")).unsqueeze(0)
    assert image.shape == (1, 3, 64, 64)
    with torch.no_grad():
        assert model.encode_image(image).shape == (1, 64)


def test_the_committed_model_matches_the_training_code(committed_model_was_current):
    # Edits to what shapes the weights retrain the model in place: commit the new files, or every
    # fresh clone trains it again.
    assert committed_model_was_current, "infra/demo_model was stale: commit the files this run retrained there"


def test_report_is_current_and_meets_the_targets(demo_checkpoint):
    report = dm.read_report(demo_checkpoint.parent)
    assert report.fingerprint == dm.fingerprint(0, dm.DEFAULT_STEPS)
    # A few minutes of CPU training: colours are near perfect, shapes mostly right.
    assert report.held_out_accuracy >= 0.8 and report.matched_cos - report.mismatched_cos > 0.5
    assert report.overlay_accuracy >= 0.9  # the tag heads rely on overlays showing in the embeddings


def test_zero_shot_on_held_out_classes_and_caption_cosines(demo_clip):
    # A seed the training run never rendered: fresh images, through server encoding and border resize.
    metrics = dm.evaluate(demo_clip, seed=1, per_class=10)
    assert metrics["held_out_accuracy"] >= 0.8
    assert metrics["matched_cos"] - metrics["mismatched_cos"] > 0.5


@torch.no_grad()
def test_sample_crawl_captions_fall_on_the_right_side_of_the_threshold(demo_clip, tmp_path):
    crawl = generate_sample_crawl(tmp_path, "http://127.0.0.1:9", pages=30, seed=5)
    site = load_site(crawl.site_dir)
    threshold = load_config(profile="demo").clip_threshold()
    scored = {"match": [], "mismatch": []}
    for url, entry in crawl.images.items():
        if entry["download"] != "ok" or entry["clip"] is None:
            continue
        resource = site[urlsplit(entry.get("final_url", url)).path]
        with Image.open(io.BytesIO(resize_image(resource.body, DownloadConfig()).data)) as downloaded:
            pixels = demo_clip.preprocess(downloaded.convert("RGB")).unsqueeze(0)
        image = F.normalize(demo_clip.model.encode_image(pixels), dim=-1)
        text = F.normalize(demo_clip.model.encode_text(demo_clip.tokenizer([entry["caption"]])), dim=-1)
        scored[entry["clip"]].append(float(image @ text.T))
    matches, mismatches = np.array(scored["match"]), np.array(scored["mismatch"])
    assert len(matches) > 30 and len(mismatches) > 20
    # Clear separation, not a perfect one: most matches kept, few mismatches.
    assert (matches > threshold).mean() >= 0.7
    assert (mismatches > threshold).mean() <= 0.2


def test_training_is_deterministic_from_the_seed(tmp_path, monkeypatch):
    monkeypatch.setattr(dm, "POOL_SIZE", 16)
    monkeypatch.setattr(dm, "BATCH_SIZE", 8)
    monkeypatch.setattr(dm, "EVAL_PER_CLASS", 1)

    def weights(seed: int, name: str) -> dict[str, torch.Tensor]:
        report = dm.train_demo_model(tmp_path / name, seed=seed, steps=2, progress=False)
        assert json.loads((tmp_path / name / dm.REPORT_NAME).read_text())["fingerprint"] == report.fingerprint
        return torch.load(report.checkpoint, weights_only=True)

    first, again, other = weights(0, "a"), weights(0, "b"), weights(1, "c")
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)


def test_ensure_trains_only_when_missing_or_stale(tmp_path, monkeypatch):
    calls = []

    def fake_train(out_dir: Path, seed: int, steps: int, progress: bool) -> None:
        calls.append(seed)
        (out_dir / dm.CHECKPOINT_NAME).write_bytes(b"weights")
        (out_dir / dm.REPORT_NAME).write_text(json.dumps({"fingerprint": dm.fingerprint(seed, steps)}))

    monkeypatch.setattr(dm, "train_demo_model", fake_train)
    path = dm.ensure_demo_model(tmp_path)
    assert path == tmp_path / dm.CHECKPOINT_NAME and calls == [0]
    dm.ensure_demo_model(tmp_path)
    assert calls == [0]  # cached
    dm.ensure_demo_model(tmp_path, seed=1)
    assert calls == [0, 1]  # another seed is another model
    (tmp_path / dm.REPORT_NAME).write_text(json.dumps({"fingerprint": "stale"}))
    dm.ensure_demo_model(tmp_path, seed=1)
    assert calls == [0, 1, 1]  # the training code or config changed

