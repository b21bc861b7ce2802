"""A small lake for the Spark scoring tests: images of several WARC files, their captions, and a
random-initialised demo-architecture checkpoint (scoring needs weights, not a trained model)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import torch

from gpu_jobs.clip_model import load_clip
from infra.config import ClipConfig
from infra.delta_store import Lake, Lineage
from infra.tables import CANDIDATES, IMAGES
from tests.imaging import captions_for, images_table

WARC_FILES = 4  # each fresh Python worker that scores imports open_clip (~15 s here): few tasks


def zero_shot_scorers(config: ClipConfig) -> tuple[dict, dict[str, str]]:
    """Zero-shot punsafe and aesthetic scorers over ``config``'s model, as the image_tags asset loads them."""
    from gpu_jobs.tagging import load_scorers
    from infra.config import TagScorerConfig

    tags = {"punsafe": TagScorerConfig(positive=("a red dog",), negative=("a blue house",)),
            "aesthetic": TagScorerConfig(positive=("a photo of a tree",), negative=("a cat",))}
    return load_scorers(tags, config, 64, Path("/nonexistent"))


def random_checkpoint_config(root: Path) -> ClipConfig:
    """The demo architecture with seeded random weights, saved as a checkpoint executors can load."""
    torch.manual_seed(0)
    clip = load_clip(ClipConfig(model="pairlake-demo-tiny", pretrained="", device="cpu"), allow_random_init=True)
    checkpoint = root / "random-tiny.pt"
    torch.save(clip.model.state_dict(), checkpoint)
    return ClipConfig(model="pairlake-demo-tiny", pretrained="", checkpoint=str(checkpoint), batch_size=3, workers=0)


def write_scoring_lake(root: Path, images: pa.Table, captions: dict[str, str]) -> tuple[Lake, list[str]]:
    """A lake at ``root`` holding ``images`` (IMAGES rows) and a candidates row with its caption for
    each; returns it and its WARC files."""
    n = images.num_rows
    uids, names = images["uid"].to_pylist(), images["warc_file"].to_pylist()
    rows = {"uid": uids, "url": images["url"].to_pylist(), "caption": [captions[u] for u in uids],
            "page_url": ["http://page.example/"] * n, "crawl_id": ["test"] * n, "warc_file": names,
            "record_offset": list(range(n))}
    lake = Lake(str(root))
    partitions = sorted(set(names))
    candidates = pa.Table.from_pydict({f.name: rows.get(f.name, [None] * n) for f in CANDIDATES.schema},
                                      schema=CANDIDATES.schema)
    lake.replace_partitions(CANDIDATES, candidates, partitions, Lineage())
    lake.replace_partitions(IMAGES, images, partitions, Lineage())
    return lake, partitions


def build_scoring_lake(root: Path) -> tuple[Lake, ClipConfig, list[str]]:
    config = random_checkpoint_config(root)
    images = images_table(4 * WARC_FILES, failed=2)
    names = [f"w{i % WARC_FILES}.warc.gz" for i in range(images.num_rows)]
    images = images.set_column(images.schema.get_field_index("warc_file"), "warc_file", pa.array(names))
    lake, partitions = write_scoring_lake(root / "lake", images, captions_for(images))
    return lake, config, partitions
