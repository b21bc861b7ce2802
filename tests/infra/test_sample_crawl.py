import gzip
import io
import json
import zlib
from html.parser import HTMLParser
from urllib.parse import urljoin, urlsplit
from urllib.robotparser import RobotFileParser

import pytest
from PIL import Image
from warcio.archiveiterator import ArchiveIterator

from infra.image_server import load_site
from infra.sample_crawl import (AI_TXT_PREFIX, KINDS, MIN_PAGES, NON_UTF8_CAPTION, TDMREP_PREFIX, TIMEOUT_DELAY_S,
                                generate_sample_crawl)

BASE = "http://127.0.0.1:18765"


@pytest.fixture(scope="module")
def crawl(tmp_path_factory):
    return generate_sample_crawl(tmp_path_factory.mktemp("crawl"), BASE, pages=60, seed=0)


@pytest.fixture(scope="module")
def expected(crawl):
    return json.loads(crawl.expected_path.read_text())


@pytest.fixture(scope="module")
def site(crawl):
    return load_site(crawl.site_dir)


class _Imgs(HTMLParser):
    def __init__(self):
        super().__init__()
        self.base = None
        self.imgs = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "base":
            self.base = attrs["href"]
        elif tag == "img":
            self.imgs.append((attrs["src"], attrs.get("alt")))


def _records(path):
    with open(path, "rb") as fh:
        for record in ArchiveIterator(fh):
            yield record, record.content_stream().read()


def _html_pages(crawl):
    """(url, charset, resolved (img url, alt) list) of every HTML response in the WARCs."""
    for path in crawl.warcs:
        for record, body in _records(path):
            if record.rec_type != "response" or "text/html" not in record.http_headers["Content-Type"]:
                continue
            charset = record.http_headers["Content-Type"].split("charset=")[1]
            parser = _Imgs()
            parser.feed(body.decode(charset))
            url = record.rec_headers["WARC-Target-URI"]
            resolved = [(src if src.startswith("data:") else urljoin(parser.base or url, src), alt) for src, alt in parser.imgs]
            yield url, charset, resolved


def test_warcs_read_back_like_common_crawl(crawl, expected):
    assert len(crawl.warcs) == 3 and all(p.name.endswith(".warc.gz") for p in crawl.warcs)
    types = []
    for path in crawl.warcs:
        records = [r.rec_type for r, _ in _records(path)]
        assert records[0] == "warcinfo"
        types += records
    well_formed = [p for p in expected["pages"] if not p["malformed"]]
    assert types.count("response") == len(well_formed) + len(expected["non_html_records"])
    assert types.count("request") == len(expected["pages"]) + len(expected["non_html_records"])


def test_every_record_is_its_own_gzip_member(crawl):
    data = crawl.warcs[0].read_bytes()
    members, rest = 0, data
    while rest:
        unpacker = zlib.decompressobj(wbits=31)
        unpacker.decompress(rest)
        assert unpacker.eof
        rest = unpacker.unused_data
        members += 1
    assert members == sum(1 for _ in _records(crawl.warcs[0]))


def test_the_pages_hold_exactly_the_expected_images(crawl, expected):
    images = expected["images"]
    seen: dict[tuple[str, str | None], int] = {}
    for _url, _charset, imgs in _html_pages(crawl):
        for pair in imgs:
            seen[pair] = seen.get(pair, 0) + 1
    readable = {(url, e["caption"]): len(e["pages"]) for url, e in images.items() if e["kind"] != "malformed_record"}
    assert seen == readable


def test_every_trouble_kind_is_present(crawl, expected):
    kinds = {e["kind"] for e in expected["images"].values()}
    assert kinds == set(KINDS) == set(expected["kinds"])


def test_relative_urls_resolve_to_the_server(expected):
    by_kind = {}
    for url, e in expected["images"].items():
        by_kind.setdefault(e["kind"], []).append((url, e))
    srcs = [e["src"] for _, e in by_kind["relative"] + by_kind["protocol_relative"] + by_kind["base_href"]]
    assert any(s.startswith("../") for s in srcs) and any(s.startswith("//") for s in srcs)
    assert not any(s.startswith("http") for s in srcs)
    for url, _ in by_kind["relative"] + by_kind["protocol_relative"] + by_kind["base_href"]:
        assert url.startswith(BASE + "/")


def test_duplicates_repeat_across_pages_and_warc_files(expected):
    warc_of = {p["url"]: p["warc"] for p in expected["pages"]}
    (dup,) = [e for e in expected["images"].values() if e["kind"] == "duplicate"]
    assert len(dup["pages"]) >= 3 and len({warc_of[p] for p in dup["pages"]}) >= 2


def test_downloadable_images_decode_from_the_site(expected, site):
    for url, e in expected["images"].items():
        if e["download"] != "ok":
            continue
        resource = site[urlsplit(url).path]
        if e["kind"] == "redirect":
            assert resource.status == 302
            resource = site[resource.redirect_to]
        assert resource.status == 200 and resource.delay_s < 3
        with Image.open(io.BytesIO(resource.body)) as image:
            image.load()
            assert min(image.size) >= 32


def test_trouble_resources_misbehave_as_labelled(expected, site):
    robots = RobotFileParser()
    robots.parse(site["/robots.txt"].body.decode().splitlines())
    for url, e in expected["images"].items():
        resource = site.get(urlsplit(url).path)
        kind = e["kind"]
        if kind == "http_404":
            assert resource.status == 404
        elif kind == "timeout":
            assert resource.delay_s == TIMEOUT_DELAY_S > 3
        elif kind == "slow":
            assert 0.5 <= resource.delay_s < 3
        elif kind == "noai":
            assert "noai" in resource.headers["X-Robots-Tag"]
        elif kind == "robots_disallowed":
            assert not robots.can_fetch("pairlake", url)
        elif kind == "robots_ai":
            assert robots.can_fetch("pairlake", url) and not robots.can_fetch("CCBot", url)
        elif kind == "tdm_header":
            assert resource.headers["tdm-reservation"] == "1"
        elif kind == "tdmrep_json":
            assert urlsplit(url).path.startswith(TDMREP_PREFIX) and TDMREP_PREFIX in site["/.well-known/tdmrep.json"].body.decode()
        elif kind == "ai_txt":
            assert urlsplit(url).path.startswith(AI_TXT_PREFIX) and AI_TXT_PREFIX in site["/ai.txt"].body.decode()
        elif kind == "not_image":
            with pytest.raises(Image.UnidentifiedImageError):
                Image.open(io.BytesIO(resource.body))
        elif kind == "truncated":
            with pytest.raises(OSError, match="truncated"), Image.open(io.BytesIO(resource.body)) as image:
                image.load()
        elif kind == "huge":
            assert len(resource.body) < 100_000
            with pytest.raises(Image.DecompressionBombError):
                Image.open(io.BytesIO(resource.body))
        elif kind in ("match", "mismatch"):
            assert robots.can_fetch("pairlake", url) and resource.status == 200


def test_caption_kinds(expected):
    images = list(expected["images"].values())
    languages = {e["language"] for e in images if e["kind"] == "non_english"}
    assert {"fr", "de", "es", "ja"} <= languages
    assert all(e["caption"] in (None, "") for e in images if e["kind"] == "no_alt")
    assert all(url.startswith("data:image/") for url, e in expected["images"].items() if e["kind"] == "data_url")
    mismatches = [e for e in images if e["kind"] == "mismatch"]
    assert mismatches and all(e["caption_class"] != e["class"] for e in mismatches)
    assert {e["photo"] for e in images if e["kind"] == "photo"} >= {"astronaut", "coffee", "chelsea", "rocket"}


def test_one_page_needs_its_declared_charset(crawl, expected):
    (page,) = [p for p in expected["pages"] if p["charset"] != "utf-8"]
    for path in crawl.warcs:
        for record, body in _records(path):
            if record.rec_headers["WARC-Target-URI"] == page["url"] and record.rec_type == "response":
                with pytest.raises(UnicodeDecodeError):
                    body.decode("utf-8")
                assert NON_UTF8_CAPTION in body.decode(page["charset"])
                return
    pytest.fail("the non-UTF-8 page is missing")


def test_one_record_is_a_truncated_gzip_member_at_the_end_of_its_file(crawl, expected):
    bad = expected["malformed_record"]
    path = crawl.out_dir / "warcs" / bad["warc"]
    with pytest.raises(EOFError):
        gzip.decompress(path.read_bytes())
    # warcio reads every record before it and yields nothing of the broken one's page.
    urls = [r.rec_headers["WARC-Target-URI"] for r, _ in _records(path) if r.rec_type == "response"]
    assert urls and bad["url"] not in urls
    for other in crawl.warcs:
        if other != path:
            gzip.decompress(other.read_bytes())


def test_same_seed_gives_identical_output_and_another_seed_does_not(crawl, tmp_path):
    again = generate_sample_crawl(tmp_path / "again", BASE, pages=60, seed=0)
    assert (again.site_dir / "manifest.json").read_bytes() == (crawl.site_dir / "manifest.json").read_bytes()
    assert again.expected_path.read_bytes() == crawl.expected_path.read_bytes()
    for ours, theirs in zip(sorted((crawl.site_dir / "files").iterdir()), sorted((again.site_dir / "files").iterdir())):
        assert ours.read_bytes() == theirs.read_bytes()
    assert [p.read_bytes() for p in again.warcs] == [p.read_bytes() for p in crawl.warcs]
    other = generate_sample_crawl(tmp_path / "other", BASE, pages=MIN_PAGES, seed=1)
    small = generate_sample_crawl(tmp_path / "small", BASE, pages=MIN_PAGES, seed=0)
    assert (other.site_dir / "manifest.json").read_bytes() != (small.site_dir / "manifest.json").read_bytes()
    assert {e["kind"] for e in small.images.values()} == set(KINDS)


def test_too_few_pages_is_refused(tmp_path):
    with pytest.raises(ValueError, match="pages"):
        generate_sample_crawl(tmp_path, BASE, pages=MIN_PAGES - 1)
