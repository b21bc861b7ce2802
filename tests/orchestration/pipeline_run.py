"""The pipeline run that test_pipeline and test_curation assert on: the whole asset graph through a
real Dagster instance, over the sample crawl served on 127.0.0.1.

One session-scoped pipeline (import the crawl's hash lists → discover → ingest all partitions in
one run → curate and release), then a second run of the same graph to prove re-runs are
idempotent. test_pipeline and test_curation assert on both against the crawl's ground truth.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pyarrow as pa
from infra.config import load_config
from infra.delta_store import Lake
from infra.image_server import ImageServer, load_site
from infra.sample_crawl import generate_sample_crawl
from infra.tables import BLOCKLIST, BLOCKLIST_MATCHES, CANDIDATES, CURATED, DEDUP, IMAGE_TAGS, IMAGES, KEPT_PAIRS, SHARDS, WARC_REJECTS
from orchestration.blocklist_import import import_hash_list
from orchestration.demo import import_demo_blocklists
from orchestration.runner import materialize_all

THRESHOLD = 0.5  # the demo model's threshold in infra/configs/demo.toml
# The reason code the downloader gives each kind of planted trouble.


@dataclass
class Pipeline:
    lake: Lake
    truth: dict
    server: ImageServer
    runs: list[str]
    rerun: list[str]
    instance: dg.DagsterInstance
    first: dict[str, pa.Table]  # table name -> rows after the first pass
    log_after_first: list[tuple[str, str]]
    rerun_log: list[tuple[str, str]]  # the image server's requests during the second pass only
    config_path: Path
    lake_root: Path
    late_uid: str  # named by a hash list imported between the two passes


LATE_LIST = "late-md5"
SNAPSHOT = (CANDIDATES, IMAGES, KEPT_PAIRS, WARC_REJECTS, SHARDS, BLOCKLIST, BLOCKLIST_MATCHES, IMAGE_TAGS, DEDUP, CURATED)


def snapshot(lake: Lake) -> dict[str, pa.Table]:
    return {spec.name: lake.read(spec) for spec in SNAPSHOT}


@contextlib.contextmanager
def run_pipeline(root: Path, demo_checkpoint: Path, demo_heads: Path) -> Iterator[Pipeline]:
    """Import the hash lists, materialize everything, snapshot, materialize again."""
    server = ImageServer()
    server.start()
    crawl = generate_sample_crawl(root / "crawl", server.url, pages=60, seed=0)
    server.resources.update(load_site(crawl.site_dir))
    config = root / "pairlake.toml"
    config.write_text(
        f"""
[lake]
root = "{root / 'lake'}"
[spark]
master = "local[2]"
[crawl]
source = "{crawl.out_dir / 'warcs'}"
[download]
timeout_s = 3.0
retries = 1
allow_hosts = ["127.0.0.1:{server.port}"]
[clip]
checkpoint = "{demo_checkpoint}"
workers = 0
[clip.thresholds]
"pairlake-demo-tiny" = {THRESHOLD}
[tags.punsafe]
head = "{demo_heads / 'punsafe.pt'}"
[tags.pwatermark]
head = "{demo_heads / 'pwatermark.pt'}"
[tags.aesthetic]
head = "{demo_heads / 'aesthetic.pt'}"
[tags.pround]
positive = ["a circle", "a ring"]
negative = ["a square", "a triangle", "a star", "a cross"]
[tags.pviolence]
positive = ["a cross"]
negative = ["a circle", "a square", "a triangle", "a star", "a ring"]
[release]
samples_per_shard = 20
"""
    )
    previous = {name: os.environ.get(name) for name in ("PAIRLAKE_CONFIG", "PAIRLAKE_PROFILE")}
    os.environ["PAIRLAKE_CONFIG"] = str(config)
    os.environ["PAIRLAKE_PROFILE"] = "demo"  # the file above names only what differs from the demo
    try:
        with dg.instance_for_test() as instance:
            lake = Lake(str(root / "lake"))
            import_demo_blocklists(load_config(config), crawl.out_dir, instance)
            runs = materialize_all(instance)
            first = snapshot(lake)
            log_after_first = list(server.access_log)
            # A list published after the crawl was downloaded: it names one curated image by the MD5
            # of its bytes; the re-run must remove it using the stored digest alone. The image is
            # one whose bytes no other URL serves (an MD5 names every copy; uids, and so which
            # image sorts first, change with the image server's port).
            md5_of = dict(zip(first["images"]["uid"].to_pylist(), first["images"]["md5"].to_pylist()))
            copies = Counter(md5_of.values())
            late_uid = min(u for u in first["curated"]["uid"].to_pylist() if copies[md5_of[u]] == 1)
            late_md5 = md5_of[late_uid]
            late_list = root / "late-md5.txt"
            late_list.write_text(late_md5 + "\n")
            import_hash_list(load_config(config), late_list, LATE_LIST, "image-md5", instance=instance)
            rerun = materialize_all(instance)
            # Taken now: later tests request images from this server too (searches by image URL).
            rerun_log = server.access_log[len(log_after_first):]
            yield Pipeline(lake, json.loads(crawl.expected_path.read_text()), server, runs, rerun, instance,
                           first, log_after_first, rerun_log, config, root / "lake", late_uid)
    finally:
        server.stop()
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


