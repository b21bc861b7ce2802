"""The search service's own guards, on a lake without an index (no pipeline needed): token,
binding, CORS, body cap, removal requests into the inbox and their rate limit."""

import dataclasses
import json

import pytest
import requests

from infra.config import ConfigError, load_config
from orchestration.optout_requests import inbox_dir
from orchestration.search_server import check_bind
from tests.search_service import running_search_service


@pytest.fixture
def config(tmp_path):
    config = load_config(profile="demo", overrides={"lake": {"root": str(tmp_path / "lake")}})
    return dataclasses.replace(config, search=dataclasses.replace(config.search, removal_requests_per_hour=2,
                                                                 max_body_bytes=10_000))


def post(url: str, body, **kwargs) -> requests.Response:
    return requests.post(url, data=body if isinstance(body, (bytes, str)) else json.dumps(body), timeout=60, **kwargs)


def test_removal_requests_land_in_the_inbox_and_are_rate_limited(config):
    request = {"kind": "url", "value": "http://img.example/mine.jpg", "requester": "me", "reason": "my photo"}
    with running_search_service(config) as url:
        first = post(f"{url}/removal-request", request)
        assert first.status_code == 201 and first.json()["status"] == "received"
        name = f"{first.json()['request']}.json"
        assert json.loads(inbox_dir(config).read_bytes(name))["value"] == request["value"]
        refused = post(f"{url}/removal-request", {**request, "kind": "phone"})
        assert refused.status_code == 400 and refused.json()["error"].startswith("kind must be one of")
        unknown = post(f"{url}/removal-request", {**request, "request_id": "mine"})
        assert unknown.status_code == 400 and "unknown fields request_id" in unknown.json()["error"]
        # Two per hour from one address (refused ones count): the third is turned away.
        limited = post(f"{url}/removal-request", request)
        assert limited.status_code == 429 and "search.removal_requests_per_hour" in limited.json()["error"]
    assert inbox_dir(config).names("*.json") == [name]


def test_a_lake_without_an_index_and_oversized_or_broken_bodies_are_one_line(config):
    with running_search_service(config) as url:
        assert requests.get(f"{url}/indices-list", timeout=30).json() == []
        body = {"text": "a red circle", "modality": "image", "num_images": 3}
        missing = post(f"{url}/knn-service", body)
        assert missing.status_code == 404 and "has no kNN index yet: materialize knn_index" in missing.json()["error"]
        huge = post(f"{url}/knn-service", {"text": "a" * 20_000})
        assert huge.status_code == 413 and huge.json() == {"error": "the request body is over 10,000 bytes"}
        for broken, message in ((b"[1, 2]", "must be a JSON object"), (b"\xff", "not JSON")):
            answer = post(f"{url}/metadata", broken)
            assert answer.status_code == 400 and message in answer.json()["error"]
        assert answer.headers["access-control-allow-origin"] == "*"
        preflight = requests.options(f"{url}//knn-service", timeout=30)
        assert preflight.status_code == 204 and preflight.headers["access-control-allow-headers"] == "*"
        page = requests.get(f"{url}/", timeout=30)
        assert page.ok and page.headers["content-type"].startswith("text/html") and b"pairlake" in page.content


def test_a_token_guards_every_route_when_set(config):
    with running_search_service(config, token="s3cret") as url:
        for path in ("/", "/indices-list", "/config.json"):
            refused = requests.get(f"{url}{path}", timeout=30)
            assert refused.status_code == 401 and "token" in refused.json()["error"]
        assert requests.get(f"{url}/indices-list?token=s3cret", timeout=30).json() == []
        assert requests.get(f"{url}/indices-list", headers={"Authorization": "Bearer s3cret"}, timeout=30).ok
        assert requests.get(f"{url}/indices-list?token=wrong", timeout=30).status_code == 401


def test_binding_beyond_loopback_needs_a_token():
    check_bind("127.0.0.1", None)
    check_bind("::1", None)
    check_bind("localhost", None)
    check_bind("0.0.0.0", "a-token")
    with pytest.raises(ConfigError, match=r"^search.host 0.0.0.0 is not loopback: set \$PAIRLAKE_SEARCH_TOKEN"):
        check_bind("0.0.0.0", None)


def test_clip_retrieval_front_end_is_served_pointed_at_this_service(config):
    with running_search_service(config) as url:
        page = requests.get(f"{url}/clip-front/", timeout=30)
        assert page.ok and b"<clip-front>" in page.content
        script = page.text.split('src="main.')[1].split('"')[0]
        assert requests.get(f"{url}/clip-front/main.{script}", timeout=30).ok
        assert requests.get(f"{url}/clip-front/config.json", timeout=30).json() == {
            "defaultBackend": url, "defaultIndex": "", "urlColumn": "url"}
