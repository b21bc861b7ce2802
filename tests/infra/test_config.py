"""Configuration: embedded defaults, file overrides, and one clear line for every bad value."""

import pytest

from infra.config import ConfigError, load_config


def test_defaults_load_and_name_the_demo_model():
    config = load_config()
    assert config.clip.model == "pairlake-demo-tiny" and config.clip_threshold() == 0.6
    assert config.clip.thresholds["ViT-B-32"] == 0.28


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
