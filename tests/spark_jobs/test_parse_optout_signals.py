"""Opt-out signals a page carries itself, read at parse time: <meta name="robots"> and TDMRep's
<meta name="tdm-reservation">. Real .warc.gz files, the real parser."""

from __future__ import annotations

import pytest

from infra.config import ExtractConfig
from spark_jobs.warc_pairs import extract_pairs
from tests.spark_jobs.test_warc_pairs import html, response_member, write_warc

PAGES = {  # <head> markup -> the signal its image carries
    "<meta name='robots' content='noai, noimageai'>": "meta-robots",
    "<meta name='Robots' content='NOIMAGEAI'>": "meta-robots",
    "<meta name='robots' content='noindex,nofollow'>": "meta-robots",
    "<meta name='robots' content='none'>": "meta-robots",
    "<meta name='robots' content='noimageindex'>": "meta-robots",
    "<meta name='robots' content='index, follow, max-image-preview:large'>": None,
    "<meta name='googlebot' content='noai'>": None,  # addressed to another crawler
    "<meta name='tdm-reservation' content='1'>": "tdm-meta",
    "<meta name='tdm-reservation' content=' 1 '><meta name='tdm-policy' content='https://p.example/p.json'>": "tdm-meta",
    "<meta name='tdm-reservation' content='0'>": None,
    "<meta name='robots' content='noai'><meta name='tdm-reservation' content='1'>": "meta-robots",
    "": None,
}


def _extract(tmp_path, config: ExtractConfig = ExtractConfig()):
    members = [
        response_member(f"https://site{i}.example.com/", html(f"<img src='/p.jpg' alt='picture on page {i}'>", head=head))
        for i, head in enumerate(PAGES)
    ]
    path = tmp_path / "signals.warc.gz"
    write_warc(path, members)
    return extract_pairs(str(path), path.name, "CC-TEST", config)


def test_each_page_signal_is_carried_by_its_candidates(tmp_path):
    result = _extract(tmp_path)
    assert result.pairs["optout_signal"].to_pylist() == list(PAGES.values())
    assert (result.counts["optout_meta_robots"], result.counts["optout_tdm_meta"]) == (6, 2)


@pytest.mark.parametrize(
    ("switches", "left"),
    [
        ({"honour_meta_robots": False}, "tdm-meta"),
        ({"honour_tdm_meta": False}, "meta-robots"),
        ({"honour_meta_robots": False, "honour_tdm_meta": False}, None),
    ],
)
def test_each_signal_can_be_switched_off(tmp_path, switches, left):
    signals = _extract(tmp_path, ExtractConfig(**switches)).pairs["optout_signal"].to_pylist()
    assert set(signals) == {None, left}
    # The page that carries both signals keeps the one still honoured.
    assert signals[list(PAGES).index("<meta name='robots' content='noai'><meta name='tdm-reservation' content='1'>")] == left

