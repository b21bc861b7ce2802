"""`pairlake parse-warc` on bad input: one clear line (InputError, rc 2) and nothing written at
--out; corrupt records inside a valid WARC stay counted skips. Through the real CLI entry point."""

from __future__ import annotations

import gzip
import zlib

import pyarrow.parquet as pq
import pytest

from orchestration.cli import main
from tests.spark_jobs.test_warc_pairs import PAGE, html, response_member, write_warc


@pytest.fixture(autouse=True)
def no_user_config(monkeypatch):
    # `pairlake --config` exports the file for the Dagster resource; no test may inherit one.
    monkeypatch.setenv("PAIRLAKE_CONFIG", "")


@pytest.fixture
def good(tmp_path):
    path = tmp_path / "good.warc.gz"
    write_warc(path, [response_member(PAGE, html("<img src='a.jpg' alt='a picture that is fine'>"))])
    return path


def _record() -> bytes:
    return zlib.decompress(response_member(PAGE, html("<img src='a.jpg' alt='never read'>")), 31)


BAD_INPUTS = {
    "directory": (lambda p: p.mkdir(), "is a directory, not a WARC file"),
    "missing": (lambda p: None, "WARC file not found"),
    "uncompressed": (lambda p: p.write_bytes(_record()), "uncompressed WARC"),
    "text": (lambda p: p.write_text("these are my notes, not a crawl\n" * 50), "not a WARC file"),
    "gzipped text": (lambda p: p.write_bytes(gzip.compress(b"a gzip file, but no WARC in it\n" * 50)), "not a WARC file"),
}


def _run(capsys, *args: str) -> tuple[int, list[str]]:
    code = main(["parse-warc", *args])
    return code, capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize("kind", sorted(BAD_INPUTS))
def test_bad_input_is_one_line_and_leaves_no_output(tmp_path, capsys, good, kind):
    make, message = BAD_INPUTS[kind]
    bad = tmp_path / "CC-MAIN-bad.warc.gz"
    make(bad)
    out = tmp_path / "pairs.parquet"
    out.write_bytes(b"an earlier result")
    code, err = _run(capsys, str(good), str(bad), "--out", str(out))
    assert code == 2
    assert len(err) == 1 and message in err[0] and str(bad) in err[0]
    assert out.read_bytes() == b"an earlier result"  # untouched: neither replaced nor cut
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["good.warc.gz", "pairs.parquet"]
                                                                + ([bad.name] if kind != "missing" else []))


def test_out_that_is_a_directory_is_refused(tmp_path, capsys, good):
    out = tmp_path / "results"
    out.mkdir()
    code, err = _run(capsys, str(good), "--out", str(out))
    assert code == 2 and len(err) == 1 and "is a directory" in err[0]
    assert list(out.iterdir()) == []


def test_out_in_a_missing_folder_is_refused(tmp_path, capsys, good):
    code, err = _run(capsys, str(good), "--out", str(tmp_path / "nowhere" / "pairs.parquet"))
    assert code == 2 and len(err) == 1 and "does not exist" in err[0]


def test_corrupt_records_in_a_valid_warc_stay_counted_skips(tmp_path, capsys):
    path = tmp_path / "damaged.warc.gz"
    write_warc(path, [
        b"not a gzip member",
        response_member(PAGE, html("<img src='a.jpg' alt='a picture that is fine'>")),
        response_member(PAGE, html("<img src='b.jpg' alt='cut short'>"))[:40],
    ])
    out = tmp_path / "pairs.parquet"
    assert main(["parse-warc", str(path), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert pq.read_table(out)["caption"].to_pylist() == ["a picture that is fine"]
    assert "malformed_record" in printed and "truncated_record" in printed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["damaged.warc.gz", "pairs.parquet"]
