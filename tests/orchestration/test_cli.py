"""The `pairlake` command line: the debug extractor, and one clear line for every bad input."""

import pyarrow.parquet as pq
import pytest

from infra.delta_store import Lake
from infra.sample_crawl import generate_sample_crawl
from infra.tables import WARC_FILES
from orchestration.cli import main


@pytest.fixture(autouse=True)
def restore_config_env(monkeypatch):
    # `pairlake --config` exports the file for the Dagster resource; undo that after each test.
    monkeypatch.setenv("PAIRLAKE_CONFIG", "")


@pytest.fixture(scope="module")
def crawl(tmp_path_factory):
    # No server: parse-warc never fetches anything.
    return generate_sample_crawl(tmp_path_factory.mktemp("crawl"), "http://127.0.0.1:9", pages=40, seed=3)


def write_config(tmp_path, **sections):
    text = "".join(
        f"[{name}]\n" + "".join(f"{k} = {v!r}\n".replace("'", '"') for k, v in values.items())
        for name, values in sections.items()
    )
    path = tmp_path / "pairlake.toml"
    path.write_text(text)
    return str(path)


def test_parse_warc_writes_pairs_without_spark(crawl, tmp_path, capsys):
    out = tmp_path / "pairs.parquet"
    assert main(["parse-warc", *map(str, crawl.warcs), "--out", str(out)]) == 0
    pairs = pq.read_table(out)
    extracted = {u for u, e in crawl.images.items() if e["extracted"]}
    assert set(pairs.column("url").to_pylist()) == extracted
    printed = capsys.readouterr().out
    assert "malformed_record" in printed or "truncated_record" in printed


def test_parse_warc_missing_file_is_one_line(tmp_path, capsys):
    missing = tmp_path / "nope.warc.gz"
    assert main(["parse-warc", str(missing), "--out", str(tmp_path / "o.parquet")]) == 2
    err = capsys.readouterr().err.strip()
    assert str(missing) in err and len(err.splitlines()) == 1


def test_bad_config_value_is_one_line(tmp_path, capsys):
    config = write_config(tmp_path, download={"resize_mode": "stretch"})
    assert main(["--config", config, "report"]) == 2
    err = capsys.readouterr().err.strip()
    assert "download.resize_mode" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize(
    "sections, code, message",
    [
        ({"crawl": {"source": "/nonexistent/warcs"}}, 1, "neither a folder nor a warc.paths"),
        ({"clip": {"model": "ViT-Q-99", "checkpoint": ""}}, 2, "unknown CLIP model 'ViT-Q-99'"),
        ({"clip": {"checkpoint": "/nonexistent/model.pt"}}, 2, "clip.checkpoint file not found"),
    ],
)
def test_materialize_refuses_bad_input_before_any_commit(crawl, tmp_path, monkeypatch, capsys, sections, code, message):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    lake_root = tmp_path / "lake"
    sections = {"lake": {"root": str(lake_root)}, "crawl": {"source": str(crawl.out_dir / "warcs")}, **sections}
    assert main(["--config", write_config(tmp_path, **sections), "materialize"]) == code
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert Lake(str(lake_root)).version(WARC_FILES) is None


def test_unwritable_lake_root_is_one_line(crawl, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    config = write_config(tmp_path, lake={"root": str(blocker / "lake")}, crawl={"source": str(crawl.out_dir / "warcs")})
    assert main(["--config", config, "materialize"]) == 1
    err = capsys.readouterr().err.strip()
    assert "is not writable" in err and len(err.splitlines()) == 1
