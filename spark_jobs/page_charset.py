"""Decode an HTML page to UTF-8 the way a browser would pick its encoding.

Order: byte-order mark, then the charset declared in the HTTP Content-Type header, then a
``<meta charset>`` / ``http-equiv`` declaration near the top; undeclared pages are taken as UTF-8
when they are valid UTF-8, else the encoding is sniffed. A declared charset is decoded with
replacement characters, as browsers do, so only undeclared pages can be undecodable.
"""

from __future__ import annotations

import codecs
import re

from charset_normalizer import from_bytes
from charset_normalizer.constant import IANA_SUPPORTED
from charset_normalizer.utils import is_multi_byte_encoding

# How far into the page to look for a <meta> declaration (the HTML standard says 1024 bytes;
# real pages often put it after long <script>/<link> runs).
_META_SCAN_BYTES = 4096
_SNIFF_BYTES = 65536
_META_CHARSET = re.compile(rb"""<meta[^>]*?charset\s*=\s*["']?\s*([a-z0-9_.:-]+)""", re.IGNORECASE)
_CHARSET_PARAM = re.compile(r"""charset\s*=\s*["']?\s*([a-z0-9_.:-]+)""", re.IGNORECASE)
_BOMS = ((codecs.BOM_UTF8, "utf-8"), (codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be"))
# Web labels Python's codec registry does not know.
_LABEL_ALIASES = {"x-sjis": "cp932", "windows-31j": "cp932", "x-euc-jp": "euc_jp", "x-gbk": "gbk"}
# WHATWG Encoding Standard: codecs that browsers replace with a superset.
_WHATWG_SUPERSETS = {
    "iso8859_1": "cp1252",
    "ascii": "cp1252",
    "iso8859_9": "cp1254",
    "gb2312": "gb18030",
    "gbk": "gb18030",
    "shift_jis": "cp932",
    "euc_kr": "cp949",
    "tis_620": "cp874",
    "iso8859_11": "cp874",
}
# Real text charsets only: Python also registers codecs such as base64, idna or "undefined" that
# a hostile or broken page could name. UTF-7 is not a web encoding (WHATWG).
_TEXT_CODECS = frozenset(IANA_SUPPORTED) - {"utf_7"}
# The tie-break among single-byte guesses (see _sniff): how much more "chaos" than the best guess a
# windows-1252 reading may show. Tuned on short Western, Central-European, Cyrillic and Greek pages;
# the cost is that undeclared Turkish (windows-1254) pages read as windows-1252.
_CP1252_CHAOS_MARGIN = 0.1


class UndecodablePage(ValueError):
    """No encoding declared, not UTF-8, and none could be detected."""


def charset_from_content_type(content_type: str) -> str | None:
    match = _CHARSET_PARAM.search(content_type)
    return match.group(1) if match else None


def to_utf8(body: bytes, declared: str | None) -> bytes:
    """``body`` re-encoded as UTF-8 (as-is when it already is); ``declared``: the HTTP charset."""
    for bom, encoding in _BOMS:
        if body.startswith(bom):
            text = body[len(bom) :]
            return text if encoding == "utf-8" else text.decode(encoding, "replace").encode()
    encoding = _codec(declared) or _meta_charset(body)
    if encoding == "utf_8":
        return body  # invalid sequences become U+FFFD in the parser, as in a browser
    if encoding:
        return body.decode(encoding, "replace").encode()
    try:
        body.decode("utf-8")
        return body
    except UnicodeDecodeError:
        pass
    return body.decode(_sniff(body), "replace").encode()


def _codec(label: str | None) -> str | None:
    """Python codec name for a charset label, or None when the label is unknown."""
    if not label:
        return None
    try:
        name = codecs.lookup(_LABEL_ALIASES.get(label.lower(), label)).name.replace("-", "_")
    except LookupError:
        return None
    if name not in _TEXT_CODECS:
        return None
    if name.startswith(("utf_8", "utf_16", "utf_32")):
        # Without a BOM, a declaration readable as ASCII means the page is not UTF-16 (WHATWG).
        return "utf_8"
    return _WHATWG_SUPERSETS.get(name, name)


def _meta_charset(body: bytes) -> str | None:
    match = _META_CHARSET.search(body, 0, _META_SCAN_BYTES)
    return _codec(match.group(1).decode("ascii")) if match else None


def _sniff(body: bytes) -> str:
    sample = body[:_SNIFF_BYTES]
    if b"\x00" in sample[:1024]:  # binary, not text: not worth the detector's time
        raise UndecodablePage("binary content: NUL bytes and no declared charset")
    matches = list(from_bytes(sample))
    if not matches:
        raise UndecodablePage("no declared charset, not UTF-8, and detection found none")
    best = matches[0]
    # Short Latin texts fit many single-byte code pages about equally well; prefer windows-1252,
    # the web's legacy default, when it is among the near-best fits.
    if not is_multi_byte_encoding(best.encoding):
        for match in matches:
            if match.chaos <= best.chaos + _CP1252_CHAOS_MARGIN and "cp1252" in match.could_be_from_charset:
                return "cp1252"
    return best.encoding
