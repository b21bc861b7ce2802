"""Machine-readable opt-out signals at download time, each against a real ImageServer on 127.0.0.1:
X-Robots-Tag, TDMRep (header and /.well-known/tdmrep.json), ai.txt, and robots.txt groups naming
AI-training crawlers."""

from __future__ import annotations

import dataclasses
import json
import logging

import pytest

from infra.config import DownloadConfig
from infra.image_server import ImageServer, Resource
from spark_jobs.download.robots import RobotsRules, request_path
from spark_jobs.download.tdmrep import TdmRules
from tests.spark_jobs import test_download
from tests.spark_jobs.test_download import JPEG, fetch, fetch_one

# test_download's 1 s deadline made these flaky: under a loaded suite a policy file's answer took
# longer, and the image failed as ``<file>_unavailable``. Nothing here waits for a deadline (failing
# files answer 5xx), so a generous one costs no time.
CFG = dataclasses.replace(test_download.CFG, timeout_s=30.0)

TDMREP = "/.well-known/tdmrep.json"
OPTED = ["/art/1.jpg", "/art/2.jpg", "/art/3.jpg"]  # every signal below opts these out
FREE = "/free/1.jpg"  # and none opts this one out


def allowing(*servers: ImageServer, **changes) -> DownloadConfig:
    return test_download.allowing(*servers, config=CFG, **changes)


def text(body: str, content_type: str = "text/plain") -> Resource:
    return Resource(body.encode(), content_type=content_type)


def tdmrep(*rules: dict) -> Resource:
    return Resource(json.dumps(list(rules)).encode(), content_type="application/json")


# signal → (the site's extra resources, per-image headers, the config switch)
SIGNALS = {
    "x-robots-tag": ({}, {"X-Robots-Tag": "noimageai"}, "honour_x_robots_tag"),
    "tdm-header": ({}, {"tdm-reservation": "1"}, "honour_tdm_header"),
    "tdmrep-json": (
        {TDMREP: tdmrep({"location": "/free/", "tdm-reservation": 0}, {"location": "/*.jpg", "tdm-reservation": 1})},
        {},
        "honour_tdmrep_json",
    ),
    "ai-txt": ({"/ai.txt": text("# Spawning AI\n/\n\nUser-Agent: *\n/\nDisallow: /art/\n")}, {}, "honour_ai_txt"),
    "robots-txt": (
        {"/robots.txt": text("User-agent: *\nAllow: /\n\nUser-agent: GPTBot\nUser-agent: CCBot\nDisallow: /art/\n")},
        {},
        "honour_robots_txt_ai_agents",
    ),
}
ORIGIN_FILES = {"tdmrep-json": TDMREP, "ai-txt": "/ai.txt", "robots-txt": "/robots.txt"}


def signal_site(signal: str) -> dict[str, Resource]:
    files, headers, _ = SIGNALS[signal]
    return {**files, **{p: Resource(JPEG, headers=headers) for p in OPTED}, FREE: Resource(JPEG)}


@pytest.mark.parametrize("signal", sorted(SIGNALS))
def test_signal_opts_images_out_with_its_own_reason(signal):
    with ImageServer(signal_site(signal)) as server:
        rows = fetch([server.url + p for p in [*OPTED, FREE]], allowing(server))
        assert [(r["status"], r["error"], r["retryable"]) for r in rows[:-1]] == [
            ("failed", f"opted_out:{signal}", False)
        ] * len(OPTED)
        assert rows[-1]["status"] == "ok"
        assert all(r["error_detail"] for r in rows[:-1])
        if signal in ORIGIN_FILES:
            # Known before the request: fetched once for the origin, refused images never requested.
            for path in (TDMREP, "/ai.txt", "/robots.txt"):
                assert server.access_log.count(("GET", path)) == 1, path
            assert not {p for _, p in server.access_log} & set(OPTED)


@pytest.mark.parametrize("signal", sorted(SIGNALS))
def test_each_signal_can_be_switched_off(signal):
    with ImageServer(signal_site(signal)) as server:
        row = fetch_one(server.url + OPTED[0], allowing(server, **{SIGNALS[signal][2]: False}))
        assert row["status"] == "ok"


def test_ordinary_robots_disallow_is_not_an_opt_out():
    robots = "User-agent: *\nDisallow: /art/\n\nUser-agent: CCBot\nDisallow: /art/2\n\nUser-agent: Other\nDisallow: /\n"
    with ImageServer({"/robots.txt": text(robots), **{p: Resource(JPEG) for p in OPTED}}) as server:
        rows = fetch([server.url + p for p in OPTED], allowing(server))
        # * (and a non-AI bot) disallowing is politeness: robots_disallowed; CCBot disallowing is an opt-out.
        assert [r["error"] for r in rows] == ["robots_disallowed", "opted_out:robots-txt", "robots_disallowed"]
        no_ai = allowing(server, honour_robots_txt_ai_agents=False)
        assert fetch_one(server.url + OPTED[1], no_ai)["error"] == "robots_disallowed"
        rows = fetch([server.url + p for p in OPTED], allowing(server, honour_robots_txt=False))
        assert [r["error"] for r in rows] == [None, "opted_out:robots-txt", None]


def test_spawning_ai_txt_file_types():
    # As Spawning's generator writes it when images are allowed and text is not: the longest match wins.
    ai_txt = "# Spawning AI\n/\n\nUser-Agent: *\n/\nAllow: *.jpg\nDisallow: *.txt\nDisallow: /\n"
    site = {"/ai.txt": text(ai_txt), "/a.jpg": Resource(JPEG), "/b.JPG": Resource(JPEG), "/img": Resource(JPEG)}
    with ImageServer(site) as server:
        rows = fetch([server.url + p for p in ("/a.jpg", "/b.JPG", "/img")], allowing(server))
        assert [r["error"] for r in rows] == [None, None, "opted_out:ai-txt"]
    with ImageServer({"/ai.txt": text("User-Agent: *\nDisallow: *.jpg\n"), "/B.JPG": Resource(JPEG)}) as server:
        assert fetch_one(server.url + "/B.JPG", allowing(server))["error"] == "opted_out:ai-txt"  # file types: any case


def test_redirect_target_origin_is_checked_too():
    with ImageServer({"/ai.txt": text("User-Agent: pairlake\nDisallow: /\n"), "/x.jpg": Resource(JPEG)}) as target:
        with ImageServer({"/r.jpg": Resource(redirect_to=f"{target.url}/x.jpg")}) as first:
            row = fetch_one(first.url + "/r.jpg", allowing(first, target))
        assert (row["error"], row["final_url"]) == ("opted_out:ai-txt", target.url + "/x.jpg")
        assert ("GET", "/x.jpg") not in target.access_log


@pytest.mark.parametrize("path, file", [(TDMREP, "tdmrep"), ("/ai.txt", "ai_txt"), ("/robots.txt", "robots")])
def test_server_error_on_a_signal_file_is_retryable_and_skips_the_images(path, file):
    with ImageServer({path: Resource(b"", status=503), "/a.jpg": Resource(JPEG), "/b.jpg": Resource(JPEG)}) as server:
        rows = fetch([server.url + "/a.jpg", server.url + "/b.jpg"], allowing(server))
        assert [(r["error"], r["retryable"]) for r in rows] == [(f"{file}_unavailable", True)] * 2
        assert not {"/a.jpg", "/b.jpg"} & {p for _, p in server.access_log}


def test_a_refusing_file_wins_over_an_unavailable_one():
    site = {"/robots.txt": Resource(b"", status=500), "/ai.txt": text("User-Agent: *\nDisallow: /\n")}
    site["/a.jpg"] = Resource(JPEG)
    with ImageServer(site) as server:
        assert fetch_one(server.url + "/a.jpg", allowing(server))["error"] == "opted_out:ai-txt"


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b'{"location": "/", "tdm-reservation": 1}',
        b"[" * 100_000,
        json.dumps([{"location": "/", "tdm-reservation": 1}] * 20_000).encode(),
    ],
    ids=["garbled", "not-an-array", "nested-too-deep", "over-500-KiB"],
)
def test_unparseable_tdmrep_json_is_no_rules_and_logged(body, caplog):
    with ImageServer({TDMREP: Resource(body, content_type="application/json"), "/a.jpg": Resource(JPEG)}) as server:
        with caplog.at_level(logging.WARNING, logger="spark_jobs.download.origin_policies"):
            assert fetch_one(server.url + "/a.jpg", allowing(server))["status"] == "ok"
    assert any("tdmrep.json does not parse" in r.getMessage() for r in caplog.records)


def test_html_served_as_signal_files_means_no_rules():
    page = text("<html><body>Disallow: /</body></html>", content_type="text/html")
    with ImageServer({"/robots.txt": page, "/ai.txt": page, TDMREP: page, "/a.jpg": Resource(JPEG)}) as server:
        assert fetch_one(server.url + "/a.jpg", allowing(server))["status"] == "ok"


def test_signal_files_go_through_the_address_guard():
    # ai.txt redirects to the metadata endpoint: refused at that hop, so the origin's images are too.
    site = {"/ai.txt": Resource(redirect_to="http://169.254.169.254/ai.txt"), "/a.jpg": Resource(JPEG)}
    with ImageServer(site) as server:
        row = fetch_one(server.url + "/a.jpg", allowing(server))
        assert (row["error"], row["retryable"]) == ("address_refused", False)
        assert ("GET", "/a.jpg") not in server.access_log


@pytest.mark.parametrize(
    "rules, path, reserved",
    [
        ([{"location": "/", "tdm-reservation": 1}], "/any/thing.png", True),
        ([{"location": "/a/", "tdm-reservation": 0}, {"location": "/", "tdm-reservation": 1}], "/a/x.jpg", False),
        ([{"location": "/", "tdm-reservation": 1}, {"location": "/a/", "tdm-reservation": 0}], "/a/x.jpg", True),  # 1st
        ([{"location": "/img/*.jpg$", "tdm-reservation": 1}], "/img/2024/x.jpg", True),
        ([{"location": "/img/*.jpg$", "tdm-reservation": 1}], "/img/x.jpg?w=200", False),  # $ anchors the end
        ([{"location": "/Img/", "tdm-reservation": 1}], "/img/x.jpg", False),  # case-sensitive
        ([{"location": "/%7Euser/", "tdm-reservation": 1}], "/~user/x.jpg", True),  # unreserved escapes decoded
        ([{"location": "/", "tdm-reservation": 2}], "/x.jpg", False),  # protocol error: unset
        ([{"location": "/", "tdm-reservation": "1"}], "/x.jpg", True),
        (["junk", {"tdm-reservation": 1}, {"location": "/", "tdm-reservation": 1}], "/x.jpg", True),  # junk skipped
        ([], "/x.jpg", False),
    ],
)
def test_tdmrep_json_matching(rules, path, reserved):
    assert TdmRules.parse(json.dumps(rules).encode()).reserved(path) is reserved


@pytest.mark.parametrize(
    "robots, url, token, allowed",
    [
        ("User-agent: *\nDisallow: /a\nAllow: /a/b", "http://x/a/b/c", "pairlake", True),  # longest match
        ("User-agent: *\nDisallow: /a/b\nAllow: /a", "http://x/a/b/c", "pairlake", False),
        ("User-agent: *\nDisallow: /a\nAllow: /a", "http://x/a", "pairlake", True),  # Allow wins a tie
        ("User-agent: *\nDisallow: /*.png$", "http://x/i/p.png", "pairlake", False),
        ("User-agent: *\nDisallow: /*.png$", "http://x/i/p.png?v=1", "pairlake", True),
        ("User-agent: *\nDisallow: /q?", "http://x/q?id=1", "pairlake", False),  # the query is matched too
        ("User-agent: *\nDisallow:\n", "http://x/a", "pairlake", True),  # empty Disallow: no rule
        ("User-agent: pairlake-extra\nDisallow: /\n", "http://x/a", "pairlake", True),  # tokens match exactly
        ("User-agent: PairLake/2.0\nDisallow: /\n", "http://x/a", "pairlake", False),  # ... case-insensitively
        ("User-agent: a\nDisallow: /\nUser-agent: pairlake\nAllow: /\n", "http://x/a", "pairlake", True),  # new group
        # Groups naming the same token are merged.
        ("User-agent: pairlake\nDisallow: /a\n\nUser-agent: pairlake\nDisallow: /b", "http://x/b", "pairlake", False),
        ("Disallow: /\nUser-agent: *\nAllow: /\n", "http://x/a", "pairlake", True),  # rules before any group: ignored
        ("User-agent: *\nDisallow: /caf%C3%A9/", "http://x/café/1.jpg", "pairlake", False),
    ],
)
def test_robots_rules(robots, url, token, allowed):
    assert RobotsRules.parse(robots).allows(request_path(url), token) is allowed
