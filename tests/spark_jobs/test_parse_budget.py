"""The per-page parse budget: pages that would cost Lexbor super-linear time are counted skips, and
the rest of their WARC file is parsed as usual. Real .warc.gz files, the real parser, no mocks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from selectolax.lexbor import LexborHTMLParser

from infra.config import ExtractConfig
from spark_jobs import html_nesting
from spark_jobs.html_nesting import over_parse_budget
from spark_jobs.warc_pairs import extract_pairs
from tests.spark_jobs.test_warc_pairs import html, response_member, write_warc

REPO = Path(__file__).resolve().parents[2]
GOOD = [
    ("https://a.example.com/", "<img src='/a.jpg' alt='the first good page'>"),
    ("https://c.example.com/", "<img src='/c.jpg' alt='the second good page'>"),
]
BOMBS = {
    # 100,000 unclosed <div>: 2.4 KB gzipped, ~30 s in Lexbor's scope checks before the budget.
    "nested-div": "<div>" * 100_000,
    # Formatting elements re-opened after every block (Lexbor issue #340): ~5 s at this size.
    "reopened-formatting": "".join(f"<div><b id={i}>x</div>" for i in range(4000)),
}
# Run in a child process so that a parse that never ends fails the test instead of hanging it. The
# bound is on the child's CPU time: wall time grows with whatever else the machine runs (a loaded
# CI host took 5.2-5.5 s of wall; an idle one spends about 2 s of CPU).
_EXTRACT = """
import json, sys, time
from infra.config import ExtractConfig
from spark_jobs.warc_pairs import extract_pairs
start = time.process_time()
result = extract_pairs(sys.argv[1], "bomb.warc.gz", "CC-TEST", ExtractConfig())
print(json.dumps({"seconds": time.process_time() - start, "captions": result.pairs["caption"].to_pylist(),
                  "rejects": result.rejects.to_pylist(), "counts": result.counts}))
"""


@pytest.mark.parametrize("bomb", sorted(BOMBS))
def test_bomb_page_is_a_counted_skip_between_two_good_pages(tmp_path, bomb):
    bomb_page = html("<img src='/b.jpg' alt='an image on the bomb page'>" + BOMBS[bomb])
    members = [
        response_member(GOOD[0][0], html(GOOD[0][1])),
        response_member("https://b.example.com/", bomb_page),
        response_member(GOOD[1][0], html(GOOD[1][1])),
    ]
    path = tmp_path / "bomb.warc.gz"
    offsets = write_warc(path, members)
    run = subprocess.run([sys.executable, "-c", _EXTRACT, str(path)], cwd=REPO, capture_output=True, text=True,
                         timeout=120, check=True)
    result = json.loads(run.stdout)
    assert result["seconds"] < 5
    assert result["captions"] == ["the first good page", "the second good page"]
    [reject] = result["rejects"]
    assert (reject["record_offset"], reject["page_url"], reject["reason"]) == (
        offsets[1], "https://b.example.com/", "page_too_complex")
    assert reject["detail"] == "elements nested deeper than 1024 (extract.max_nesting_depth)"
    assert result["counts"]["page_too_complex"] == 1 and result["counts"]["html_pages"] == 3


def test_element_budget(tmp_path):
    page = html("<img src='/x.jpg' alt='an image among many spans'>" + "<span>s</span>" * 30_000)
    path = tmp_path / "flat.warc.gz"
    write_warc(path, [response_member("https://flat.example.com/", page)])
    small = extract_pairs(str(path), path.name, "CC-TEST", ExtractConfig(max_page_elements=20_000))
    assert small.pairs.num_rows == 0
    assert small.rejects["detail"].to_pylist() == ["more than 20000 elements (extract.max_page_elements)"]
    assert extract_pairs(str(path), path.name, "CC-TEST", ExtractConfig()).pairs.num_rows == 1


def _sloppy_page(repeats: int) -> bytes:
    """Markup real crawls are full of: implied end tags, misnesting, inline SVG, tags in comments,
    scripts and attributes. None of it nests deeper than a few levels in the parser's tree."""
    block = (
        "<p>para<p>para <b>bold<p>more</b> text"
        "<ul><li>one<li>two<li><a href='#'>three<a href='#'>four</a></ul>"
        "<table><tr><td>a<td><font face=arial><p>cell</font></p><tr><td>b</table>"
        "<select><option>1<option>2<optgroup><option>3</select>"
        "<dl><dt>term<dd>definition<dt>term</dl>"
        "<svg viewBox='0 0 9 9'><path d='M0'/><g><circle r=1 /></g></svg>"
        "<!-- <div><div><div> --><script>var s = '<div><div>';</script>"
        "<span title='<div>'>x</span><div><span>unclosed span</div>"
        "<h2>title<h3>subtitle</h3>"
    )
    return html("<img src='/ok.jpg' alt='an image on a big sloppy page'>" + block * repeats)


def test_sloppy_markup_is_within_a_tight_depth_budget(tmp_path):
    page = _sloppy_page(400)
    assert page.count(b"<") > html_nesting._UNCHECKED_TAGS  # big enough to be read
    assert over_parse_budget(page, 10**9, 24) is None
    path = tmp_path / "sloppy.warc.gz"
    write_warc(path, [response_member("https://sloppy.example.com/", page)])
    result = extract_pairs(str(path), path.name, "CC-TEST", ExtractConfig(max_nesting_depth=24))
    assert result.pairs["caption"].to_pylist() == ["an image on a big sloppy page"]


def _tree_depth(page: bytes) -> int:
    deepest, stack = 0, [(LexborHTMLParser(page).root, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        child = node.child
        while child is not None:
            if child.is_element_node:
                stack.append((child, depth + 1))
            child = child.next
    return deepest


@pytest.mark.parametrize("pattern", [
    "<div>", "<span><div></span>", "<li><section>", "<li><ul></li>", "<p><object><div>", "<td><div>",
    "<table><tr><td><div>", "<svg><g>", "<svg><foreignObject><section/>", "<select><option><div>",
    "<p><b id={i}>x</p>", "<li><i id={i}>x</li>", "<B ID={i}><SPAN><DIV></SPAN>", "<!-- </div> --><div>",
    "<svg><b>x</b><path/><div>", "<math><br><section/>", "<font><p>x</font><div>",
])
def test_the_model_is_never_shallower_than_the_parser(monkeypatch, pattern):
    page = ("<html><body>" + "".join(pattern.replace("{i}", str(i)) for i in range(300))).encode()
    monkeypatch.setattr(html_nesting, "_UNCHECKED_TAGS", 0)
    depth = _tree_depth(page) - 2  # below <html> and <body>, which the model leaves out
    assert depth > 250
    assert over_parse_budget(page, 10**9, depth - 1) is not None
