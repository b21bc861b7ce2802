"""The Common-Crawl-like benchmark crawl (benchmarks/cc_like_crawl.py): reproducible, its truth
covering the cases it claims, and pairlake's extract_pairs finding that truth."""

from __future__ import annotations

import hashlib
import zlib
from collections import Counter
from pathlib import Path

import pytest

from benchmarks.cc_like_crawl import generate_crawl, load_truth, score
from infra.config import ExtractConfig
from spark_jobs.warc_pairs import extract_pairs

PAGES = 40
SEED = 0
LEGACY_SHARE = 0.5  # of sites, so that 40 pages hold every kind of legacy declaration


@pytest.fixture(scope="module")
def crawl(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("crawl")
    warc, truth = folder / "crawl.warc.gz", folder / "crawl.truth.json"
    generate_crawl(warc, truth, PAGES, SEED, legacy_share=LEGACY_SHARE)
    return warc, truth


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_same_seed_same_files(tmp_path: Path, crawl: tuple[Path, Path]) -> None:
    again = (tmp_path / crawl[0].name, tmp_path / crawl[1].name)  # the name is in the warcinfo record
    generate_crawl(*again, PAGES, SEED, legacy_share=LEGACY_SHARE)
    assert _digest(again[0]) == _digest(crawl[0])
    assert _digest(again[1]) == _digest(crawl[1])
    generate_crawl(*again, PAGES, SEED + 1, legacy_share=LEGACY_SHARE)
    assert _digest(again[0]) != _digest(crawl[0])


def test_crawl_is_record_gzipped_and_cc_shaped(crawl: tuple[Path, Path]) -> None:
    raw, members = crawl[0].read_bytes(), []
    while raw:  # one gzip member after the other
        inflater = zlib.decompressobj(31)
        members.append(inflater.decompress(raw))
        raw = inflater.unused_data
    assert all(m.startswith(b"WARC/1.") and m.count(b"\r\nWARC-Type: ") == 1 for m in members)  # a record each
    kinds = Counter(m.split(b"\r\nWARC-Type: ", 1)[1].split(b"\r\n", 1)[0] for m in members)
    assert kinds[b"request"] == kinds[b"response"] == kinds[b"metadata"] > PAGES
    assert kinds[b"warcinfo"] == 1
    text = b"".join(members)
    assert b"HTTP/1.1 404 Not Found" in text and b"HTTP/1.1 30" in text and b"Content-Type: image/" in text


def test_truth_covers_the_cases(crawl: tuple[Path, Path]) -> None:
    pages = load_truth(crawl[1])
    assert len(pages) == PAGES
    assert all(url.startswith(("http://", "https://")) and "#" not in url for p in pages for url, _, _ in p.pairs)
    assert all(caption == " ".join(caption.split()) and caption for p in pages for _, caption, _ in p.pairs)
    assert sum(lazy for p in pages for _, _, lazy in p.pairs) > 50
    legacy = [p for p in pages if p.legacy]
    assert len({p.codec for p in legacy}) >= 4
    assert {p.declared for p in legacy} >= {"header", "meta-late", "none"}
    assert {p.declared for p in pages if not p.legacy} >= {"header+meta", "meta", "meta-late"}
    assert sum(len(p.pairs) for p in pages) / PAGES > 15


def _pairlake_report(crawl: tuple[Path, Path]) -> dict:
    config = ExtractConfig()
    result = extract_pairs(str(crawl[0]), crawl[0].name, "test", config)
    pairs = zip(*(result.pairs.column(name).to_pylist() for name in ("url", "caption", "page_url")))
    return score(pairs, load_truth(crawl[1]), config.min_caption_chars, config.max_caption_chars, examples=10)


def test_pairlake_finds_the_truth(crawl: tuple[Path, Path]) -> None:
    report = _pairlake_report(crawl)
    assert report["all"]["truth"] > report["no_lazy"]["truth"]  # lazy images (data-src) included
    for part in ("all", "utf8", "legacy"):
        m = report[part]
        assert m["truth"] > 100, part
        assert m["precision"] >= 0.99 and m["recall"] >= 0.99, (part, m["missed"], m["spurious"])
