"""Opt-out requests: validation refuses malformed requests whole; matching finds every named pair
and every copy of its bytes or URL."""

import datetime as dt
import hashlib
import json

import pytest

from infra.delta_store import Lake, Lineage
from infra.lake_storage import Folder
from spark_jobs import optout
from tests.optout_lake import fill_samples

NOW = dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc)


def _request(**fields):
    return {"requester": "ticket-9", "reason": "site owner", **fields}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], "must be a JSON object"),
        (_request(kind="phone", value="x"), "kind must be one of"),
        (_request(kind="url", value="ftp://a.example/x.jpg"), "http(s) URL with a host"),
        (_request(kind="url", value=""), "needs a 'value'"),
        (_request(kind="domain", value="not a host!"), "is not a host name"),
        (_request(kind="sha256", value="abc"), "64 hex digits"),
        (_request(kind="md5", value="z" * 32), "32 hex digits"),
        (_request(kind="url", value="http://a.example/x", image="x.png"), "belong to image requests only"),
        (_request(kind="image"), "names its example file"),
        (_request(kind="image", image="../etc/passwd"), "a file next to the request"),
        (_request(kind="image", image="missing.png"), "is not in the inbox"),
        (_request(kind="url", value="http://a.example/x", extra=1), "unknown field 'extra'"),
        ({"kind": "url", "value": "http://a.example/x", "reason": "r"}, "non-empty 'requester'"),
        (_request(kind="url", value="http://a.example/x", request_id="a b"), "request_id"),
        (_request(kind="url", value="http://a.example/x", request_id="../../etc/x"), "request_id"),
        (_request(kind="url_prefix", value="http://1"), "whole host and the start of a path"),
        (_request(kind="url_prefix", value="https://example.com"), "whole host and the start of a path"),
        ({**_request(kind="url", value="http://a.example/x"), "reason": "r" * 50_000}, "reason is 50,000 characters"),
        ({**_request(kind="url", value="http://a.example/x"), "requester": "q" * 201}, "requester is 201 characters"),
        (_request(kind="url", value="http://a.example/" + "x" * 3000), "value is 3,017 characters"),
    ],
)
def test_malformed_requests_are_refused_with_the_reason(tmp_path, data, message):
    with pytest.raises(optout.RequestError, match=message.replace("(", r"\(").replace(")", r"\)")):
        optout.validate(data, "req-1", Folder.local(tmp_path))


def test_an_undecodable_example_image_is_refused(tmp_path):
    (tmp_path / "x.png").write_bytes(b"not an image")
    with pytest.raises(optout.RequestError, match="cannot be decoded"):
        optout.validate(_request(kind="image", image="x.png"), "req-1", Folder.local(tmp_path))


def test_a_valid_request_keeps_digests_not_links(tmp_path):
    url = "https://Photos.example/me.jpg"
    request = optout.validate(_request(kind="url", value=url), "req-7")
    assert request.request_id == "req-7" and request.cleartext_target is None
    assert request.target_sha256 == hashlib.sha256(url.encode()).hexdigest()
    domain = optout.validate(_request(kind="domain", value="Photos.Example."), "req-8")
    assert domain.value == "photos.example" and domain.cleartext_target == "photos.example"
    (tmp_path / "req-9.json").write_text(json.dumps(_request(kind="md5", value="A" * 32)))
    assert optout.parse_request_file(Folder.local(tmp_path), "req-9.json").value == "a" * 32


def _lake(tmp_path) -> Lake:
    lake = Lake(str(tmp_path))
    pairs = [
        ("u1", "http://photos.example/me.jpg", b"ME"),
        ("u2", "http://photos.example/me.jpg", b"ME"),  # same URL, other caption
        ("u3", "http://mirror.example/copy.jpg", b"ME"),  # same bytes elsewhere
        ("u4", "http://cdn.photos.example/a/b.jpg", b"B"),
        ("u5", "http://notphotos.example/c.jpg", b"C"),
        ("u6", "https://user@photos.example:8443/d.jpg", b"D"),
        ("u7", "http://other.example/photos.example.jpg", b"E"),
    ]
    return fill_samples(lake, pairs)


def _match(tmp_path, kind, value):
    lake = _lake(tmp_path)
    return optout.find_matches(lake, optout.validate(_request(kind=kind, value=value), "r"))


def test_a_url_takes_its_other_captions_and_every_copy_of_its_bytes(tmp_path):
    found = _match(tmp_path, "url", "http://photos.example/me.jpg")
    assert found.uids == {"u1": "url", "u2": "url", "u3": "same_bytes"}
    assert found.partitions == {"u1": "w", "u2": "w", "u3": "w"}
    assert found.urls == {"http://photos.example/me.jpg", "http://mirror.example/copy.jpg"}


def test_a_domain_covers_its_subdomains_only(tmp_path):
    found = _match(tmp_path, "domain", "photos.example")
    assert set(found.uids) == {"u1", "u2", "u3", "u4", "u6"}


def test_a_prefix_and_a_hash(tmp_path):
    assert set(_match(tmp_path, "url_prefix", "http://cdn.photos.example/a/").uids) == {"u4"}
    assert set(_match(tmp_path, "md5", hashlib.md5(b"ME").hexdigest()).uids) == {"u1", "u2", "u3"}
    assert _match(tmp_path, "sha256", "0" * 64).uids == {}


def test_a_huge_or_absurdly_nested_request_file_is_refused_in_one_line(tmp_path):
    big = tmp_path / "big.json"
    big.write_bytes(b"[" * (optout.MAX_REQUEST_BYTES + 1))
    with pytest.raises(optout.RequestError, match="a request is at most"):
        optout.parse_request_file(Folder.local(tmp_path), "big.json")
    nested = tmp_path / "nested.json"
    nested.write_bytes(b"[" * 30_000 + b"]" * 30_000)  # under the cap, deeper than the parser can recurse
    with pytest.raises(optout.RequestError, match="not a JSON request"):
        optout.parse_request_file(Folder.local(tmp_path), "nested.json")


def test_rule_requests_enter_the_blocklist_under_the_kinds_that_later_crawls_match(tmp_path):
    """A url_prefix rule used to be stored as 'url-url-prefix', which no later crawl matched."""
    from infra.tables import BLOCKLIST
    from spark_jobs.blocklist import URL_RULE_KINDS

    lake = _lake(tmp_path)
    for kind, value in (("url_prefix", "http://cdn.photos.example/a/"), ("domain", "photos.example")):
        request = optout.validate(_request(kind=kind, value=value), f"r-{kind}")
        optout.extend_removal_blocklist(lake, request, optout.find_matches(lake, request), Lineage())
    rules = {r["kind"]: r["digest"] for r in lake.read(BLOCKLIST).to_pylist() if r["target"] == "url"
             and not r["kind"].endswith("sha256")}
    assert rules == dict(zip(URL_RULE_KINDS, ("http://cdn.photos.example/a/", "photos.example")))


@pytest.mark.parametrize(
    ("kind", "value", "held"),
    [
        ("domain", "com", "public suffix 'com'"),
        ("domain", "co.uk", "public suffix 'co.uk'"),
        ("domain", "github.io", "public suffix 'github.io'"),
        ("url_prefix", "https://co.uk/", "public suffix 'co.uk'"),
        ("domain", "photos.example", "matches 5 of 7 pairs"),  # 71% of this tiny lake
        ("url", "http://notphotos.example/c.jpg", "matches 1 of 7 pairs"),  # 14% > 10%
    ],
)
def test_over_broad_requests_are_held_for_confirmation(tmp_path, kind, value, held):
    lake = _lake(tmp_path)
    request = optout.validate(_request(kind=kind, value=value), "r")
    found = optout.find_matches(lake, request)
    assert held in optout.hold_reason(request, found, max_fraction=0.1, max_samples=1000)
    shown = optout.preview(found)
    assert shown["matched"] == len(found.uids) and shown["lake_pairs"] == 7


def test_narrow_requests_are_applied_at_once_and_sample_caps_hold_too(tmp_path):
    lake = _lake(tmp_path)
    request = optout.validate(_request(kind="url_prefix", value="http://cdn.photos.example/a/"), "r")
    found = optout.find_matches(lake, request)
    assert optout.hold_reason(request, found, max_fraction=0.5, max_samples=1000) is None
    assert "more than optout.max_auto_samples (0)" in optout.hold_reason(request, found, 1.0, 0)
    ip = optout.validate(_request(kind="domain", value="127.0.0.1"), "r")
    assert optout.public_suffix_named(ip) is None  # an address is not a suffix; its breadth is measured


def test_the_audit_is_append_only(tmp_path):
    lake = _lake(tmp_path)
    request = optout.validate(_request(kind="md5", value="a" * 32), "r1")
    for status in ("received", "applied"):
        outcome = optout.RemovalOutcome("r1", status, matched=1, rows_deleted={"images": 1})
        optout.record_request(lake, request, "r1", "r1.json", outcome, NOW, Lineage(run_id=status))
    rows = optout.request_rows(lake)["r1"]
    assert [r["status"] for r in rows] == ["received", "applied"]
    assert optout.latest_status(lake, "r1") == "applied" and optout.latest_status(lake, "r2") is None
