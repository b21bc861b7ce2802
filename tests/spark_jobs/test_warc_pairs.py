"""WARC → candidate pairs: real .warc.gz files written with warcio (hand-built members for the
malformed cases warcio cannot write), no mocks."""

from __future__ import annotations

import gzip
import hashlib
import io
import itertools
import random
import zlib
from datetime import UTC, datetime
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from warcio.archiveiterator import ArchiveIterator
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from infra.config import ExtractConfig
from infra.tables import CANDIDATES, WARC_REJECTS
from spark_jobs.html_images import _PageResolver, resolve_url
from spark_jobs.warc_pairs import COUNTERS, WarcExtraction, extract_pairs, pair_uid, warc_file_name, write_pairs_parquet

CONFIG = ExtractConfig()
PAGE = "https://www.example.com/blog/post.html"


def response_member(
    url: str,
    body: bytes,
    content_type: str | None = "text/html; charset=utf-8",
    status: str = "200 OK",
    extra_headers: tuple[tuple[str, str], ...] = (),
    date: str = "2024-03-05T06:07:08Z",
) -> bytes:
    """One gzip member holding a warcio-written response record."""
    headers = [("Content-Type", content_type)] if content_type else []
    http = StatusAndHeaders(status, headers + list(extra_headers), protocol="HTTP/1.1")
    return _write(lambda w: w.create_warc_record(
        url, "response", payload=io.BytesIO(body), http_headers=http, warc_headers_dict={"WARC-Date": date}
    ))


def request_member(url: str) -> bytes:
    http = StatusAndHeaders("GET / HTTP/1.1", [("Host", "www.example.com")], is_http_request=True)
    return _write(lambda w: w.create_warc_record(url, "request", payload=io.BytesIO(b""), http_headers=http))


def metadata_member(url: str) -> bytes:
    return _write(lambda w: w.create_warc_record(
        url, "metadata", payload=io.BytesIO(b"fetchTimeMs: 12\n"), warc_content_type="application/warc-fields"
    ))


def _write(make) -> bytes:
    buf = io.BytesIO()
    writer = WARCWriter(buf, gzip=True)
    writer.write_record(make(writer))
    return buf.getvalue()


def raw_member(block: bytes, warc_type: str = "response", url: str = PAGE, length: int | None = None) -> bytes:
    """A hand-built record, for the malformed cases warcio refuses to write."""
    head = (
        f"WARC/1.0\r\nWARC-Type: {warc_type}\r\nWARC-Target-URI: {url}\r\n"
        f"WARC-Date: 2024-01-01T00:00:00Z\r\nContent-Type: application/http; msgtype=response\r\n"
        f"Content-Length: {len(block) if length is None else length}\r\n\r\n"
    ).encode()
    return gzip.compress(head + block + b"\r\n\r\n")


def write_warc(path: Path, members: list[bytes]) -> list[int]:
    """Concatenate members into a .warc.gz; returns each member's offset."""
    offsets = [0, *itertools.accumulate(len(m) for m in members)][:-1]
    path.write_bytes(b"".join(members))
    return offsets


def html(body: str, head: str = "") -> bytes:
    return f"<!DOCTYPE html><html><head>{head}</head><body>{body}</body></html>".encode()


def extract(tmp_path: Path, members: list[bytes], config: ExtractConfig = CONFIG, name: str = "t.warc.gz"):
    path = tmp_path / name
    write_warc(path, members)
    return extract_pairs(str(path), name, "CC-TEST", config)


def pairs_of(result) -> list[tuple[str, str]]:
    return list(zip(result.pairs["url"].to_pylist(), result.pairs["caption"].to_pylist()))


def assert_funnel(counts: dict[str, int]) -> None:
    """Every image is a pair or has exactly one drop reason."""
    dropped = ("no_alt", "empty_alt", "no_src", "non_http_url", "caption_too_short", "caption_too_long", "duplicate_uid")
    assert counts["images_seen"] == counts["pairs"] + sum(counts[k] for k in dropped)


def test_urls_resolved_against_page_and_relative_base_href(tmp_path):
    page = html(
        "<img src='a.jpg' alt='relative to base'>"
        "<img src='/root.jpg' alt='root relative'>"
        "<img src='//cdn.example.net/p.png' alt='protocol relative'>"
        "<img src='../up.jpg#frag' alt='parent dir'>"
        "<img src='HTTPS://Other.example.org/x.jpg' alt='absolute upper'>"
        "<img src=' https://other.example.org/y.jpg ' alt='padded absolute'>",
        head="<base href='/static/img/'><base href='https://ignored.example.com/'>",
    )
    dropped = html(
        "<img src='data:image/gif;base64,R0lGOD' alt='data url image'>"
        "<img src='javascript:void(0)' alt='javascript url'>"
        "<img src='blob:https://www.example.com/1' alt='blob url image'>"
        "<img src='ftp://example.com/x.jpg' alt='ftp url image'>"
        "<img src='http://:80/nohost.jpg' alt='no host image'>"
        "<img alt='no source at all'>"
    )
    result = extract(tmp_path, [response_member(PAGE, page), response_member("http://plain.example.com/a/b", dropped)])
    assert pairs_of(result) == [
        ("https://www.example.com/static/img/a.jpg", "relative to base"),
        ("https://www.example.com/root.jpg", "root relative"),
        ("https://cdn.example.net/p.png", "protocol relative"),
        ("https://www.example.com/static/up.jpg", "parent dir"),
        ("https://Other.example.org/x.jpg", "absolute upper"),  # urljoin lowercases the scheme
        ("https://other.example.org/y.jpg", "padded absolute"),
    ]
    assert result.counts["non_http_url"] == 5
    assert result.counts["no_src"] == 1
    assert_funnel(result.counts)


def test_lazy_loaded_images_take_the_image_their_script_would_show(tmp_path):
    page = html(
        "<img src='data:image/gif;base64,R0lGOD' data-src='/photos/1.jpg' loading='lazy' alt='lazysizes'>"
        "<img src=' DATA:image/svg+xml,%3Csvg%3E' data-lazy-src='2.jpg' alt='wordpress plugin'>"
        "<img data-original='//cdn.example.net/3.jpg' alt='jquery lazyload, no src'>"
        "<img src='' data-src=' ' data-original='4.jpg' alt='first non-blank lazy attribute'>"
        "<img src='/real.jpg' data-src='/ignored.jpg' alt='a real src wins'>"
        "<img src='data:image/gif;base64,R0lGOD' alt='a placeholder alone'>"
        "<img src='data:image/gif;base64,R0lGOD' data-src='javascript:void(0)' alt='a lazy non-http url'>"
    )
    result = extract(tmp_path, [response_member(PAGE, page)])
    assert pairs_of(result) == [
        ("https://www.example.com/photos/1.jpg", "lazysizes"),
        ("https://www.example.com/blog/2.jpg", "wordpress plugin"),
        ("https://cdn.example.net/3.jpg", "jquery lazyload, no src"),
        ("https://www.example.com/blog/4.jpg", "first non-blank lazy attribute"),
        ("https://www.example.com/real.jpg", "a real src wins"),
    ]
    assert result.counts["non_http_url"] == 2 and result.counts["no_src"] == 0
    assert_funnel(result.counts)


def test_an_upper_case_scheme_is_lowered_whatever_the_page_scheme(tmp_path):
    page = html("<img src='HTTPS://Cdn.example.net/A.jpg' alt='upper https'>"
                "<img src='Http://cdn.example.net/b.jpg' alt='mixed http'>")
    result = extract(tmp_path, [response_member("http://www.example.com/", page)])
    assert pairs_of(result) == [("https://Cdn.example.net/A.jpg", "upper https"),
                                ("http://cdn.example.net/b.jpg", "mixed http")]


def test_protocol_relative_takes_page_scheme_and_base_href_may_be_absolute(tmp_path):
    page = html("<img src='//cdn.example.net/p.png' alt='protocol relative'><img src='x.jpg' alt='under base'>",
                head="<base href='https://static.example.org/assets/'>")
    result = extract(tmp_path, [response_member("http://www.example.com/", page)])
    assert pairs_of(result) == [
        ("https://cdn.example.net/p.png", "protocol relative"),  # the base's scheme
        ("https://static.example.org/assets/x.jpg", "under base"),
    ]


@pytest.mark.parametrize("base", [
    "https://h.com/d/p.html?q=1#f", "http://h.com", "https://u:p@h.com:8080/a/b/",
    "https://h.com/a/../b/c.html", "HTTPS://H.com/x/", "ftp://h.com/x", "https://[::1]/x/y",
])
def test_fast_url_resolution_matches_urljoin(base):
    srcs = [
        "x.jpg", "/x.jpg", "//cdn.h/x.jpg", "https://o.com/x.jpg#frag", "http://o.com", "../x.jpg", "./x.jpg",
        "a/./b.jpg", "?q=2", "#top", "", "data:image/png;base64,xx", "javascript:void(0)", "HTTP://O.com/x.jpg",
        "http:///x.jpg", "http://:80/x", "a b.jpg", "a\\b.jpg", "x\n.jpg", "C:/x.jpg", "photo:1.jpg", "foo_bar:x",
        "images/a:b.jpg", "//", "///x", "http:x.jpg", "/.well-known/x.png", "x.jpg?a=1&b=2#c", "http://[::1/x",
        ".hidden.jpg", "a..b.jpg", " /x.jpg ", "http://o.com/a/../b.jpg", "//o.com:80/x", "/a//b.jpg",
        "Https:x.jpg", "mailto:a@h.com", "a+b.c-d:x", "1a:x.jpg", "a//b.jpg", "../a//b.jpg", "a/..//b.jpg",
        "a//../b.jpg", "x.jpg//", "./a//b",
    ]
    resolve = _PageResolver(base)
    for src in srcs:
        assert resolve(src) == resolve_url(base, src), src


def test_a_relative_src_keeps_its_empty_segments_as_a_browser_does():
    # One image, one URL: the same as the fast path's, whatever the base.
    for base in ("https://h.com/d/p.html", "https://h.com/d/../d/p.html", "https://[::1]/d/p.html"):
        origin = base[: base.index("/", 8)]
        assert resolve_url(base, "a//b.jpg") == origin + "/d/a//b.jpg", base
        assert resolve_url(base, "../e//f.jpg") == origin + "/e//f.jpg", base
    assert resolve_url("https://h.com", "a//b.jpg") == "https://h.com/a//b.jpg"


def test_alt_entities_and_whitespace_normalised(tmp_path):
    page = html(
        "<img src='1.jpg' alt='  caf&eacute;\n\t cr&egrave;me&nbsp;&nbsp;br&ucirc;l&eacute;e  '>"
        "<img src='2.jpg' alt='Fish &amp;amp; chips &#x263A; &lt;b&gt;'>"
        "<img src='3.jpg' alt='   '><img src='4.jpg' alt=''><img src='5.jpg'>"
    )
    result = extract(tmp_path, [response_member(PAGE, page)])
    assert [c for _, c in pairs_of(result)] == ["café crème brûlée", "Fish & chips ☺ <b>"]
    assert (result.counts["empty_alt"], result.counts["no_alt"]) == (2, 1)


@pytest.mark.parametrize(
    ("text", "encoding", "head", "content_type"),
    [
        ("Crème brûlée à la française", "cp1252", "<meta charset='windows-1252'>", "text/html"),
        ("Straßenbahn über die Brücke", "iso-8859-1",
         "<meta http-equiv='Content-Type' content='text/html; charset=iso-8859-1'>", "text/html"),
        ("東京の桜は春に美しく咲きます", "shift_jis", "<meta charset=\"Shift_JIS\">", "text/html"),
        ("Москва весной очень красива", "koi8-r", "", "text/html; charset=KOI8-R"),
        ("Déjà vu très élégant garçon café crème", "cp1252", "", "text/html"),  # undeclared: sniffed
        ("東京の桜は春になるととても美しく咲き、多くの人々が花見を楽しみます。", "shift_jis", "", "text/html"),  # sniffed
        ("Маленькая собака играет в саду, пока светит солнце.", "cp1251", "", "text/html"),  # sniffed
        ("Zürich café naïve résumé", "utf-8", "", "text/html"),  # undeclared UTF-8
        ("Zürich café naïve résumé", "utf-8-sig", "<meta charset='windows-1252'>", "text/html"),  # BOM wins
        ("Zürich café naïve résumé", "utf-8", "<meta charset='base64'>", "text/html; charset=bogus"),  # not text codecs
    ],
)
def test_page_charset(tmp_path, text, encoding, head, content_type):
    body = f"<html><head>{head}</head><body><p>{text}</p><img src='i.jpg' alt='{text}'></body></html>"
    result = extract(tmp_path, [response_member(PAGE, body.encode(encoding), content_type=content_type)])
    assert [c for _, c in pairs_of(result)] == [text]


def test_undecodable_page_is_a_reject_not_a_crash(tmp_path):
    binary = b"\x00\x01\xfe\xff" * 300 + b"<img src='a.jpg' alt='never seen'>"
    members = [response_member(PAGE, binary, content_type="text/html"),
               response_member(PAGE + "?2", html("<img src='b.jpg' alt='a good page'>"))]
    result = extract(tmp_path, members)
    assert pairs_of(result) == [("https://www.example.com/blog/b.jpg", "a good page")]
    assert result.rejects.to_pylist() == [{
        "warc_file": "t.warc.gz", "record_offset": 0, "page_url": PAGE, "reason": "undecodable_page",
        "detail": "binary content: NUL bytes and no declared charset",
    }]
    assert result.counts["undecodable_page"] == 1


def test_caption_length_bounds(tmp_path):
    config = ExtractConfig(min_caption_chars=5, max_caption_chars=20)
    page = html("<img src='1.jpg' alt='logo'><img src='2.jpg' alt='  five  '><img src='3.jpg' alt='exactly twenty chars'>"
                "<img src='4.jpg' alt='twenty-one characters'>")
    result = extract(tmp_path, [response_member(PAGE, page)], config)
    assert [c for _, c in pairs_of(result)] == ["exactly twenty chars"]
    assert (result.counts["caption_too_short"], result.counts["caption_too_long"]) == (2, 1)


def test_pair_uid_is_stable_and_a_page_keeps_its_first_occurrence(tmp_path):
    assert pair_uid("https://a/x.jpg", "café") == hashlib.sha256("https://a/x.jpg\ncafé".encode()).hexdigest()[:32]
    assert len(pair_uid("u", "c")) == 32
    first = html("<img src='/x.jpg' alt='a red bicycle'><img src='/x.jpg' alt='a red bicycle'>")
    second = html("<img src='https://www.example.com/x.jpg' alt='a  red bicycle'><img src='/x.jpg' alt='a blue bicycle'>")
    result = extract(tmp_path, [response_member(PAGE, first), response_member("https://www.example.com/other", second)])
    rows = result.pairs.to_pylist()
    # Repeats on a later page are left to the candidates stage, which sees every file of the run.
    assert [(r["caption"], r["page_url"]) for r in rows] == [
        ("a red bicycle", PAGE), ("a red bicycle", "https://www.example.com/other"),
        ("a blue bicycle", "https://www.example.com/other"),
    ]
    assert rows[0]["uid"] == rows[1]["uid"] == pair_uid("https://www.example.com/x.jpg", "a red bicycle")
    assert result.counts["duplicate_uid"] == 1
    assert_funnel(result.counts)


@pytest.mark.parametrize("warc_date, fetch_date", [
    ("2024-03-05T08:07:08.000001+02:00", datetime(2024, 3, 5, 6, 7, 8, 1, tzinfo=UTC)),
    ("2024-03-05T06:07:08", datetime(2024, 3, 5, 6, 7, 8, tzinfo=UTC)),  # no zone: UTC, as WARC says
    ("1969-12-31T23:59:59.5Z", datetime(1969, 12, 31, 23, 59, 59, 500000, tzinfo=UTC)),
    ("yesterday", None),
])
def test_fetch_date_is_the_warc_date_in_utc_to_the_microsecond(tmp_path, warc_date, fetch_date):
    result = extract(tmp_path, [response_member(PAGE, html("<img src='a.jpg' alt='a dated image'>"), date=warc_date)])
    assert result.pairs["fetch_date"].to_pylist() == [fetch_date]


def test_a_file_streams_in_batches_of_batch_rows_and_gathers_to_the_same_table(tmp_path):
    pages = [response_member(f"https://www.example.com/p{i}", html("".join(
        f"<img src='/{i}-{j}.jpg' alt='picture {i} {j}'>" for j in range(7)))) for i in range(10)]
    pages.insert(4, gzip.compress(b"garbage that is not a WARC record"))
    path = tmp_path / "t.warc.gz"
    write_warc(path, pages)
    whole = extract_pairs(str(path), path.name, "CC-TEST", CONFIG)
    streamed = list(WarcExtraction(str(path), path.name, "CC-TEST", ExtractConfig(batch_rows=8)))
    sizes = [batch.num_rows for kind, batch in streamed if kind == "pairs"]
    assert max(sizes) <= 14 and sum(sizes) == whole.pairs.num_rows == 70  # a page's pairs go in whole
    assert pa.Table.from_batches([b for k, b in streamed if k == "pairs"]).equals(whole.pairs)
    assert pa.Table.from_batches([b for k, b in streamed if k == "rejects"]).equals(whole.rejects)
    assert whole.rejects.num_rows == 1


def test_provenance_offsets_match_warcio_and_schemas_are_exact(tmp_path):
    members = [
        request_member(PAGE),
        response_member(PAGE, html("<img src='a.jpg' alt='first page image'>"), date="2024-03-05T06:07:08Z"),
        metadata_member(PAGE),
        response_member("https://b.example.com/", html("<img src='b.jpg' alt='second page image'>"),
                        date="2024-03-05T06:07:09.123456Z"),
    ]
    path = tmp_path / "CC-MAIN-x.warc.gz"
    offsets = write_warc(path, members)
    with path.open("rb") as fh:
        iterator = ArchiveIterator(fh)
        warcio_offsets = [iterator.get_record_offset() for _ in iterator]
    assert warcio_offsets == offsets

    result = extract_pairs(str(path), path.name, "CC-MAIN-2024-10", CONFIG)
    assert result.pairs.schema == CANDIDATES.schema
    assert result.rejects.schema == WARC_REJECTS.schema
    rows = result.pairs.to_pylist()
    assert [r["record_offset"] for r in rows] == [offsets[1], offsets[3]]
    assert [r["page_url"] for r in rows] == [PAGE, "https://b.example.com/"]
    assert {(r["crawl_id"], r["warc_file"]) for r in rows} == {("CC-MAIN-2024-10", "CC-MAIN-x.warc.gz")}
    assert [r["fetch_date"] for r in rows] == [
        datetime(2024, 3, 5, 6, 7, 8, tzinfo=UTC), datetime(2024, 3, 5, 6, 7, 9, 123456, tzinfo=UTC)
    ]
    assert set(result.counts) == set(COUNTERS)
    assert (result.counts["records"], result.counts["responses"], result.counts["html_pages"]) == (4, 2, 2)


def test_non_html_non_response_and_non_2xx_records_are_ignored(tmp_path):
    img = "<img src='x.jpg' alt='would be a pair'>"
    members = [
        request_member(PAGE),
        metadata_member(PAGE),
        response_member("https://www.example.com/a.jpg", b"\xff\xd8\xff" + img.encode(), content_type="image/jpeg"),
        response_member("https://www.example.com/robots.txt", img.encode(), content_type="text/plain"),
        response_member(PAGE + "?404", html(img), status="404 Not Found"),
        response_member(PAGE + "?301", html(img), status="301 Moved Permanently"),
        response_member(PAGE + "?untyped", html(img), content_type=None),  # no Content-Type: sniffed as HTML
        response_member(PAGE + "?xhtml", html(img.replace("x.jpg", "y.jpg")), content_type="application/xhtml+xml"),
    ]
    result = extract(tmp_path, members)
    assert [u for u, _ in pairs_of(result)] == ["https://www.example.com/blog/x.jpg", "https://www.example.com/blog/y.jpg"]
    c = result.counts
    assert (c["records"], c["responses"], c["non_html"], c["non_2xx_status"], c["html_pages"]) == (8, 6, 2, 2, 2)
    assert result.rejects.num_rows == 0


def test_dns_record_with_its_own_content_type_is_not_http(tmp_path):
    member = gzip.compress(
        b"WARC/1.0\r\nWARC-Type: response\r\nWARC-Target-URI: dns:example.com\r\nContent-Type: text/dns\r\n"
        b"Content-Length: 5\r\n\r\nA 1.2\r\n\r\n"
    )
    result = extract(tmp_path, [member])
    assert result.counts["non_http_response"] == 1 and result.rejects.num_rows == 0


def test_chunked_and_gzip_encoded_body_is_decoded(tmp_path):
    payload = gzip.compress(html("<img src='c.jpg' alt='stored as sent by the server'>"))
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(payload[i:i + 50]), payload[i:i + 50]) for i in range(0, len(payload), 50))
    member = response_member(PAGE, chunked + b"0\r\n\r\n",
                             extra_headers=(("Transfer-Encoding", "chunked"), ("Content-Encoding", "gzip")))
    result = extract(tmp_path, [member])
    assert pairs_of(result) == [("https://www.example.com/blog/c.jpg", "stored as sent by the server")]


def test_pages_over_max_page_bytes_are_skipped(tmp_path):
    config = ExtractConfig(max_page_bytes=2000)
    big = html("<img src='a.jpg' alt='on a big page'>" + "<p>filler text</p>" * 200)
    bomb = gzip.compress(html("<img src='b.jpg' alt='inflates too far'>" + " " * 10_000))
    members = [
        response_member(PAGE, big),
        response_member(PAGE + "?bomb", bomb, extra_headers=(("Content-Encoding", "gzip"),)),
        response_member(PAGE + "?small", html("<img src='c.jpg' alt='on a small page'>")),
    ]
    result = extract(tmp_path, members, config)
    assert [c for _, c in pairs_of(result)] == ["on a small page"]
    assert result.counts["page_too_large"] == 2 and result.rejects.num_rows == 0


def _corrupt(member: bytes) -> bytes:
    """The same member with its compressed body damaged (the gzip header stays valid)."""
    middle = len(member) // 2
    return member[:middle] + bytes(b ^ 0x5A for b in member[middle:middle + 8]) + member[middle + 8:]


def test_bad_records_become_rejects_and_reading_resyncs(tmp_path):
    good = [response_member(f"https://g{i}.example.com/", html(f"<img src='/{i}.jpg' alt='good image {i}'>"))
            for i in range(5)]
    members = [
        good[0],
        _corrupt(response_member("https://bad.example.com/", html("<img src='x.jpg' alt='lost to corruption'>" * 30))),
        good[1],
        b"this is not a gzip member at all",
        good[2],
        raw_member(b"not an HTTP response\r\n\r\n<img src='y.jpg' alt='unparsed headers'>"),
        raw_member(b"HTTP/1.1 200 OK\r\n\r\nshort", length=500),  # Content-Length larger than the block
        gzip.compress(b"garbage that is not a WARC record"),
        good[3],
        good[4][: len(good[4]) // 2],  # the file is cut inside the last member
    ]
    path = tmp_path / "bad.warc.gz"
    offsets = write_warc(path, members)
    result = extract_pairs(str(path), "bad.warc.gz", "CC-TEST", CONFIG)

    assert [c for _, c in pairs_of(result)] == [f"good image {i}" for i in range(4)]
    rejects = result.rejects.to_pylist()
    assert [(r["record_offset"], r["reason"]) for r in rejects] == [
        (offsets[1], "malformed_record"),
        (offsets[3], "malformed_record"),
        (offsets[5], "bad_http_headers"),
        (offsets[6], "malformed_record"),
        (offsets[7], "malformed_record"),
        (offsets[9], "truncated_record"),
    ]
    assert all(r["detail"] for r in rejects)
    assert rejects[2]["page_url"] == PAGE
    c = result.counts
    assert (c["malformed_record"], c["truncated_record"], c["bad_http_headers"]) == (4, 1, 1)


def test_randomly_damaged_files_never_crash(tmp_path):
    rng = random.Random(7)
    members = [response_member(f"https://s{i}.example.com/p", html(f"<img src='{i}.jpg' alt='picture number {i}'>" * 3))
               for i in range(12)]
    clean = b"".join(members)
    damaged = tmp_path / "damaged.warc.gz"
    reject_reasons = ("malformed_record", "truncated_record", "bad_http_headers", "undecodable_page")
    for _ in range(40):
        data = bytearray(clean)
        for _ in range(rng.randint(1, 4)):
            at = rng.randrange(len(data))
            data[at : at + rng.randint(0, 40)] = rng.randbytes(rng.randint(0, 40))
        damaged.write_bytes(bytes(data[: rng.randint(len(data) // 2, len(data))]))
        result = extract_pairs(str(damaged), damaged.name, "CC-TEST", CONFIG)
        assert result.rejects.num_rows == sum(result.counts[r] for r in reject_reasons)
        assert_funnel(result.counts)


def test_gzip_member_holding_two_records_is_rejected(tmp_path):
    two = zlib.decompress(response_member(PAGE, html("")), 31) + zlib.decompress(request_member(PAGE), 31)
    result = extract(tmp_path, [gzip.compress(two)])
    assert result.rejects["detail"].to_pylist() == ["gzip member holds more than one record"]


def test_missing_file_is_a_clear_error(tmp_path):
    missing = tmp_path / "nope" / "CC-MAIN-0001.warc.gz"
    with pytest.raises(FileNotFoundError, match="CC-MAIN-0001.warc.gz"):
        extract_pairs(str(missing), missing.name, "CC-TEST", CONFIG)


def test_uncompressed_warc_is_a_clear_error(tmp_path):
    path = tmp_path / "plain.warc"
    path.write_bytes(zlib.decompress(response_member(PAGE, html("")), 31))
    with pytest.raises(ValueError, match="plain.warc.*uncompressed"):
        extract_pairs(str(path), path.name, "CC-TEST", CONFIG)


@pytest.mark.parametrize(
    "data", [b"some notes, not a crawl\n" * 20, gzip.compress(b"gzipped, but no WARC in it")], ids=["plain", "gzipped"]
)
def test_a_file_holding_no_warc_record_is_a_clear_error(tmp_path, data):
    path = tmp_path / "notes.warc.gz"
    path.write_bytes(data)
    with pytest.raises(ValueError, match="notes.warc.gz: not a WARC file"):
        extract_pairs(str(path), path.name, "CC-TEST", CONFIG)


def test_a_warc_cut_inside_its_only_record_is_a_counted_skip(tmp_path):
    member = response_member(PAGE, html("<img src='a.jpg' alt='cut short'>" * 50))
    result = extract(tmp_path, [member[: len(member) // 2]])
    assert (result.counts["truncated_record"], result.pairs.num_rows) == (1, 0)


def test_fsspec_urls_are_read(tmp_path):
    data = response_member(PAGE, html("<img src='m.jpg' alt='read through fsspec'>"))
    with fsspec.open("memory://crawl/m.warc.gz", "wb") as fh:
        fh.write(data)
    result = extract_pairs("memory://crawl/m.warc.gz", "m.warc.gz", "CC-TEST", CONFIG)
    assert [c for _, c in pairs_of(result)] == ["read through fsspec"]
    assert warc_file_name("s3://bucket/crawl/segments/CC-MAIN-1.warc.gz") == "CC-MAIN-1.warc.gz"
    assert warc_file_name("https://host/a/CC-MAIN-2.warc.gz?sig=x") == "CC-MAIN-2.warc.gz"


def test_empty_file_gives_empty_tables_with_the_schemas(tmp_path):
    result = extract(tmp_path, [])
    assert result.pairs.num_rows == 0 and result.pairs.schema == CANDIDATES.schema
    assert result.rejects.num_rows == 0 and result.rejects.schema == WARC_REJECTS.schema
    assert result.counts == dict.fromkeys(COUNTERS, 0)


def test_write_pairs_parquet_round_trip(tmp_path):
    a, b = tmp_path / "a.warc.gz", tmp_path / "b.warc.gz"
    write_warc(a, [response_member(PAGE, html("<img src='1.jpg' alt='first file image'><img src='2.jpg'>"))])
    write_warc(b, [response_member(PAGE, html("<img src='3.jpg' alt='second file image'>")), b"junk"])
    out = tmp_path / "pairs.parquet"
    counts = write_pairs_parquet([str(a), str(b)], str(out), "CC-TEST", CONFIG)
    table = pq.read_table(out)
    assert table.schema.remove_metadata() == CANDIDATES.schema
    assert table["warc_file"].to_pylist() == ["a.warc.gz", "b.warc.gz"]
    assert table["caption"].to_pylist() == ["first file image", "second file image"]
    assert (counts["pairs"], counts["no_alt"], counts["html_pages"], counts["malformed_record"]) == (2, 1, 2, 1)
