"""Politeness holds for the whole run, not per task or per batch: images_job on the Spark fixture
with several tasks and small Arrow batches, against two real image servers on 127.0.0.1."""

from __future__ import annotations

from infra.config import ExtractConfig
from infra.crawl_source import WarcFile
from infra.delta_store import Lake, Lineage
from infra.image_server import ImageServer, Resource
from infra.tables import IMAGES
from spark_jobs.candidates_job import build_candidates
from spark_jobs.images_job import download_images
from tests.spark_jobs.test_download import JPEG, allowing
from tests.spark_jobs.test_warc_pairs import html, response_member, write_warc

IMAGES_PER_HOST = 40
PER_HOST = 2
ROBOTS = Resource(b"User-agent: *\nDisallow: /private/\n", content_type="text/plain")


def test_a_hosts_limit_and_its_robots_txt_hold_for_the_whole_run(spark, tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    site = {f"/{i}.jpg": Resource(JPEG, delay_s=0.05) for i in range(IMAGES_PER_HOST)} | {"/robots.txt": ROBOTS}
    with ImageServer(dict(site)) as a, ImageServer(dict(site)) as b:
        imgs = "".join(f"<img src='{server.url}/{i}.jpg' alt='picture {i} on port {server.port}'>"
                       for server in (a, b) for i in range(IMAGES_PER_HOST))
        path = tmp_path / "hosts.warc.gz"
        write_warc(path, [response_member(f"{a.url}/page.html", html(imgs))])
        warc = WarcFile(path.name, str(path), path.stat().st_size)
        build_candidates(spark, lake, [warc], "CC-TEST", ExtractConfig(), Lineage())
        setting = "spark.sql.execution.arrow.maxRecordsPerBatch"
        before = spark.conf.get(setting)
        spark.conf.set(setting, "8")  # each task downloads its rows over several batches
        # timeout_s: generous, since a request retried after a timeout under load would still be
        # served the first time, and the server would count both in flight.
        try:
            config = allowing(a, b, per_host_concurrency=PER_HOST, tasks=4, timeout_s=30.0)
            download_images(spark, lake, [warc.warc_file], config, Lineage())
        finally:
            spark.conf.set(setting, before)
        for server in (a, b):
            paths = [path for _, path in server.access_log]
            assert paths.count("/robots.txt") == 1
            assert len([p for p in paths if p.endswith(".jpg")]) == IMAGES_PER_HOST
            assert server.max_in_flight <= PER_HOST
    assert lake.read(IMAGES, columns=["status"])["status"].to_pylist() == ["ok"] * 2 * IMAGES_PER_HOST
