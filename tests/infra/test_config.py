"""Configuration: embedded defaults, file overrides, and one clear line for every bad value."""

import pytest

from infra.config import ConfigError, load_config


def test_defaults_load_and_name_the_demo_model():
    config = load_config()
    assert config.clip.model == "pairlake-demo-tiny" and config.clip_threshold() == 0.5
    assert config.clip.thresholds["ViT-B-32"] == 0.28


def test_tag_scorers_and_variants_are_stated_whole(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[tags.punsafe]\npositive = ['nsfw']\nnegative = ['sfw']\n[curation.variants]\nresearch-safe = 0.3\n"
                    "[index]\nvariant = 'research-safe'\n")
    config = load_config(path)
    # The demo's heads do not leak into a config that names its own tags.
    assert list(config.tags) == ["punsafe"] and config.tags["punsafe"].positive == ("nsfw",)
    assert config.curation.variants == {"research-safe": 0.3}
    production = load_config("infra/configs/production.toml")
    assert {"punsafe", "pwatermark", "aesthetic"} <= set(production.tags)
    assert all(not t.head for t in production.tags.values())


def test_a_file_overrides_only_its_keys(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[lake]\nroot = "/data/lake"\n[download]\ntimeout_s = 7\n[clip.thresholds]\n"X" = 0.2\n')
    config = load_config(path)
    assert config.lake.root == "/data/lake" and config.download.timeout_s == 7.0
    assert config.download.image_size == 256  # untouched default
    assert config.clip.thresholds == {"X": 0.2}  # a threshold table replaces the defaults as a whole


@pytest.mark.parametrize(
    "text, message",
    [
        ("[lake]\nroots = 'x'\n", "unknown config key lake.roots"),
        ("[download]\ntimeout_s = 'fast'\n", "download.timeout_s must be a number"),
        ("[download]\nresize_mode = 'stretch'\n", "download.resize_mode must be one of"),
        ("[download]\nretries = -1\n", "download.retries must be >= 0"),
        ("[extract]\nmin_caption_chars = 50\nmax_caption_chars = 10\n", "min_caption_chars must not exceed"),
        ("[clip.thresholds]\n'ViT-B-32' = 3.0\n", "must be a cosine in"),
        ("[clip]\ndevice = 'tpu'\n", "clip.device must be auto, cpu or cuda"),
        ("lake = 3\n", "config section lake must be a table"),
        ("[lake\n", "is not valid TOML"),
        ("[tags.x]\nhead = 'x.pt'\npositive = ['a']\nnegative = ['b']\n", "tags.x needs either head or"),
        ("[tags.x]\npositive = ['a']\n", "tags.x needs both positive and negative"),
        ("[tags.x]\nheads = 'x.pt'\n", "unknown config key tags.x.heads"),
        ("tags = 3\n", "tags must be a table of tables"),
        ("[curation.variants]\nresearch = 1.5\n", "curation.variants.research must be a probability"),
        ("[release]\nvariant = 'nsfw'\n", "release.variant 'nsfw' is not a curated variant"),
        ("[release]\nname = 'a/b'\n", "release.name must be a non-empty name"),
        ("[optout]\nmin_similarity = 1.5\n", "optout.min_similarity must be a cosine"),
        ("[tags.pwatermark]\nhead = 'w.pt'\n", "filter on punsafe: configure tags.punsafe"),
    ],
)
def test_bad_values_are_one_clear_line(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as info:
        load_config(path)
    assert "\n" not in str(info.value).strip() or "TOML" in str(info.value)


def test_missing_file_and_missing_threshold(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.toml")
    config = load_config(overrides={"clip": {"model": "ViT-H-14"}})
    with pytest.raises(ConfigError, match="no entry for model 'ViT-H-14'"):
        config.clip_threshold()
