"""pairlake's search page (orchestration/search_ui/index.html) in a real browser: Playwright for
Python driving the system's Chromium against the search service over the session's pipeline lake.

The service runs with a copy of the pipeline's config whose opt-out inbox is a folder of this
module: a removal request sent from the page must never reach the shared lake's inbox, where
other modules' sensor ticks would apply it.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from playwright import sync_api

from infra.config import PairlakeConfig, load_config
from orchestration.optout_requests import inbox_dir
from orchestration.search_server import clip_front_build
from tests.search_service import running_search_service

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium")
WAIT_MS = 60_000  # every wait in the page: a query encodes with the demo model on a busy CPU
TOKEN = "ui-test-token"
CLIP_FRONT = "/clip-front/"  # where the service serves clip-retrieval's own front end


# -- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def search_config(pipeline, tmp_path_factory) -> PairlakeConfig:
    """The pipeline's config with the opt-out inbox in a folder of this module (an absolute inbox
    is a local folder outside the lake)."""
    config = load_config(pipeline.config_path)
    inbox = tmp_path_factory.mktemp("search-ui") / "inbox"
    return dataclasses.replace(config, optout=dataclasses.replace(config.optout, inbox=str(inbox)))


@pytest.fixture(scope="module")
def service(search_config) -> Iterator[str]:
    with running_search_service(search_config) as base:
        yield base


@pytest.fixture(scope="module")
def index_name(service) -> str:
    names = get_json(f"{service}/indices-list")
    assert names, "the pipeline's lake has no kNN index"
    return names[0]


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.fail("no chromium on PATH: make setup installs Debian's chromium")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()


@dataclasses.dataclass
class UI:
    """One browser tab on the search page, and the script errors it has raised."""

    page: "sync_api.Page"
    base: str
    script_errors: list[str]

    def open(self, query_string: str = "") -> None:
        self.page.goto(f"{self.base}/{query_string}", timeout=WAIT_MS)
        self.page.wait_for_function("document.querySelector('#index').options.length > 0", timeout=WAIT_MS)

    def settle(self) -> None:
        """Wait for the search under way to be answered (results or an error)."""
        self.page.wait_for_selector('#results:is([data-state="done"], [data-state="error"])', state="attached",
                                    timeout=WAIT_MS)

    def search(self, submit=None) -> list[int]:
        """Run a search (a click on Search, or ``submit()``), wait for its answer and return the
        ids shown; fails with the page's error message if it shows one."""
        (submit or (lambda: self.page.click("#search")))()
        self.settle()
        assert self.error() == "", f"the page shows an error: {self.error()}"
        return self.ids()

    def ids(self) -> list[int]:
        return [int(i) for i in self.page.eval_on_selector_all("#results .result", "els => els.map(e => e.dataset.id)")]

    def error(self) -> str:
        return (self.page.text_content("#error") or "").strip()

    def wait_for_images(self) -> list[int]:
        """naturalWidth of every result image, once each has finished loading (or failed)."""
        self.page.wait_for_function(
            "[...document.querySelectorAll('#results .result img')].every(img => img.complete)", timeout=WAIT_MS)
        return self.page.eval_on_selector_all("#results .result img", "imgs => imgs.map(img => img.naturalWidth)")


@pytest.fixture
def ui(browser, service) -> Iterator[UI]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        page = context.new_page()
        page.set_default_timeout(WAIT_MS)
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        yield UI(page, service, errors)
    finally:
        context.close()


# -- helpers -------------------------------------------------------------------------------------


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=120) as response:
        return json.load(response)


def post_json(url: str, body: dict):
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST")
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.load(response)


def knn(service: str, index_name: str, **fields) -> list[dict]:
    return post_json(f"{service}/knn-service", {"indice_name": index_name, **fields})


def submit_removal(form) -> bool:
    """Send the removal form; whether the service took the request (its status says ok or bad)."""
    form.locator("button[type=submit]").click()
    status = form.locator(".removal-status")
    status.page.wait_for_function("el => el.classList.contains('ok') || el.classList.contains('bad')",
                                  arg=status.element_handle(), timeout=WAIT_MS)
    return "ok" in (status.get_attribute("class") or "").split()


# -- tests ---------------------------------------------------------------------------------------


def test_text_query_shows_stored_images_lineage_and_errors(ui, service, index_name, tmp_path):
    ui.open()
    assert ui.page.is_checked("#safe") and ui.page.is_checked("#violence") and ui.page.is_checked("#dedup")
    assert not ui.page.is_checked("#mclip")
    assert ui.page.input_value("#index") == index_name

    ui.page.fill("#query", "a red circle")
    ids = ui.search(lambda: ui.page.press("#query", "Enter"))  # Enter submits
    expected = [r["id"] for r in knn(service, index_name, text="a red circle", num_images=40, deduplicate=True,
                                     use_safety_model=True, use_violence_detector=True)]
    assert ids == expected, "the page shows what /knn-service answers for its default options, in that order"
    assert 0 < len(ids) <= 40

    widths = ui.wait_for_images()
    assert len(widths) == len(ids) and all(w > 0 for w in widths), f"result images that did not load: {widths}"
    sources = ui.page.eval_on_selector_all("#results .result img", "imgs => imgs.map(img => img.src)")
    assert sources == [f"{service}/image/{index_name}/{i}" for i in ids], "images come from the lake, not their URL"
    captions = ui.page.eval_on_selector_all("#results .result .caption", "els => els.map(e => e.textContent)")
    assert len(captions) == len(ids) and all(c.strip() for c in captions)
    assert any("circle" in c for c in captions)
    similarities = ui.page.eval_on_selector_all("#results .result .similarity", "els => els.map(e => e.textContent)")
    assert len(similarities) == len(ids) and all(re.fullmatch(r"-?\d\.\d{3}", s) for s in similarities), similarities
    assert [float(s) for s in similarities] == sorted((float(s) for s in similarities), reverse=True)

    # The first result's lineage: crawl, page URL, WARC file and release versions from /lineage.
    first = ui.page.locator("#results .result").first
    lineage = get_json(f"{service}/lineage/{index_name}/{ids[0]}")
    first.locator(".lineage-toggle").click()
    first.locator(".lineage dl").wait_for(timeout=WAIT_MS)
    shown = first.locator(".lineage").inner_text()
    for text in (lineage["source"]["crawl_id"], lineage["source"]["page_url"], lineage["source"]["warc_file"]):
        assert text in shown, f"{text!r} is not in the lineage shown:\n{shown}"
    assert lineage["releases"], "a curated image of the pipeline's lake is in a release"
    for release in lineage["releases"]:
        assert f"{release['release']} v{release['version']}" in shown
    first.locator(".lineage-toggle").click()
    assert not first.locator(".lineage").is_visible(), "the lineage toggle hides it again"

    ui.page.evaluate("window.scrollTo(0, 0)")
    screenshot = tmp_path / "search.png"
    ui.page.screenshot(path=str(screenshot))
    from PIL import Image

    with Image.open(screenshot) as image:
        colours = image.convert("RGB").resize((320, 225)).getcolors(maxcolors=1 << 16)
    assert colours is not None and len(colours) > 50, f"the screenshot looks blank: {len(colours or [])} colours"

    # An error from the service is shown, with its own words, and replaces the results.
    ui.page.fill("#num-images", "100000")
    ui.page.click("#search")
    ui.settle()
    assert ui.page.is_visible("#error")
    assert "num_images" in ui.error(), ui.error()
    assert ui.ids() == []
    assert ui.script_errors == []


def test_safe_mode_hides_unsafe_results(ui, service, index_name):
    everything = knn(service, index_name, text="a picture", num_images=1000, num_result_ids=1000, deduplicate=False,
                     use_safety_model=False, use_violence_detector=False)
    unsafe = [r for r in everything if r.get("punsafe") is not None and r["punsafe"] > 0.5]
    assert unsafe, (f"no result of index {index_name} has punsafe > 0.5 ({len(everything)} searched): "
                    "the safe-mode check needs one (the demo lake holds at least one)")
    target = max(unsafe, key=lambda r: r["punsafe"])

    ui.open()
    ui.page.uncheck("#violence")  # only safe mode differs between the two searches
    ui.page.uncheck("#dedup")
    ui.page.fill("#num-images", "200")
    ui.page.fill("#query", target["caption"])
    ui.page.uncheck("#safe")
    shown = ui.search()
    assert target["id"] in shown, f"id {target['id']} ({target['caption']!r}) is not shown with safe mode off"

    shown = ui.search(lambda: ui.page.check("#safe"))  # a changed filter re-runs the search
    assert shown, "safe mode hid every result"
    assert target["id"] not in shown, f"unsafe id {target['id']} (punsafe {target['punsafe']:.3f}) shown in safe mode"

    # "Search over captions": the caption embeddings' index, with the same filters.
    over_text = ui.search(lambda: ui.page.select_option("#modality", "text"))
    assert over_text == [r["id"] for r in knn(service, index_name, text=target["caption"], modality="text",
                                                num_images=200, num_result_ids=200, deduplicate=False,
                                                use_safety_model=True, use_violence_detector=False)]
    assert target["id"] not in over_text
    assert ui.script_errors == []


def test_image_upload_finds_the_image(ui, service, index_name, tmp_path):
    wanted = knn(service, index_name, text="a blue square", num_images=1, use_safety_model=True,
                 use_violence_detector=True, deduplicate=True)[0]["id"]
    with urllib.request.urlopen(f"{service}/image/{index_name}/{wanted}", timeout=120) as response:
        data, kind = response.read(), response.headers.get_content_type()
    upload = tmp_path / ("query" + {"image/png": ".png", "image/webp": ".webp"}.get(kind, ".jpg"))
    upload.write_bytes(data)

    ui.open()
    ui.page.fill("#query", "a red circle")  # replaced by the image query
    ids = ui.search(lambda: ui.page.set_input_files("#upload", str(upload)))  # choosing a file searches
    assert ids
    assert ui.page.input_value("#query") == ""
    assert upload.name in (ui.page.text_content("#image-query") or "")
    first = ui.page.locator("#results .result").first
    similarity = float(first.locator(".similarity").text_content())
    assert ids[0] == wanted or similarity > 0.99, (
        f"the first result of the upload of id {wanted}'s image is id {ids[0]} with similarity {similarity}")
    assert ui.script_errors == []


def test_removal_form_sends_a_request_into_the_inbox(ui, search_config, service, index_name):
    inbox = inbox_dir(search_config)
    assert Path(search_config.optout.inbox).is_absolute() and "search-ui" in search_config.optout.inbox
    before = set(inbox.names("*.json"))

    ui.open()
    ui.page.fill("#query", "a green square")
    ids = ui.search()
    assert ids
    card = ui.page.locator("#results .result").first
    url = card.locator(".url").text_content()
    card.locator(".remove-toggle").click()
    form = card.locator("form.removal")
    form.wait_for(timeout=WAIT_MS)
    assert form.locator("[name=kind]").input_value() == "url"
    assert form.locator("[name=value]").input_value() == url

    # A request the service refuses shows its message in the form.
    form.locator("[name=kind]").select_option("url_prefix")
    form.locator("[name=value]").fill("http://1")
    form.locator("[name=requester]").fill("UI test")
    form.locator("[name=reason]").fill("checking the removal form")
    status = form.locator(".removal-status")
    assert not submit_removal(form), "the service took a url_prefix request for 'http://1'"
    assert "url_prefix" in status.text_content()
    assert set(inbox.names("*.json")) == before

    # The request for this image's URL lands in the inbox under the id the page shows.
    form.locator("[name=kind]").select_option("url")
    assert form.locator("[name=value]").input_value() == url
    assert submit_removal(form), f"the removal request was refused: {status.text_content()}"
    request_id = status.get_attribute("data-request")
    assert request_id and request_id in status.text_content()
    names = set(inbox.names("*.json"))
    assert names - before == {f"{request_id}.json"}
    request = json.loads(inbox.read_bytes(f"{request_id}.json"))
    assert request["kind"] == "url" and request["value"] == url and request["requester"] == "UI test"
    assert ui.script_errors == []


def test_token_travels_with_every_call(browser, search_config, index_name):
    with running_search_service(search_config, token=TOKEN) as base:
        context = browser.new_context()
        try:
            page = context.new_page()
            ui = UI(page, base, [])
            page.on("pageerror", lambda error: ui.script_errors.append(str(error)))
            ui.open(f"?token={TOKEN}")
            ui.page.fill("#query", "a red circle")
            ids = ui.search()
            assert ids
            widths = ui.wait_for_images()
            assert all(w > 0 for w in widths), f"result images that did not load with the token: {widths}"
            first = page.locator("#results .result").first
            first.locator(".lineage-toggle").click()
            first.locator(".lineage dl").wait_for(timeout=WAIT_MS)
            assert ui.script_errors == []
        finally:
            context.close()


def test_clip_retrieval_front_end_searches_the_service_unchanged(browser, service, index_name):
    """clip-retrieval's own web front end (clip-front, from its wheel's front/build) served at
    /clip-front/: pointed at this service by its config.json, a text query typed into its search
    bar runs /knn-service with clip-front's default options and shows the answer's images (their
    source URLs, on the sample crawl's image server) and captions."""
    front = clip_front_build()
    if front is None:
        pytest.fail("clip-retrieval's built front end (front/build in its wheel) is not installed: "
                    "`make setup` installs clip-retrieval --no-deps")
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        page = context.new_page()
        page.set_default_timeout(WAIT_MS)
        script_errors: list[str] = []
        answers: list[tuple[int, str, str]] = []  # every response to the page: status, method, URL
        page.on("pageerror", lambda error: script_errors.append(str(error)))
        page.on("response", lambda response: answers.append((response.status, response.request.method, response.url)))

        page.goto(f"{service}{CLIP_FRONT}", timeout=WAIT_MS)
        # Ready once /indices-list fills its index menu (Enter is bound to the search bar by then).
        page.wait_for_selector("clip-front select option", state="attached", timeout=WAIT_MS)
        assert page.eval_on_selector("clip-front select", "menu => menu.value") == index_name
        assert parse_qs(urlsplit(page.url).query).get("back") == [service], (
            f"clip-front did not take the service as its back end from config.json: {page.url}")

        page.fill("clip-front #searchBar", "a red circle")
        with page.expect_response(lambda r: urlsplit(r.url).path == "/knn-service" and r.request.method == "POST",
                                  timeout=WAIT_MS) as answered:
            page.press("clip-front #searchBar", "Enter")
        response = answered.value
        sent = json.loads(response.request.post_data)
        assert sent == {  # clip-retrieval 2.45.0's clip-front, its options as it opens
            "text": "a red circle", "image": None, "image_url": None, "embedding_input": None, "modality": "image",
            "num_images": 40, "indice_name": index_name, "num_result_ids": 3000, "use_mclip": False,
            "deduplicate": True, "use_safety_model": True, "use_violence_detector": True,
            "aesthetic_score": "", "aesthetic_weight": "0.5"}, sent
        assert response.status == 200, f"/knn-service refused clip-front's request: {response.status} {response.text()}"
        answer = response.json()
        assert answer, "/knn-service found nothing for 'a red circle'"
        assert [r["id"] for r in answer] == [r["id"] for r in post_json(f"{service}/knn-service", sent)]

        # What clip-front shows first: the answer's results with metadata (the first num_images),
        # in order, one per URL; results past them get theirs from /metadata as it scrolls.
        first = [r for r in answer[:sent["num_images"]] if "url" in r]
        urls = list(dict.fromkeys(r["url"] for r in first))
        assert urls, f"the first results carry no url column: {answer[0]}"
        page.wait_for_function("n => document.querySelector('clip-front').shadowRoot"
                               ".querySelectorAll('#products figure').length >= n", arg=len(urls), timeout=WAIT_MS)
        sources = page.eval_on_selector_all("clip-front #products img.pic", "imgs => imgs.map(i => i.getAttribute('src'))")
        assert sources[:len(urls)] == urls, "clip-front shows the answer's images by their url, in its order"
        everything = post_json(f"{service}/metadata", {"ids": [r["id"] for r in answer], "indice_name": index_name})
        assert set(sources) <= {row["metadata"]["url"] for row in everything}
        captions = page.eval_on_selector_all("clip-front #products figcaption", "els => els.map(e => e.textContent.trim())")
        caption_of = {r["url"]: r["caption"] for r in reversed(first)}  # the first result of each URL
        shown = [c if len(c) <= 50 else c[:50] + "..." for c in (caption_of[u] for u in urls)]
        assert captions[:len(urls)] == shown
        assert any("red circle" in c for c in captions[:5]), captions[:5]

        # The first image loads from its source URL (the image server is up for the session).
        page.wait_for_function("document.querySelector('clip-front').shadowRoot.querySelector('#products img.pic')"
                               ".complete", timeout=WAIT_MS)
        width = page.eval_on_selector("clip-front #products img.pic", "img => img.naturalWidth")
        assert width > 0, f"clip-front's first image did not load from {urls[0]}"

        page.wait_for_load_state("networkidle", timeout=WAIT_MS)  # its /metadata calls, if any, too
        called = {urlsplit(url).path for _, method, url in answers if url.startswith(service)}
        # /metadata is called as it shows results past the first answer's: not always by now.
        assert {"/clip-front/config.json", "/indices-list", "/knn-service"} <= called, called
        refused = [a for a in answers if a[2].startswith(service) and a[0] >= 400]
        assert refused == [], f"the service refused clip-front's requests: {refused}"
        assert script_errors == []
    finally:
        context.close()
