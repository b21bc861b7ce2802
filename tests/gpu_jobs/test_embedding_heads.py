"""Scorers over stored CLIP embeddings: LAION's published head layouts, trained heads, zero-shot prompts.

The published layouts are checked against reference modules written here exactly as their sources
define them (christophschuhmann/improved-aesthetic-predictor simple_inference.py ``MLP``;
LAION-AI/CLIP-based-NSFW-Detector h14_nsfw_model.py ``H14_NSFW_Detector``): a state dict saved from
the reference must load unchanged and score the same.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gpu_jobs import synthetic_shapes as shapes
from gpu_jobs.embedding_format import embedding_from_bytes, embedding_to_bytes
from gpu_jobs.demo_model import as_scored, load_demo_model
from gpu_jobs.embedding_heads import (
    EmbeddingHead,
    HeadError,
    HeadSpec,
    ZeroShotScorer,
    load_head,
    model_family,
    save_head,
    train_head,
)
from infra.config import ConfigError


class PublishedAestheticMLP(nn.Module):
    """improved-aesthetic-predictor's MLP(768): ReLUs commented out in the original."""

    def __init__(self, input_size: int = 768) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(input_size, 1024),
            nn.Dropout(0.2),
            nn.Linear(1024, 128),
            nn.Dropout(0.2),
            nn.Linear(128, 64),
            nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )

    def forward(self, x):
        return self.layers(x)


class PublishedH14NSFW(nn.Module):
    """CLIP-based-NSFW-Detector's H14_NSFW_Detector(1024)."""

    def __init__(self, input_size: int = 1024) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(input_size, 1024),
            nn.ReLU(),
            nn.Dropout(0.2),
            nn.Linear(1024, 2048),
            nn.ReLU(),
            nn.Dropout(0.2),
            nn.Linear(2048, 1024),
            nn.ReLU(),
            nn.Dropout(0.2),
            nn.Linear(1024, 256),
            nn.ReLU(),
            nn.Dropout(0.2),
            nn.Linear(256, 128),
            nn.ReLU(),
            nn.Dropout(0.2),
            nn.Linear(128, 16),
            nn.Linear(16, 1),
        )

    def forward(self, x):
        return self.layers(x)


def _published_file(tmp_path, reference: nn.Module, filename: str):
    path = tmp_path / filename
    torch.save(reference.state_dict(), path)  # a plain state dict, as the published .pth files are
    return path


def _unit(rng: np.random.Generator, rows: int, width: int) -> np.ndarray:
    x = rng.normal(size=(rows, width)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize(
    ("reference", "filename", "layout", "width", "family"),
    [
        (PublishedAestheticMLP, "sac+logos+ava1-l14-linearMSE.pth", "laion-aesthetic-v2", 768, "ViT-L-14"),
        (PublishedH14NSFW, "h14_nsfw.pth", "laion-nsfw-h14", 1024, "ViT-H-14"),
    ],
)
def test_published_state_dict_loads_by_layout_and_scores_like_the_original(tmp_path, reference, filename, layout, width, family):
    torch.manual_seed(0)
    original = reference().eval()
    path = _published_file(tmp_path, original, filename)

    head = load_head(path, layout=layout, device="cpu")
    assert head.spec == HeadSpec(path.stem, layout, width, family, "score", True)
    assert list(head.state_dict()) == list(original.state_dict())

    # The original scripts normalise fp32 embeddings and call the MLP; stored fp16 ones go in here.
    stored = _unit(np.random.default_rng(1), 5, width).astype(np.float16)
    with torch.no_grad():
        expected = original(F.normalize(torch.from_numpy(stored.astype(np.float32)), dim=-1)).squeeze(-1).numpy()
    scores = head.score(stored)
    assert scores.dtype == np.float32 and scores.shape == (5,)
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-6)

    head.check_compatible(f"{family}/laion2b_s32b_b79k", width)  # the pretrained tag does not matter
    head.check_compatible(f"{family}-quickgelu/openai", width)  # nor does OpenAI's quick_gelu naming


def test_aesthetic_head_refuses_other_widths_and_model_families(tmp_path):
    path = _published_file(tmp_path, PublishedAestheticMLP(), "sac+logos+ava1-l14-linearMSE.pth")
    head = load_head(path, layout="laion-aesthetic-v2", device="cpu")

    with pytest.raises(HeadError) as wrong_width:
        head.check_compatible("ViT-L-14/openai", 512)
    message = str(wrong_width.value)
    assert "\n" not in message
    assert "sac+logos+ava1-l14-linearMSE" in message and "768-wide ViT-L-14" in message and "512-wide" in message

    wrong_family = r"takes 768-wide ViT-L-14 image embeddings, given 768-wide embeddings of ViT-B-32/openai"
    with pytest.raises(HeadError, match=wrong_family):
        head.check_compatible("ViT-B-32/openai", 768)
    with pytest.raises(HeadError, match=r"shape \[rows, 768\], given \[3, 512\]"):
        head.score(np.zeros((3, 512), dtype=np.float32))
    assert issubclass(HeadError, ConfigError)


def test_weights_of_another_layout_and_missing_sidecars_are_refused_in_one_line(tmp_path):
    nsfw = _published_file(tmp_path, PublishedH14NSFW(), "h14_nsfw.pth")
    with pytest.raises(HeadError, match=r"does not fit layout 'laion-aesthetic-v2' at width 768: .*\(\+\d+ more\)$"):
        load_head(nsfw, layout="laion-aesthetic-v2")
    with pytest.raises(HeadError, match=r"has no sidecar h14_nsfw.json: name its layout \(one of linear, mlp, "):
        load_head(nsfw)
    with pytest.raises(HeadError, match=r"layout 'linear' implies no input width or CLIP model: .* needs a sidecar"):
        load_head(nsfw, layout="linear")
    with pytest.raises(HeadError, match=r"unknown layout 'laion-nsfw'; known: linear, mlp, laion-aesthetic-v2, laion-nsfw-h14"):
        load_head(nsfw, layout="laion-nsfw")


def test_model_family_drops_tag_and_quickgelu():
    assert model_family("ViT-L-14-quickgelu/openai") == "ViT-L-14"
    assert model_family("pairlake-demo-tiny/sha256:0123456789ab") == "pairlake-demo-tiny"
    assert model_family("ViT-H-14") == "ViT-H-14"


def _separable(seed: int, rows: int = 400, width: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Unit embeddings labelled by the side of a hyperplane, with a margin around it."""
    rng = np.random.default_rng(seed)
    x = _unit(rng, rows * 2, width)
    direction = _unit(rng, 1, width)[0]
    side = x @ direction
    keep = np.abs(side) > 0.1
    return x[keep][:rows], (side[keep][:rows] > 0).astype(np.int64)


def test_trained_head_generalises_and_round_trips_through_save_and_load(tmp_path):
    x, y = _separable(seed=3)
    head, report = train_head(x, y, "clean-vs-watermark", "pairlake-demo-tiny/sha256:0123456789ab", steps=300)
    assert report.held_out_accuracy >= 0.95
    assert report.n_train + report.n_holdout == len(y) and report.positives == int(y.sum())
    assert report.n_holdout == pytest.approx(0.2 * len(y), abs=2)

    weights = Path(save_head(head, tmp_path / "heads"))
    assert sorted(p.name for p in weights.parent.iterdir()) == ["clean-vs-watermark.json", "clean-vs-watermark.pt"]
    (tmp_path / "plain").touch()
    assert weights.stat().st_mode == (tmp_path / "plain").stat().st_mode  # readable as any file the umask allows
    sidecar = json.loads(weights.with_suffix(".json").read_text())
    assert sidecar["layout"] == "linear" and sidecar["input_width"] == 32 and sidecar["output"] == "probability"

    loaded = load_head(weights)
    assert loaded.spec == head.spec
    scores = head.score(x)
    assert ((scores >= 0) & (scores <= 1)).all()
    np.testing.assert_array_equal(loaded.score(x), scores)
    loaded.check_compatible("pairlake-demo-tiny/sha256:fedcba987654", 32)


def test_mlp_head_trains_and_its_sidecar_carries_the_hidden_widths(tmp_path):
    x, y = _separable(seed=4)
    head, report = train_head(x, y, "mlp-head", "ViT-B-32", layout="mlp", hidden=[16], steps=200)
    assert report.held_out_accuracy >= 0.95
    loaded = load_head(save_head(head, tmp_path))
    assert loaded.spec.hidden == (16,)
    np.testing.assert_array_equal(loaded.score(x), head.score(x))
    with pytest.raises(HeadError, match="layout 'mlp' needs hidden widths"):
        EmbeddingHead(HeadSpec("no-hidden", "mlp", 8, "ViT-B-32", "probability", True))


def test_training_is_deterministic_from_the_seed():
    x, y = _separable(seed=5, rows=120)
    torch.manual_seed(123)
    before = torch.rand(1)
    first, first_report = train_head(x, y, "a", "ViT-B-32", seed=7, steps=50)
    second, second_report = train_head(x, y, "a", "ViT-B-32", seed=7, steps=50)
    other, _ = train_head(x, y, "a", "ViT-B-32", seed=8, steps=50)
    assert first_report == second_report
    for (key, a), b in zip(first.state_dict().items(), second.state_dict().values(), strict=True):
        assert torch.equal(a, b), key
    assert not torch.equal(first.layers[0].weight, other.layers[0].weight)
    torch.manual_seed(123)
    assert torch.equal(torch.rand(1), before)  # the caller's RNG state is untouched


def test_one_class_and_too_few_rows_are_refused():
    x = _unit(np.random.default_rng(0), 50, 8)
    with pytest.raises(HeadError, match=r"all 50 labels are 0; need rows labelled 0 and 1"):
        train_head(x, np.zeros(50), "unsafe", "ViT-B-32")
    with pytest.raises(HeadError, match=r"47 rows labelled 0 and 3 labelled 1; need at least 5 of each"):
        train_head(x, np.r_[np.zeros(47), np.ones(3)], "unsafe", "ViT-B-32")
    with pytest.raises(HeadError, match=r"labels must be 0 or 1, found \[2\]"):
        train_head(x, np.r_[np.zeros(45, dtype=int), np.full(5, 2)], "unsafe", "ViT-B-32")


# The zero-shot test needs the trained demo model (session fixture, minutes on first use): it runs last.
@torch.no_grad()
def test_zero_shot_scorer_prefers_its_positive_prompts_on_demo_model_embeddings(demo_checkpoint):
    clip = load_demo_model(demo_checkpoint)
    scorer = ZeroShotScorer(
        "red-circle",
        positive_prompts=["a red circle", "a photo of a red circle"],
        negative_prompts=["a blue square", "a red square", "a blue circle", "a green triangle", "a yellow star"],
    ).fit(clip)

    def stored_embeddings(colour: str, shape: str) -> np.ndarray:
        rng = np.random.default_rng([11, len(colour), len(shape)])
        images = torch.stack([as_scored(shapes.render(colour, shape, rng), clip.preprocess, rng) for _ in range(8)])
        emb = F.normalize(clip.model.encode_image(images), dim=-1).numpy()
        dim = clip.embedding_dim
        return np.stack([embedding_from_bytes(embedding_to_bytes(e), dim) for e in emb])  # as stored: float16

    red_circles = scorer.score(stored_embeddings("red", "circle"))
    blue_squares = scorer.score(stored_embeddings("blue", "square"))
    assert red_circles.dtype == np.float32
    assert red_circles.min() > blue_squares.max()
    assert np.median(red_circles) > 0.9 and blue_squares.max() < 0.1  # median: one odd render may sit lower

    scorer.check_compatible(clip.model_id, clip.embedding_dim)
    wrong = r"fitted with pairlake-demo-tiny/sha256:\w+ \(64-wide\), given 64-wide embeddings of pairlake-demo-tiny/other"
    with pytest.raises(HeadError, match=wrong):
        scorer.check_compatible("pairlake-demo-tiny/other", 64)


def test_tagging_imports_no_open_clip():
    """A Spark task that tags imports gpu_jobs.tagging and unpickles heads: open_clip would cost
    each fresh Python worker ~15 s here (torch alone ~5 s)."""
    import subprocess
    import sys

    script = ("import sys, gpu_jobs.tagging, gpu_jobs.embedding_heads, gpu_jobs.devices; "
              "print(sorted(m for m in ('open_clip', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "['torch']"
