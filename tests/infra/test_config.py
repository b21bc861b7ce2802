"""Configuration: embedded defaults, file overrides, and one clear line for every bad value."""

import pytest

from infra.config import ConfigError, load_config


@pytest.fixture(autouse=True)
def no_config_from_the_environment(monkeypatch):
    for name in ("PAIRLAKE_CONFIG", "PAIRLAKE_PROFILE"):
        monkeypatch.delenv(name, raising=False)


def test_the_demo_profile_names_the_demo_model():
    config = load_config(profile="demo")
    assert config.clip.model == "pairlake-demo-tiny" and config.clip_threshold() == 0.5
    assert config.clip.thresholds["ViT-B-32"] == 0.28


def test_a_relative_checkpoint_is_read_against_the_working_directory(tmp_path, monkeypatch):
    """Spark executors open the checkpoint in their own working directory (on a cluster, an
    application folder): the driver's relative path must reach them absolute."""
    monkeypatch.chdir(tmp_path)
    config = load_config(profile="demo")
    assert config.clip.checkpoint == str(tmp_path / "infra" / "demo_model" / "pairlake-demo-tiny.pt")


def test_a_production_file_naming_only_what_it_changes_inherits_nothing_of_the_demo(tmp_path):
    """The embedded defaults used to be the demo's: loopback downloads allowed, the demo checkpoint
    loaded into the production model, near-duplicate and opt-out thresholds of the tiny model."""
    path = tmp_path / "prod.toml"
    path.write_text('[lake]\nroot = "/data/lake"\n[clip]\nmodel = "ViT-B-32"\npretrained = "laion2b_s34b_b79k"\n')
    config = load_config(path)
    assert config.download.allow_hosts == ()
    assert config.clip.checkpoint == "" and config.clip_threshold() == 0.28
    assert config.curation.near_duplicate_threshold == 0.94 and config.optout.min_similarity == 0.95
    assert all(not t.head for t in config.tags.values()) and "punsafe" in config.tags
    assert config.crawl.source == "" and config.release.max_auto_drop_fraction == 0.01
    assert config.optout.max_auto_fraction == 0.001


def test_profiles_come_only_when_asked_for(monkeypatch):
    assert load_config().clip.model == "ViT-B-32"
    monkeypatch.setenv("PAIRLAKE_PROFILE", "demo")
    assert load_config().clip.model == "pairlake-demo-tiny"
    with pytest.raises(ConfigError, match="unknown config profile 'nope' \\(profiles: demo, production\\)"):
        load_config(profile="nope")
    with pytest.raises(ConfigError, match="unknown config profile"):
        load_config(profile="../configs/demo")


def test_config_show_says_where_every_value_came_from(tmp_path, monkeypatch, capsys):
    import tomllib

    from orchestration.cli import main

    path = tmp_path / "c.toml"
    path.write_text('[download]\ntimeout_s = 7\n')
    monkeypatch.setenv("PAIRLAKE__INDEX__MAX_K", "50")
    assert main(["--profile", "demo", "--config", str(path), "config", "show"]) == 0
    out = capsys.readouterr().out
    lines = {line.split(" = ")[0]: line for line in out.splitlines() if " = " in line}
    assert lines["timeout_s"].endswith(f"# file {path}")
    assert lines["max_k"] == "max_k = 50  # environment"
    assert lines["checkpoint"].endswith("# profile demo")
    assert lines["history_retention_hours"].endswith("# default")
    assert "[tags.punsafe]  # profile demo" in out
    shown = tomllib.loads(out)  # the output is TOML that loads back to the same config
    assert shown["download"]["timeout_s"] == 7.0 and shown["index"]["max_k"] == 50
    assert load_config(overrides=shown) == load_config(path, profile="demo", overrides={"index": {"max_k": 50}})


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
        ("[lake]\nroot = 'gs://b/lake'\n", "lives in a local folder or at s3://bucket/prefix"),
        ("[lake]\nroot = 's3:///lake'\n", "names no bucket"),
        ("[lake.storage_options]\naddressing_style = 'dns'\n", "addressing_style must be virtual or path"),
        ("[lake.storage_options]\nendpoint = '127.0.0.1:9000'\n", "endpoint must be an http"),
        ("[lake.storage_options]\nendpoint = 'http://127.0.0.1:9000'\n", "plain http: set allow_http = true"),
        ("[lake.storage_options]\naccess_key = 'AKIA'\n", "unknown config key lake.storage_options.access_key"),
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
