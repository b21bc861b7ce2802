"""Every opt-out request kind, end to end on a copy of the session's demo lake: submit → apply → a
later crawl with new captions and new URLs under each rule → the image servers' access logs show no
request for anything a rule names, and no table, index, shard or byte on disk holds it.

Kinds named by their URL (url, url_prefix, domain) stop the request itself. Kinds named by the
image bytes (sha256, md5, example image) stop every URL the removed pairs had; a new URL serving the
same bytes has to be fetched to be recognised, and is then kept without its bytes."""

from __future__ import annotations

import io
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from PIL import Image
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from infra.config import load_config
from infra.delta_store import Lake
from infra.image_server import ImageServer, Resource
from infra.tables import CANDIDATES, IMAGES, SAMPLE_TABLES
from orchestration.optout_requests import request_status, submit_request
from orchestration.runner import materialize_all, tick_sensor
from spark_jobs import release
from tests.lake_scan import files_holding

KINDS = ("url", "url_prefix", "domain", "sha256", "md5", "image")


@dataclass
class Crawl:
    lake: Lake
    root: Path
    server_log: list[tuple[str, str]]  # the demo server's requests during the later crawl
    other_host_log: list[tuple[str, str]]  # the second host's requests during the later crawl
    targets: dict[str, dict]  # kind -> {"uid", "url", "path", "original"} of the pair it removes
    blocked_paths: set[str]  # demo-server paths no request may reach
    copies: dict[str, str]  # kind -> new URL serving the removed bytes
    control: str  # a new URL under no rule: it is fetched


def _warc(path: Path, page_url: str, imgs: list[tuple[str, str]]) -> None:
    body = "".join(f'<img src="{src}" alt="{alt}">' for src, alt in imgs)
    page = f"<!DOCTYPE html><html lang='en'><head><title>later</title></head><body>{body}</body></html>".encode()
    http = StatusAndHeaders("200 OK", [("Content-Type", "text/html; charset=utf-8")], protocol="HTTP/1.1")
    with path.open("wb") as fh:
        writer = WARCWriter(fh, gzip=True)
        writer.write_record(writer.create_warc_record(page_url, "response", payload=io.BytesIO(page),
                                                      http_headers=http,
                                                      warc_headers_dict={"WARC-Date": "2026-11-30T00:00:00Z"}))


@pytest.fixture(scope="module")
def crawl(pipeline, tmp_path_factory):
    root = tmp_path_factory.mktemp("kinds")
    shutil.copytree(pipeline.lake_root, root / "lake")
    shutil.copytree(pipeline.lake_root.parent / "crawl" / "warcs", root / "warcs")
    lake = Lake(str(root / "lake"))
    server = pipeline.server
    other = ImageServer(host="127.0.0.2")
    other.start()
    config_path = root / "pairlake.toml"
    text = pipeline.config_path.read_text().replace(str(pipeline.lake_root), str(root / "lake"))
    text = text.replace(str(pipeline.lake_root.parent / "crawl" / "warcs"), str(root / "warcs"))
    # The second host is allowed, so only the domain rule can stop its images.
    text = text.replace(f'allow_hosts = ["127.0.0.1:{server.port}"]',
                        f'allow_hosts = ["127.0.0.1:{server.port}", "127.0.0.2:{other.port}"]')
    config_path.write_text(text)
    previous = os.environ.get("PAIRLAKE_CONFIG")
    os.environ["PAIRLAKE_CONFIG"] = str(config_path)
    try:
        config = load_config(config_path)
        images = lake.read(IMAGES)
        last = release.latest(lake, config.release.name)
        members = sorted(pa.concat_tables(release.shard_members(lake.path(last["path"])))["uid"].to_pylist())
        truth = pipeline.truth["images"]

        def row(uid):
            return images.filter(pc.equal(images["uid"], uid)).to_pylist()[0]

        plain = [u for u in members if truth[row(u)["url"]]["kind"] in ("match", "relative")]
        targets = {}
        for kind, uid in zip(("url", "sha256", "md5", "image"), plain):
            r = row(uid)
            path = "/" + r["url"].split("/", 3)[3]
            targets[kind] = {"uid": uid, "url": r["url"], "path": path, "sha256": r["sha256"], "md5": r["md5"],
                             "original": server.resources[path].body}
        example = root / "example.jpg"  # the image target re-encoded: other bytes, the same picture
        Image.open(io.BytesIO(targets["image"]["original"])).convert("RGB").save(example, quality=90)

        common = {"requester": "ticket", "reason": "end to end"}
        prefix = f"{server.url}/optout-prefix/"
        submit_request(config, {"request_id": "k-url", "kind": "url", "value": targets["url"]["url"], **common})
        submit_request(config, {"request_id": "k-prefix", "kind": "url_prefix", "value": prefix, **common})
        submit_request(config, {"request_id": "k-domain", "kind": "domain", "value": "127.0.0.2", **common})
        submit_request(config, {"request_id": "k-sha256", "kind": "sha256", "value": targets["sha256"]["sha256"],
                                **common})
        submit_request(config, {"request_id": "k-md5", "kind": "md5", "value": targets["md5"]["md5"], **common})
        submit_request(config, {"request_id": "k-image", "kind": "image", **common}, image=example)

        with dg.instance_for_test() as instance:
            tick_sensor("optout_inbox_sensor", instance)
            statuses = {r["request_id"]: r["status"] for r in request_status(config)}
            assert all(statuses[f"k-{k.replace('url_', '')}"] == "applied" for k in KINDS), statuses

            # The later crawl: the removed URLs under new captions, new URLs under the prefix and on
            # the opted-out host, new URLs serving the removed bytes, and one URL under no rule.
            imgs = [(t["url"], f"a new caption for the {kind} target") for kind, t in targets.items()]
            for n in range(2):
                server.resources[f"/optout-prefix/new-{n}.jpg"] = Resource(body=targets["url"]["original"])
                imgs.append((f"{prefix}new-{n}.jpg", f"a new image under the prefix {n}"))
            other.resources["/d/new.jpg"] = Resource(body=targets["url"]["original"])
            imgs.append((f"{other.url}/d/new.jpg", "a new image on the opted-out host"))
            copies = {}
            for kind in ("sha256", "md5", "image"):
                server.resources[f"/copies/{kind}.jpg"] = Resource(body=targets[kind]["original"])
                copies[kind] = f"{server.url}/copies/{kind}.jpg"
                imgs.append((copies[kind], f"the removed {kind} bytes under a new address"))
            spare = "/" + row(plain[len(targets)])["url"].split("/", 3)[3]  # an image no request names
            server.resources["/control/new.jpg"] = Resource(body=server.resources[spare].body)
            control = f"{server.url}/control/new.jpg"
            imgs.append((control, "a new image under no rule at all"))
            _warc(root / "warcs" / "zz-later.warc.gz", f"{server.url}/later.html", imgs)

            seen, seen_other = len(server.access_log), len(other.access_log)
            # Only the new WARC file is ingested, as a user ingests a later crawl; test_optout_requests
            # replays the old files.
            materialize_all(instance, partitions=["zz-later.warc.gz"])
            blocked = {t["path"] for t in targets.values()} | {"/optout-prefix/new-0.jpg", "/optout-prefix/new-1.jpg"}
            yield Crawl(lake, root, server.access_log[seen:], other.access_log[seen_other:], targets, blocked,
                        copies, control)
    finally:
        other.stop()
        os.environ["PAIRLAKE_CONFIG"] = previous or ""


def test_no_rule_is_ever_requested_again(crawl):
    requested = {path for _, path in crawl.server_log}
    assert not requested & crawl.blocked_paths
    assert crawl.other_host_log == []  # the domain rule: the host is never contacted
    assert "/control/new.jpg" in requested  # the crawl did fetch what no rule names


def test_rule_kinds_are_not_ingested_and_byte_kinds_keep_no_bytes(crawl):
    urls = set(crawl.lake.read(CANDIDATES, columns=["url"])["url"].to_pylist())
    assert not {t["url"] for t in crawl.targets.values()} & urls
    assert not {u for u in urls if "/optout-prefix/" in u or "127.0.0.2" in u}
    images = crawl.lake.read(IMAGES)
    for kind, url in crawl.copies.items():
        rows = images.filter(pc.equal(images["url"], url)).to_pylist()
        assert [(r["error"], r["image"]) for r in rows] == [("removed_by_request", None)], kind
    control = images.filter(pc.equal(images["url"], crawl.control)).to_pylist()
    assert [r["status"] for r in control] == ["ok"]


def test_no_table_and_no_byte_on_disk_holds_a_removed_sample(crawl):
    removed = {t["uid"] for t in crawl.targets.values()}
    for spec in SAMPLE_TABLES:
        assert not removed & set(crawl.lake.read(spec, columns=["uid"])["uid"].to_pylist()), spec.name
    for kind, target in crawl.targets.items():
        assert files_holding(crawl.root / "lake", target["original"]) == [], kind
        assert files_holding(crawl.root / "lake", target["url"].encode()) == [], kind
