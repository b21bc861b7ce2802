"""Decode an HTML page to UTF-8 the way a browser would pick its encoding.

Order: byte-order mark, then the charset declared in the HTTP Content-Type header, then a
``<meta charset>`` / ``http-equiv`` declaration in the head; undeclared pages are taken as UTF-8
when they are valid UTF-8 or nearly (a stray byte in a UTF-8 page), else the encoding is sniffed
from where the page's non-ASCII bytes start. A declared charset is decoded with replacement characters, as
browsers do, so only undeclared pages can be undecodable. Every encoding, declared or sniffed, is
read as the WHATWG Encoding Standard reads its label (Latin-1 as windows-1252, Shift_JIS as its
Windows superset, ...).
"""

from __future__ import annotations

import codecs
import re

import cchardet

# Where a <meta> declaration is looked for first (the HTML standard's prescan reads 1024 bytes;
# real pages often put it after long <script>/<link> runs). Past that, browsers still honour one
# met while parsing the head (they decode the page again): the head is searched, scripts left out,
# up to _HEAD_SCAN_BYTES.
_META_SCAN_BYTES = 4096
_HEAD_SCAN_BYTES = 1 << 20
_HEAD_END = re.compile(rb"<body[\s>/]|</head\s*>", re.IGNORECASE)
_HEAD_METAS = 256  # <meta> tags read in the head (a browser meets one declaration, not thousands)
_META_TAG_BYTES = 1024
# The detector reads _SNIFF_BYTES of the page, from a little before its first non-ASCII byte:
# real heads can hold more than that of ASCII script, which tells it nothing.
_SNIFF_BYTES = 65536
_SNIFF_LEAD_BYTES = 1024
_NON_ASCII = re.compile(rb"[\x80-\xff]")
# An undeclared page with at least this many valid multi-byte UTF-8 characters per invalid byte is
# UTF-8 with a stray byte (a pasted legacy character), not a legacy page that happens to hold valid
# sequences (those are rare in any legacy text).
_UTF8_VALID_PER_INVALID = 8
_UTF8_INVALID = re.compile(r"\ufffd")
_UTF8_MULTIBYTE = re.compile(r"[^\x00-\x7f\ufffd]")
_META_CHARSET = re.compile(rb"""<meta[^>]*?charset\s*=\s*["']?\s*([a-z0-9_.:-]+)""", re.IGNORECASE)
_CHARSET_PARAM = re.compile(r"""charset\s*=\s*["']?\s*([a-z0-9_.:-]+)""", re.IGNORECASE)
_BOMS = ((codecs.BOM_UTF8, "utf-8"), (codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be"))
# The WHATWG Encoding Standard's table of labels (https://encoding.spec.whatwg.org/#names-and-labels):
# each encoding, the Python codec that decodes it, and every label that names it, as browsers read
# them. A label not listed is unknown, as in a browser, which also keeps out the non-text codecs
# Python registers (base64, idna, undefined, utf-7...) that a hostile or broken page could name.
# Where Python's codec differs from the standard's index (checked against the standard's index files):
# windows-874/125x bytes the standard maps to C1 controls give U+FFFD, as does windows-1255 0xCA;
# KOI8-U 0xAE/0xBE give box drawing (RFC 2319) for ў/Ў; Big5 lacks the euro sign (0xA3E1) and a few
# HKSCS points; EUC-JP lacks the NEC/IBM extensions (e.g. ①) and maps 6 symbols JIS-style (〜 for ～).
_WHATWG_ENCODINGS: dict[str, tuple[str | None, tuple[str, ...]]] = {
    "UTF-8": ("utf_8", ("unicode-1-1-utf-8", "unicode11utf8", "unicode20utf8", "utf-8", "utf8", "x-unicode20utf8")),
    "IBM866": ("cp866", ("866", "cp866", "csibm866", "ibm866")),
    "ISO-8859-2": ("iso8859_2", ("csisolatin2", "iso-8859-2", "iso-ir-101", "iso8859-2", "iso88592", "iso_8859-2",
                                 "iso_8859-2:1987", "l2", "latin2")),
    "ISO-8859-3": ("iso8859_3", ("csisolatin3", "iso-8859-3", "iso-ir-109", "iso8859-3", "iso88593", "iso_8859-3",
                                 "iso_8859-3:1988", "l3", "latin3")),
    "ISO-8859-4": ("iso8859_4", ("csisolatin4", "iso-8859-4", "iso-ir-110", "iso8859-4", "iso88594", "iso_8859-4",
                                 "iso_8859-4:1988", "l4", "latin4")),
    "ISO-8859-5": ("iso8859_5", ("csisolatincyrillic", "cyrillic", "iso-8859-5", "iso-ir-144", "iso8859-5", "iso88595",
                                 "iso_8859-5", "iso_8859-5:1988")),
    "ISO-8859-6": ("iso8859_6", ("arabic", "asmo-708", "csiso88596e", "csiso88596i", "csisolatinarabic", "ecma-114",
                                 "iso-8859-6", "iso-8859-6-e", "iso-8859-6-i", "iso-ir-127", "iso8859-6", "iso88596",
                                 "iso_8859-6", "iso_8859-6:1987")),
    "ISO-8859-7": ("iso8859_7", ("csisolatingreek", "ecma-118", "elot_928", "greek", "greek8", "iso-8859-7",
                                 "iso-ir-126", "iso8859-7", "iso88597", "iso_8859-7", "iso_8859-7:1987",
                                 "sun_eu_greek")),
    "ISO-8859-8": ("iso8859_8", ("csiso88598e", "csisolatinhebrew", "hebrew", "iso-8859-8", "iso-8859-8-e",
                                 "iso-ir-138", "iso8859-8", "iso88598", "iso_8859-8", "iso_8859-8:1988", "visual")),
    # Logical-order Hebrew: the same bytes as ISO-8859-8; the order only matters for rendering.
    "ISO-8859-8-I": ("iso8859_8", ("csiso88598i", "iso-8859-8-i", "logical")),
    "ISO-8859-10": ("iso8859_10", ("csisolatin6", "iso-8859-10", "iso-ir-157", "iso8859-10", "iso885910", "l6",
                                   "latin6")),
    "ISO-8859-13": ("iso8859_13", ("iso-8859-13", "iso8859-13", "iso885913")),
    "ISO-8859-14": ("iso8859_14", ("iso-8859-14", "iso8859-14", "iso885914")),
    "ISO-8859-15": ("iso8859_15", ("csisolatin9", "iso-8859-15", "iso8859-15", "iso885915", "iso_8859-15", "l9")),
    "ISO-8859-16": ("iso8859_16", ("iso-8859-16",)),
    "KOI8-R": ("koi8_r", ("cskoi8r", "koi", "koi8", "koi8-r", "koi8_r")),
    "KOI8-U": ("koi8_u", ("koi8-ru", "koi8-u")),
    "macintosh": ("mac_roman", ("csmacintosh", "mac", "macintosh", "x-mac-roman")),
    "windows-874": ("cp874", ("dos-874", "iso-8859-11", "iso8859-11", "iso885911", "tis-620", "windows-874")),
    "windows-1250": ("cp1250", ("cp1250", "windows-1250", "x-cp1250")),
    "windows-1251": ("cp1251", ("cp1251", "windows-1251", "x-cp1251")),
    # Browsers read Latin-1 and ASCII labels as windows-1252 (0x80-0x9F are “ ” € … there, not controls).
    "windows-1252": ("cp1252", ("ansi_x3.4-1968", "ascii", "cp1252", "cp819", "csisolatin1", "ibm819", "iso-8859-1",
                                "iso-ir-100", "iso8859-1", "iso88591", "iso_8859-1", "iso_8859-1:1987", "l1", "latin1",
                                "us-ascii", "windows-1252", "x-cp1252")),
    "windows-1253": ("cp1253", ("cp1253", "windows-1253", "x-cp1253")),
    "windows-1254": ("cp1254", ("cp1254", "csisolatin5", "iso-8859-9", "iso-ir-148", "iso8859-9", "iso88599",
                                "iso_8859-9", "iso_8859-9:1989", "l5", "latin5", "windows-1254", "x-cp1254")),
    "windows-1255": ("cp1255", ("cp1255", "windows-1255", "x-cp1255")),
    "windows-1256": ("cp1256", ("cp1256", "windows-1256", "x-cp1256")),
    "windows-1257": ("cp1257", ("cp1257", "windows-1257", "x-cp1257")),
    "windows-1258": ("cp1258", ("cp1258", "windows-1258", "x-cp1258")),
    "x-mac-cyrillic": ("mac_cyrillic", ("x-mac-cyrillic", "x-mac-ukrainian")),
    "GBK": ("gb18030", ("chinese", "csgb2312", "csiso58gb231280", "gb2312", "gb_2312", "gb_2312-80", "gbk", "iso-ir-58",
                        "x-gbk")),
    "gb18030": ("gb18030", ("gb18030",)),
    "Big5": ("big5hkscs", ("big5", "big5-hkscs", "cn-big5", "csbig5", "x-x-big5")),
    "EUC-JP": ("euc_jp", ("cseucpkdfmtjapanese", "euc-jp", "x-euc-jp")),
    # _ext: the standard's decoder also takes half-width katakana (ESC ( I), which plain iso2022_jp rejects.
    "ISO-2022-JP": ("iso2022_jp_ext", ("csiso2022jp", "iso-2022-jp")),
    "Shift_JIS": ("cp932", ("csshiftjis", "ms932", "ms_kanji", "shift-jis", "shift_jis", "sjis", "windows-31j",
                            "x-sjis")),
    "EUC-KR": ("cp949", ("cseuckr", "csksc56011987", "euc-kr", "iso-ir-149", "korean", "ks_c_5601-1987",
                         "ks_c_5601-1989", "ksc5601", "ksc_5601", "windows-949")),
    # Stateful encodings whose ASCII bytes can be other text (a cross-site scripting risk): the standard
    # decodes such a page to a single U+FFFD.
    "replacement": (None, ("csiso2022kr", "hz-gb-2312", "iso-2022-cn", "iso-2022-cn-ext", "iso-2022-kr",
                           "replacement")),
    # Never used as such: a declaration is read only without a BOM, see _encoding.
    "UTF-16BE": ("utf_16_be", ("unicodefffe", "utf-16be")),
    "UTF-16LE": ("utf_16_le", ("csunicode", "iso-10646-ucs-2", "ucs-2", "unicode", "unicodefeff", "utf-16",
                               "utf-16le")),
    "x-user-defined": (None, ("x-user-defined",)),  # see _X_USER_DEFINED
}
_ENCODING_OF_LABEL = {label: encoding for encoding, (_, labels) in _WHATWG_ENCODINGS.items() for label in labels}
_CODEC_OF_ENCODING = {encoding: codec for encoding, (codec, _) in _WHATWG_ENCODINGS.items() if codec}
_ASCII_WHITESPACE = "\t\n\f\r "
# x-user-defined keeps ASCII and puts 0x80-0xFF in the private use area at U+F780-U+F7FF.
_X_USER_DEFINED = "".join(map(chr, range(0x80))) + "".join(map(chr, range(0xF780, 0xF800)))
# The detector (uchardet) names encodings its own way; this is the one the standard's table lacks.
_DETECTOR_NAMES = {"uhc": "EUC-KR"}
# A single-byte guess below this confidence reads as windows-1252, the web's legacy default: on
# short or mostly English pages the detector's runner-up code pages score 0.25-0.55, real
# Cyrillic, Central-European or Greek text 0.75 and up.
_MIN_SINGLE_BYTE_CONFIDENCE = 0.6
_MULTI_BYTE = frozenset({"UTF-8", "GBK", "gb18030", "Big5", "EUC-JP", "ISO-2022-JP", "Shift_JIS", "EUC-KR"})


class UndecodablePage(ValueError):
    """An undeclared page that is not text (NUL bytes)."""


def charset_from_content_type(content_type: str) -> str | None:
    match = _CHARSET_PARAM.search(content_type)
    return match.group(1) if match else None


def to_utf8(body: bytes, declared: str | None) -> bytes:
    """``body`` re-encoded as UTF-8 (as-is when it already is); ``declared``: the HTTP charset."""
    for bom, encoding in _BOMS:
        if body.startswith(bom):
            text = body[len(bom) :]
            return text if encoding == "utf-8" else text.decode(encoding, "replace").encode()
    encoding = _encoding(declared) or _meta_encoding(body)
    if encoding == "UTF-8":
        return body  # invalid sequences become U+FFFD in the parser, as in a browser
    if encoding:
        return _decode(body, encoding)
    try:
        body.decode("utf-8")
        return body
    except UnicodeDecodeError:
        pass
    if _mostly_utf8(body):
        return body  # the parser reads the stray bytes as U+FFFD
    encoding = _sniff(body)
    return body if encoding == "UTF-8" else _decode(body, encoding)


def _mostly_utf8(body: bytes) -> bool:
    text = body.decode("utf-8", "replace")
    invalid = len(_UTF8_INVALID.findall(text))
    return len(_UTF8_MULTIBYTE.findall(text)) >= _UTF8_VALID_PER_INVALID * max(invalid, 1)


def _encoding(label: str | None) -> str | None:
    """The WHATWG encoding a charset label names, or None when the label is unknown."""
    # The standard lowercases ASCII only: str.lower() would also turn e.g. the Kelvin sign into "k".
    if not label or not label.isascii():
        return None
    encoding = _ENCODING_OF_LABEL.get(label.strip(_ASCII_WHITESPACE).lower())
    if encoding in ("UTF-16BE", "UTF-16LE"):
        # Without a BOM, a declaration readable as ASCII means the page is not UTF-16 (WHATWG).
        return "UTF-8"
    return encoding


def _meta_encoding(body: bytes) -> str | None:
    match = _META_CHARSET.search(body, 0, _META_SCAN_BYTES)
    if match is None and len(body) > _META_SCAN_BYTES:
        match = _head_meta(body)
    encoding = _encoding(match.group(1).decode("ascii")) if match else None
    # HTML's prescan reads x-user-defined in a <meta> as windows-1252; only the header gets the real one.
    return "windows-1252" if encoding == "x-user-defined" else encoding


def _head_meta(body: bytes) -> re.Match | None:
    """The first ``<meta>`` declaring a charset in the page's head, outside ``<script>`` elements;
    None for a page without a head end. One pass: every search starts where the last one ended."""
    end = _HEAD_END.search(body, 0, _HEAD_SCAN_BYTES)
    if end is None:
        return None
    head = body[: end.start()].lower()
    pos, script = 0, head.find(b"<script")
    for _ in range(_HEAD_METAS):
        meta = head.find(b"<meta", pos)
        if meta < 0:
            return None
        while 0 <= script < meta:  # skip the scripts before it: a <meta> in one is text
            close = head.find(b"</script", script)
            if close < 0:
                return None
            pos = close + len(b"</script")
            script = head.find(b"<script", pos)
        if meta < pos:
            continue  # it was inside a script
        tag_end = head.find(b">", meta, meta + _META_TAG_BYTES)
        match = _META_CHARSET.match(head, meta, tag_end if tag_end >= 0 else meta + _META_TAG_BYTES)
        if match:
            return match
        pos = meta + len(b"<meta")
    return None


def _decode(body: bytes, encoding: str) -> bytes:
    if encoding == "replacement":
        return "\ufffd".encode() if body else b""
    if encoding == "x-user-defined":
        return codecs.charmap_decode(body, "strict", _X_USER_DEFINED)[0].encode()
    return body.decode(_CODEC_OF_ENCODING[encoding], "replace").encode()


def _sniff(body: bytes) -> str:
    """The WHATWG encoding the detector finds for ``body``, read from just before its first non-ASCII
    byte; windows-1252 when it finds none, a weak single-byte one, or one browsers do not decode."""
    if b"\x00" in body[:1024]:  # binary, not text: not worth the detector's time
        raise UndecodablePage("binary content: NUL bytes and no declared charset")
    first = _NON_ASCII.search(body)
    start = max(0, first.start() - _SNIFF_LEAD_BYTES) if first else 0
    return detected_encoding(**cchardet.detect(body[start : start + _SNIFF_BYTES]))


def detected_encoding(encoding: str | None, confidence: float | None) -> str:
    """The WHATWG encoding for the detector's answer, read through the standard's label table."""
    label = (encoding or "").lower()
    found = _DETECTOR_NAMES.get(label) or _encoding(label)
    if found is None or found in ("replacement", "x-user-defined"):
        return "windows-1252"  # IBM852, VISCII, EUC-TW...: code pages no browser decodes a page in
    if found not in _MULTI_BYTE and (confidence or 0.0) < _MIN_SINGLE_BYTE_CONFIDENCE:
        return "windows-1252"
    return found
