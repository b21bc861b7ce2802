"""The extractor a user would write instead of pairlake: FastWARC + Resiliparse, straightforwardly.

Run by a peer virtualenv's Python (benchmarks/peers.py): stdlib, fastwarc and resiliparse only, and
the same code for fastwarc/resiliparse 1.1.0 and 2.0.1.

    python warc_baseline.py CRAWL.warc.gz PAIRS.jsonl   # prints {"pages": ..., "pairs": ..., "peak_rss_mb": ...}

Every HTML response with status 200: charset from the HTTP header, else detected (a <meta> first);
the first <base href>; each <img> with a src and a non-empty alt becomes (absolute URL without
fragment, whitespace-collapsed alt, page URL), one JSON array per line. No caption limits, no dedup.
"""

from __future__ import annotations

import json
import sys
from urllib.parse import urljoin

from fastwarc.warc import ArchiveIterator, WarcRecordType
from resiliparse.parse.encoding import detect_encoding

from peak_memory import peak_rss_mb  # beside this script
from resiliparse.parse.html import HTMLTree


def elements(node, tag: str) -> list:
    """The elements under ``node`` named ``tag``, walked once. Resiliparse 2's node list re-walks the
    tree for each index (iterating it is quadratic in the matches); ``values()`` reads it in one go.
    1.x has no ``values()`` and iterates in one pass."""
    found = node.get_elements_by_tag_name(tag)
    return found.values() if hasattr(found, "values") else list(found)


def main(argv: list[str]) -> None:
    warc, out_path = argv[1], argv[2]
    pages = pairs = 0
    with open(warc, "rb") as stream, open(out_path, "w", encoding="utf-8") as out:
        for record in ArchiveIterator(stream, record_types=WarcRecordType.response, parse_http=True):
            if "html" not in (record.http_content_type or "").lower():
                continue
            if record.http_headers is None or record.http_headers.status_code != 200:
                continue
            body = record.reader.read()
            # FastWARC keeps the quotes of charset="..."; an unknown label falls back inside parse_from_bytes.
            charset = (record.http_charset or "").strip("\"' ")
            charset = charset or detect_encoding(body, from_html_meta=True) or "utf-8"
            tree = HTMLTree.parse_from_bytes(body, charset)
            page = record.headers.get("WARC-Target-URI")
            pages += 1
            base = page
            if tree.head is not None:
                for node in elements(tree.head, "base"):
                    href = node.getattr("href")
                    if href:
                        base = urljoin(page, href.strip())
                        break
            if tree.body is None:
                continue
            for img in elements(tree.body, "img"):
                src, alt = img.getattr("src"), img.getattr("alt")
                if not src or alt is None:
                    continue
                caption = " ".join(alt.split())
                if not caption:
                    continue
                url = urljoin(base, src.strip()).partition("#")[0]
                if url.startswith(("http://", "https://")):
                    out.write(json.dumps([url, caption, page], ensure_ascii=False) + "\n")
                    pairs += 1
    print(json.dumps({"pages": pages, "pairs": pairs, "peak_rss_mb": peak_rss_mb()}))


if __name__ == "__main__":
    main(sys.argv)
