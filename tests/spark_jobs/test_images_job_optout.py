"""Parse-time opt-outs end to end: a real WARC → candidates_job and images_job on the Spark fixture,
against a real image server on 127.0.0.1 whose access log shows what was requested."""

from __future__ import annotations

import hashlib

import pyarrow as pa
from deltalake import write_deltalake

from infra.config import ExtractConfig
from infra.crawl_source import WarcFile
from infra.delta_store import Lake, Lineage
from infra.image_server import ImageServer, Resource
from infra.spark import read_table
from infra.tables import CANDIDATES, IMAGES
from spark_jobs.blocklist import import_blocklist
from spark_jobs.candidates_job import build_candidates
from spark_jobs.images_job import download_images
from tests.spark_jobs.test_download import JPEG, allowing
from tests.spark_jobs.test_warc_pairs import html, response_member, write_warc

HEADS = {  # page name -> its <head> markup; each page shows /<name>.jpg
    "free": "",
    "robots": "<meta name='robots' content='noai, noimageai'>",
    "tdm": "<meta name='tdm-reservation' content='1'>",
}


def _crawl(tmp_path, server: ImageServer, heads: dict[str, str] = HEADS) -> WarcFile:
    members = [
        response_member(f"{server.url}/{page}.html", html(f"<img src='/{page}.jpg' alt='a picture on the {page} page'>",
                                                          head=head))
        for page, head in heads.items()
    ]
    path = tmp_path / "signals.warc.gz"
    write_warc(path, members)
    return WarcFile(path.name, str(path), path.stat().st_size)


def _images(lake: Lake) -> dict[str, dict]:
    return {row["url"].rsplit("/", 1)[1]: row for row in lake.read(IMAGES).to_pylist()}


def test_opted_out_images_are_never_requested(spark, tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    heads = {**HEADS, "listed": ""}  # and one whose URL a hash list names: never requested either
    with ImageServer({f"/{page}.jpg": Resource(JPEG) for page in heads}) as server:
        url_list = tmp_path / "urls.txt"
        url_list.write_text(hashlib.sha256(f"{server.url}/listed.jpg".encode()).hexdigest() + "\n")
        import_blocklist(lake, url_list, "a-list", "url-sha256", Lineage())
        warc = _crawl(tmp_path, server, heads)
        outcome = build_candidates(spark, lake, [warc], "CC-TEST", ExtractConfig(), Lineage())
        _, counts = download_images(spark, lake, [warc.warc_file], allowing(server), Lineage())
    assert {path for _, path in server.access_log if path.endswith(".jpg")} == {"/free.jpg"}

    candidates = lake.read(CANDIDATES, columns=["url", "optout_signal"]).to_pylist()
    assert {r["url"].rsplit("/", 1)[1]: r["optout_signal"] for r in candidates} == {
        "free.jpg": None, "robots.jpg": "meta-robots", "tdm.jpg": "tdm-meta", "listed.jpg": None}
    stats = outcome.counts[warc.warc_file]
    assert (stats["candidates"], stats["optout_meta_robots"], stats["optout_tdm_meta"]) == (4, 1, 1)

    images = _images(lake)
    assert images["free.jpg"]["status"] == "ok"
    for page, signal in (("robots", "meta-robots"), ("tdm", "tdm-meta")):
        row = images[f"{page}.jpg"]
        assert (row["status"], row["error"], row["retryable"], row["attempts"], row["image"]) == (
            "failed", f"opted_out:{signal}", False, 0, None)
        assert row["error_detail"]
    assert (images["listed.jpg"]["error"], images["listed.jpg"]["error_detail"]) == (
        "blocklisted", "URL digest on hash list: a-list")
    assert counts[warc.warc_file] == {"images_ok": 1, "images_failed": 3, "failed_opted_out:meta-robots": 1,
                                      "failed_opted_out:tdm-meta": 1, "failed_blocklisted": 1}


def test_a_lake_written_before_the_column_still_reads_and_downloads(spark, tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    with ImageServer({f"/{page}.jpg": Resource(JPEG) for page in (*HEADS, "old")}) as server:
        # The candidates table as an older pairlake wrote it: no optout_signal column.
        old_schema = pa.schema([f for f in CANDIDATES.schema if f.name != "optout_signal"])
        old = pa.Table.from_pylist([{
            "uid": "0" * 32, "url": f"{server.url}/old.jpg", "caption": "a picture crawled long ago",
            "page_url": f"{server.url}/old.html", "crawl_id": "CC-OLD", "warc_file": "old.warc.gz", "record_offset": 0,
        }], schema=old_schema)
        write_deltalake(lake.uri(CANDIDATES), old, partition_by=list(CANDIDATES.partition_by))

        warc = _crawl(tmp_path, server)
        build_candidates(spark, lake, [warc], "CC-TEST", ExtractConfig(), Lineage())
        rows = {r["warc_file"]: r for r in lake.read(CANDIDATES, columns=["warc_file", "url", "optout_signal"]).to_pylist()
                if r["url"].endswith(("old.jpg", "robots.jpg"))}
        assert (rows["old.warc.gz"]["optout_signal"], rows[warc.warc_file]["optout_signal"]) == (None, "meta-robots")
        assert read_table(spark, lake, CANDIDATES).count() == 4

        download_images(spark, lake, ["old.warc.gz", warc.warc_file], allowing(server), Lineage())
    assert {path for _, path in server.access_log if path.endswith(".jpg")} == {"/old.jpg", "/free.jpg"}
    images = _images(lake)
    assert (images["old.jpg"]["status"], images["robots.jpg"]["error"]) == ("ok", "opted_out:meta-robots")


def test_a_signal_honoured_later_replaces_the_earlier_download(spark, tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    with ImageServer({f"/{page}.jpg": Resource(JPEG) for page in HEADS}) as server:
        warc = _crawl(tmp_path, server)
        ignoring = ExtractConfig(honour_meta_robots=False, honour_tdm_meta=False)
        build_candidates(spark, lake, [warc], "CC-TEST", ignoring, Lineage())
        download_images(spark, lake, [warc.warc_file], allowing(server), Lineage())
        assert {row["status"] for row in _images(lake).values()} == {"ok"}
        server.access_log.clear()

        build_candidates(spark, lake, [warc], "CC-TEST", ExtractConfig(), Lineage())
        download_images(spark, lake, [warc.warc_file], allowing(server), Lineage())
    assert not [path for _, path in server.access_log if path.endswith(".jpg")]  # nothing fetched again
    images = _images(lake)
    assert images["free.jpg"]["status"] == "ok"
    assert {(images[f"{p}.jpg"]["error"], images[f"{p}.jpg"]["image"]) for p in ("robots", "tdm")} == {
        ("opted_out:meta-robots", None), ("opted_out:tdm-meta", None)}
