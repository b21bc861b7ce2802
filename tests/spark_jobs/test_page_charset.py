"""page_charset: every WHATWG Encoding Standard label, declared in the HTTP header and in a <meta>,
decodes a page written in that encoding; labels outside the standard count as undeclared.

The label lists below are copied from the standard's table (https://encoding.spec.whatwg.org/#names-and-labels)
independently of the module, so a label missing from it or filed under the wrong encoding fails here."""

from __future__ import annotations

import codecs
import time

import pytest

from spark_jobs import page_charset
from spark_jobs.page_charset import UndecodablePage, charset_from_content_type, to_utf8

SPEC_LABELS: dict[str, str] = {
    "UTF-8": "unicode-1-1-utf-8 unicode11utf8 unicode20utf8 utf-8 utf8 x-unicode20utf8",
    "IBM866": "866 cp866 csibm866 ibm866",
    "ISO-8859-2": "csisolatin2 iso-8859-2 iso-ir-101 iso8859-2 iso88592 iso_8859-2 iso_8859-2:1987 l2 latin2",
    "ISO-8859-3": "csisolatin3 iso-8859-3 iso-ir-109 iso8859-3 iso88593 iso_8859-3 iso_8859-3:1988 l3 latin3",
    "ISO-8859-4": "csisolatin4 iso-8859-4 iso-ir-110 iso8859-4 iso88594 iso_8859-4 iso_8859-4:1988 l4 latin4",
    "ISO-8859-5": "csisolatincyrillic cyrillic iso-8859-5 iso-ir-144 iso8859-5 iso88595 iso_8859-5 iso_8859-5:1988",
    "ISO-8859-6": "arabic asmo-708 csiso88596e csiso88596i csisolatinarabic ecma-114 iso-8859-6 iso-8859-6-e "
                  "iso-8859-6-i iso-ir-127 iso8859-6 iso88596 iso_8859-6 iso_8859-6:1987",
    "ISO-8859-7": "csisolatingreek ecma-118 elot_928 greek greek8 iso-8859-7 iso-ir-126 iso8859-7 iso88597 "
                  "iso_8859-7 iso_8859-7:1987 sun_eu_greek",
    "ISO-8859-8": "csiso88598e csisolatinhebrew hebrew iso-8859-8 iso-8859-8-e iso-ir-138 iso8859-8 iso88598 "
                  "iso_8859-8 iso_8859-8:1988 visual",
    "ISO-8859-8-I": "csiso88598i iso-8859-8-i logical",
    "ISO-8859-10": "csisolatin6 iso-8859-10 iso-ir-157 iso8859-10 iso885910 l6 latin6",
    "ISO-8859-13": "iso-8859-13 iso8859-13 iso885913",
    "ISO-8859-14": "iso-8859-14 iso8859-14 iso885914",
    "ISO-8859-15": "csisolatin9 iso-8859-15 iso8859-15 iso885915 iso_8859-15 l9",
    "ISO-8859-16": "iso-8859-16",
    "KOI8-R": "cskoi8r koi koi8 koi8-r koi8_r",
    "KOI8-U": "koi8-ru koi8-u",
    "macintosh": "csmacintosh mac macintosh x-mac-roman",
    "windows-874": "dos-874 iso-8859-11 iso8859-11 iso885911 tis-620 windows-874",
    "windows-1250": "cp1250 windows-1250 x-cp1250",
    "windows-1251": "cp1251 windows-1251 x-cp1251",
    "windows-1252": "ansi_x3.4-1968 ascii cp1252 cp819 csisolatin1 ibm819 iso-8859-1 iso-ir-100 iso8859-1 iso88591 "
                    "iso_8859-1 iso_8859-1:1987 l1 latin1 us-ascii windows-1252 x-cp1252",
    "windows-1253": "cp1253 windows-1253 x-cp1253",
    "windows-1254": "cp1254 csisolatin5 iso-8859-9 iso-ir-148 iso8859-9 iso88599 iso_8859-9 iso_8859-9:1989 l5 latin5 "
                    "windows-1254 x-cp1254",
    "windows-1255": "cp1255 windows-1255 x-cp1255",
    "windows-1256": "cp1256 windows-1256 x-cp1256",
    "windows-1257": "cp1257 windows-1257 x-cp1257",
    "windows-1258": "cp1258 windows-1258 x-cp1258",
    "x-mac-cyrillic": "x-mac-cyrillic x-mac-ukrainian",
    "GBK": "chinese csgb2312 csiso58gb231280 gb2312 gb_2312 gb_2312-80 gbk iso-ir-58 x-gbk",
    "gb18030": "gb18030",
    "Big5": "big5 big5-hkscs cn-big5 csbig5 x-x-big5",
    "EUC-JP": "cseucpkdfmtjapanese euc-jp x-euc-jp",
    "ISO-2022-JP": "csiso2022jp iso-2022-jp",
    "Shift_JIS": "csshiftjis ms932 ms_kanji shift-jis shift_jis sjis windows-31j x-sjis",
    "EUC-KR": "cseuckr csksc56011987 euc-kr iso-ir-149 korean ks_c_5601-1987 ks_c_5601-1989 ksc5601 ksc_5601 "
              "windows-949",
    "replacement": "csiso2022kr hz-gb-2312 iso-2022-cn iso-2022-cn-ext iso-2022-kr replacement",
    "UTF-16BE": "unicodefffe utf-16be",
    "UTF-16LE": "csunicode iso-10646-ucs-2 ucs-2 unicode unicodefeff utf-16 utf-16le",
    "x-user-defined": "x-user-defined",
}

# Per encoding: the Python codec that writes the test page, and text that reads wrongly in its near
# neighbours (Latin-1 vs windows-1252 quotes, Shift_JIS vs cp932 extensions, EUC-KR vs UHC syllables...).
SAMPLES: dict[str, tuple[str, str]] = {
    "UTF-8": ("utf-8", "Zürich “quotes” 東京 😀"),
    "IBM866": ("cp866", "Привет, мир ░▒▓"),
    "ISO-8859-2": ("iso8859_2", "Łódź, Kraków, żółć, Děčín"),
    "ISO-8859-3": ("iso8859_3", "Ħamrun, ġgant, ċirku, Ĝis"),
    "ISO-8859-4": ("iso8859_4", "Ķekava, ļaudis, ŗ, ĸ, Ūdens"),
    "ISO-8859-5": ("iso8859_5", "Привет, мир №"),
    "ISO-8859-6": ("iso8859_6", "مرحبا بالعالم؟"),
    "ISO-8859-7": ("iso8859_7", "Καλημέρα κόσμε €"),
    "ISO-8859-8": ("iso8859_8", "שלום עולם"),
    "ISO-8859-8-I": ("iso8859_8", "שלום עולם"),
    "ISO-8859-10": ("iso8859_10", "Þórður, ŋ, ĸ, Ŧ"),
    "ISO-8859-13": ("iso8859_13", "Žąsis „ėė“ ūū"),
    "ISO-8859-14": ("iso8859_14", "Ŵŷ ẁ ḃ ỳ"),
    "ISO-8859-15": ("iso8859_15", "€ œuvre Ÿ Š"),
    "ISO-8859-16": ("iso8859_16", "Știință, țară, €"),
    "KOI8-R": ("koi8_r", "Привет, мир"),
    "KOI8-U": ("koi8_u", "Привіт, їжак, Ґанок, є"),
    "macintosh": ("mac_roman", "Café € ñ ß ∂ π"),
    "windows-874": ("cp874", "สวัสดี “คำพูด” €"),  # tis-620/iso-8859-11 labels: quotes and € only in cp874
    "windows-1250": ("cp1250", "Łódź „cudzysłów” ť"),
    "windows-1251": ("cp1251", "Привет «мир» — €"),
    "windows-1252": ("cp1252", "Straße “quoted” – € œ"),  # 0x93/0x94: controls in Latin-1
    "windows-1253": ("cp1253", "Καλημέρα “κόσμε” Ά"),
    "windows-1254": ("cp1254", "İstanbul ğüşıöç “tırnak” €"),  # latin5/iso-8859-9 labels: quotes only in cp1254
    "windows-1255": ("cp1255", "שלום ₪ “ציטוט”"),
    "windows-1256": ("cp1256", "مرحبا “پ” گ"),
    "windows-1257": ("cp1257", "Ąžuolas „ėė“ €"),
    "windows-1258": ("cp1258", "ương ₫ Đơn “x”"),
    "x-mac-cyrillic": ("mac_cyrillic", "Привіт Ґ ґ €"),
    "GBK": ("gb18030", "你好，世界 😀"),  # the emoji needs gb18030's four-byte form, which GBK lacks
    "gb18030": ("gb18030", "你好，世界 😀"),
    "Big5": ("big5hkscs", "你好，世界 佢嘅"),  # 嘅 is HKSCS only
    "EUC-JP": ("euc_jp", "東京の桜 ｱｲｳ"),
    "ISO-2022-JP": ("iso2022_jp_ext", "東京の桜 ｱｲｳ"),  # 7-bit: also valid UTF-8, so must not be left as is
    "Shift_JIS": ("cp932", "東京 ①Ⅱ㈱ ｱ"),  # ① Ⅱ ㈱: Windows-31J extensions
    "EUC-KR": ("cp949", "안녕하세요 똠방각하"),  # 똠 is UHC only
}
SPECIAL = ("replacement", "UTF-16BE", "UTF-16LE", "x-user-defined")


def labels_of(*encodings: str) -> list[str]:
    return [label for encoding in encodings for label in SPEC_LABELS[encoding].split()]


def page(text: str, label: str | None = None, where: str = "meta") -> str:
    if label is None:
        head = ""
    elif where == "meta":
        head = f'<meta charset="{label}">'
    else:
        head = f'<meta http-equiv="Content-Type" content="text/html; charset={label}">'
    return f"<!doctype html><html><head>{head}<title>t</title></head><body><p>{text}</p></body></html>"


def declare(label: str, where: str, text: str) -> tuple[str, str | None]:
    """The page's HTML and the charset a caller hands to_utf8, with ``label`` declared ``where``."""
    if where == "header":
        return page(text), charset_from_content_type(f"text/html; charset={label}")
    return page(text, label, where), None


@pytest.fixture
def no_sniff(monkeypatch):
    """A declared charset must be used as is: the detector is slow and can guess wrong."""

    def sniff(body: bytes) -> str:
        raise AssertionError("sniffed a page with a declared charset")

    monkeypatch.setattr(page_charset, "_sniff", sniff)


@pytest.fixture
def sniffed(monkeypatch) -> list[bytes]:
    """The pages handed to the real detector."""
    calls: list[bytes] = []
    real = page_charset._sniff

    def sniff(body: bytes) -> str:
        calls.append(body)
        return real(body)

    monkeypatch.setattr(page_charset, "_sniff", sniff)
    return calls


# --- the table ---------------------------------------------------------------------------------------------


def test_spec_copy_is_complete():
    # Guards the copy above: the standard has 228 labels in 40 encodings, each label once.
    labels = labels_of(*SPEC_LABELS)
    assert (len(labels), len(set(labels)), len(SPEC_LABELS)) == (228, 228, 40)
    assert set(SAMPLES) | set(SPECIAL) == set(SPEC_LABELS)


def test_module_table_is_the_standards():
    table = {label: encoding for encoding in SPEC_LABELS for label in labels_of(encoding)}
    assert page_charset._ENCODING_OF_LABEL == table
    assert sum(len(labels) for _, labels in page_charset._WHATWG_ENCODINGS.values()) == 228  # none listed twice


@pytest.mark.parametrize("encoding", sorted(page_charset._CODEC_OF_ENCODING))
def test_every_codec_is_a_python_text_codec(encoding):
    info = codecs.lookup(page_charset._CODEC_OF_ENCODING[encoding])
    assert info._is_text_encoding
    if not encoding.startswith("UTF-16"):  # the others must read a <meta> as ASCII
        assert b"<meta charset=x>".decode(info.name) == "<meta charset=x>"


@pytest.mark.parametrize("label", labels_of(*SPEC_LABELS))
def test_every_label_survives_the_header_and_meta_patterns(label):
    assert charset_from_content_type(f"text/html; charset={label}") == label
    assert charset_from_content_type(f'text/html; charset="{label.upper()}"') == label.upper()
    assert page_charset._META_CHARSET.search(page("x", label).encode()).group(1).decode() == label


# --- declared labels ---------------------------------------------------------------------------------------

WHERE = ("header", "meta", "http-equiv")


@pytest.mark.parametrize("where", WHERE)
@pytest.mark.parametrize(
    ("encoding", "label"), [(encoding, label) for encoding in SAMPLES for label in labels_of(encoding)]
)
def test_declared_label_decodes_its_encoding(no_sniff, encoding, label, where):
    codec, text = SAMPLES[encoding]
    html, declared = declare(label, where, text)
    assert to_utf8(html.encode(codec), declared).decode() == html


@pytest.mark.parametrize("where", WHERE)
@pytest.mark.parametrize("label", labels_of("windows-1252"))
def test_latin1_and_ascii_labels_read_curly_quotes(no_sniff, label, where):
    html, declared = declare(label, where, "\x93Hi\x94 \x80 \x85")
    body = html.encode("latin-1")  # the \x93 etc. placeholders become the raw bytes
    assert to_utf8(body, declared).decode() == html.replace("\x93", "“").replace("\x94", "”").replace(
        "\x80", "€").replace("\x85", "…")


def test_iso_8859_1_page_is_not_sniffed(no_sniff):
    # The reported bug: codecs.lookup("ISO-8859-1").name was not a "supported" name, so the page was sniffed.
    assert to_utf8(b"<p>\x93caf\xe9\x94</p>", "ISO-8859-1") == "<p>“café”</p>".encode()
    meta = b"<meta charset=iso-8859-1>"
    assert to_utf8(meta + b"<p>\x93caf\xe9\x94</p>", None) == meta + "<p>“café”</p>".encode()


@pytest.mark.parametrize(
    ("label", "want"),
    [
        ("ISO-8859-1", "cp1252"),
        ("Latin1", "cp1252"),
        ("  us-ascii\t", "cp1252"),
        ("\n\f\rWINDOWS-1251 ", "cp1251"),
        ("Shift_JIS", "cp932"),
        ("SHIFT-JIS", "cp932"),
        ("Ks_C_5601-1987", "cp949"),
        ("X-Mac-Cyrillic", "mac_cyrillic"),
    ],
)
def test_label_case_and_ascii_whitespace_are_ignored(no_sniff, label, want):
    text = {"cp1252": "“a” €", "cp1251": "«Мир»", "cp932": "東京①", "cp949": "똠방", "mac_cyrillic": "Ґанок"}[want]
    body = f"<p>{text}</p>"
    assert to_utf8(body.encode(want), label) == body.encode()
    meta = f"<META CHARSET = '{label}'>{body}"
    assert to_utf8(meta.encode(want), None) == meta.encode()


def test_header_wins_over_meta(no_sniff):
    html = page("Привет", "iso-8859-1")
    assert to_utf8(html.encode("cp1251"), "windows-1251").decode() == html


def test_unknown_header_label_falls_back_to_meta(no_sniff):
    html = page("“Straße”", "latin1")
    assert to_utf8(html.encode("cp1252"), "latin-1").decode() == html  # Python's alias, not a web label


# --- labels outside the standard ---------------------------------------------------------------------------

# Python codecs a page could name: none is a web label, and decoding with them would rewrite or reject the page.
NOT_LABELS = ["base64", "utf-7", "utf7", "idna", "undefined", "rot13", "rot_13", "hex", "zlib", "uu", "punycode",
              "unicode_escape", "raw_unicode_escape", "latin-1", "latin_1", "iso8859_1", "utf-32", "utf_16",
              "cp437", "8859-1", "bogus", "", " ", "\vlatin1", "\u00a0latin1", "\u212aoi8-r"]


@pytest.mark.parametrize("label", NOT_LABELS)
def test_unknown_labels_are_undeclared(no_sniff, label):
    # Valid UTF-8 with text that utf-7, base64 or rot13 would change: undeclared, so kept byte for byte.
    body = "<p>+AGEAYgBj- aGVsbG8= Zürich “q”</p>".encode()
    assert page_charset._encoding(label) is None
    assert to_utf8(body, label) == body
    if label.isprintable():  # the <meta> pattern, like the header one, skips any whitespace before the label
        meta = f"<meta charset='{label}'>".encode() + body
        assert to_utf8(meta, None) == meta


@pytest.mark.parametrize("label", ["base64", "utf-7", "idna", "undefined", ""])
def test_unknown_label_on_a_non_utf8_page_is_sniffed(sniffed, label):
    text = "Déjà vu très élégant garçon café crème brûlée"
    body = page(text).encode("cp1252")
    assert to_utf8(body, label).decode() == page(text)
    assert sniffed == [body]


def test_kelvin_sign_is_not_lowercased_into_a_label():
    # str.lower() maps U+212A KELVIN SIGN to "k"; the standard lowercases ASCII only.
    assert "\u212aoi8-r".lower() == "koi8-r"
    assert page_charset._encoding("\u212aoi8-r") is None


# --- the special encodings ---------------------------------------------------------------------------------


@pytest.mark.parametrize("where", WHERE)
@pytest.mark.parametrize("label", labels_of("UTF-16BE", "UTF-16LE"))
def test_utf16_labels_without_bom_read_as_utf8(no_sniff, label, where):
    html, declared = declare(label, where, "Zürich “q” \xff")  # \xff: invalid UTF-8 is left to the parser
    body = html.encode("utf-8").replace("\xff".encode(), b"\xff")
    assert to_utf8(body, declared) == body


@pytest.mark.parametrize("where", WHERE)
@pytest.mark.parametrize("label", labels_of("replacement"))
def test_replacement_labels_decode_the_page_to_one_replacement_character(no_sniff, label, where):
    html, declared = declare(label, where, "\x1b$)C\x0e<script>alert(1)</script>\x0f")  # ISO-2022-KR shifts
    assert to_utf8(html.encode("ascii"), declared) == "\ufffd".encode()


def test_replacement_label_on_an_empty_body_gives_nothing(no_sniff):
    assert to_utf8(b"", "iso-2022-kr") == b""


def test_x_user_defined_from_the_header_maps_high_bytes_to_private_use(no_sniff):
    body = b"<p>a\x80\x93\xff</p>"
    assert to_utf8(body, "x-user-defined").decode() == "<p>a\uf780\uf793\uf7ff</p>"


@pytest.mark.parametrize("where", ["meta", "http-equiv"])
def test_x_user_defined_from_a_meta_is_windows_1252(no_sniff, where):
    # HTML's prescan turns a <meta> x-user-defined into windows-1252.
    html, declared = declare("x-user-defined", where, "“Straße” €")
    assert to_utf8(html.encode("cp1252"), declared).decode() == html


# --- byte-order marks win over any declaration -------------------------------------------------------------


@pytest.mark.parametrize(
    ("bom", "codec"),
    [(codecs.BOM_UTF8, "utf-8"), (codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be")],
)
@pytest.mark.parametrize("label", ["iso-8859-1", "utf-16", "iso-2022-kr", "x-user-defined", "base64"])
def test_bom_wins_over_declarations(no_sniff, bom, codec, label):
    html = page("Zürich “q” 東京", label)
    assert to_utf8(bom + html.encode(codec), label).decode() == html


def test_undeclared_binary_page_is_undecodable():
    with pytest.raises(UndecodablePage, match="NUL bytes"):
        to_utf8(b"\x00\x01\xfe\xff" * 300, "base64")


def test_a_meta_late_in_the_head_is_honoured_outside_scripts(no_sniff):
    caption = "紅葉と富士山の写真①"
    late = ("<html><head><script>" + "var a=1;" * 700 + "</script><meta charset='Shift_JIS'></head>"
            f"<body><p>{caption}</p></body></html>")
    assert to_utf8(late.encode("cp932"), None).decode() == late
    # A <meta> inside a script is text, and one after the head is not a declaration.
    scripted = ("<html><head><script>" + "var a=1;" * 700 + "document.write('<meta charset=\"koi8-r\">');"
                "</script><meta charset='windows-1251'></head><body><p>Мир</p></body></html>")
    assert to_utf8(scripted.encode("cp1251"), None).decode() == scripted
    in_body = "<html><head>" + "<link>" * 1000 + "</head><body><meta charset='koi8-r'><p>naïve</p></body></html>"
    assert to_utf8(in_body.encode("utf-8"), None).decode() == in_body  # undeclared, valid UTF-8


def test_sniffing_starts_where_the_non_ascii_text_starts(sniffed):
    caption = "Маленькая собака играет в парке, пока светит солнце"
    page = ("<html><head><script>" + "var a=1;" * 9000 + "</script></head><body>"
            f"<p>Большой дом и сад у реки утром</p><img src='/a.jpg' alt='{caption}'></body></html>")
    assert to_utf8(page.encode("cp1251"), None).decode() == page


# One short paragraph per encoding, undeclared: the detector must tell each from windows-1252 (the
# previous detector read Central-European ISO-8859-2 as windows-1252, and some windows-1251 too).
UNDECLARED: dict[str, str] = {
    "cp1251": "Маленькая собака играет в парке, пока светит солнце. Большой дом и сад у реки утром.",
    "koi8_r": "Маленькая собака играет в парке, пока светит солнце. Большой дом и сад у реки утром.",
    "iso8859_2": "Příliš žluťoučký kůň úpěl ďábelské ódy. Malý přístav, velký most a červené listí v zimě.",
    "iso8859_7": "Καλημέρα κόσμε. Το σπίτι είναι μεγάλο και ο κήπος έχει πολλά δέντρα και λουλούδια.",
    "cp1252": "Straße “quoted” – € œuvre. Café crème à Zürich, naïve façade, été à la plage.",
    "cp932": "東京の桜は春に咲きます。富士山の写真と紅葉の季節、駅前の小さな喫茶店①でコーヒーを飲みました。",  # ①: cp932 only
    "gb18030": "你好，世界。北京的秋天很美，我们在公园里散步，看到了很多红叶和湖水。",
    "cp949": "안녕하세요. 서울의 가을은 아름답습니다. 공원에서 산책하며 단풍과 호수를 보았습니다.",
}


@pytest.mark.parametrize("codec", UNDECLARED)
def test_an_undeclared_legacy_page_is_sniffed_right(sniffed, codec):
    text = UNDECLARED[codec]
    html = page(f"{text}</p><img src='/a.jpg' alt='{text[:40]}'><p>")
    assert to_utf8(html.encode(codec), None).decode() == html
    assert len(sniffed) == 1


@pytest.mark.parametrize(("answer", "confidence", "encoding"), [
    ("ISO-8859-1", 0.7, "windows-1252"),  # read as the standard reads the label
    ("ASCII", 0.9, "windows-1252"),
    ("WINDOWS-1251", 0.84, "windows-1251"),
    ("KOI8-R", 0.84, "KOI8-R"),
    ("SHIFT_JIS", 1.0, "Shift_JIS"),  # decoded as its Windows superset (cp932)
    ("UHC", 0.7, "EUC-KR"),  # the detector's name for the standard's EUC-KR (windows-949)
    ("GB18030", 0.7, "gb18030"),
    ("UTF-8", 0.25, "UTF-8"),  # a multi-byte answer stands at any confidence
    ("WINDOWS-1251", 0.38, "windows-1252"),  # a weak single-byte guess: the web's legacy default
    ("IBM852", 0.77, "windows-1252"),  # DOS code pages, VISCII...: no browser decodes a page in them
    ("VISCII", 0.9, "windows-1252"),
    ("ISO-2022-KR", 0.9, "windows-1252"),  # the standard's "replacement" labels are not an answer
    (None, None, "windows-1252"),
])
def test_the_detectors_answer_reads_through_the_label_table(answer, confidence, encoding):
    assert page_charset.detected_encoding(answer, confidence) == encoding


def test_a_sniffed_latin1_reads_as_windows_1252():
    text = "<p>" + "Zürich “quoted” – € façade, " * 5 + "</p>"
    assert to_utf8(text.encode("cp1252"), None).decode() == text


def test_utf8_with_a_stray_legacy_byte_stays_utf8(no_sniff):
    page = "<p>" + "Équipe été à Zürich, naïve façade. " * 20 + "</p>"
    body = page.encode("utf-8") + "<p>prix: 5 €</p>".encode("cp1252")  # one pasted cp1252 byte
    assert to_utf8(body, None) == body  # as it is: the parser reads the stray byte as U+FFFD


@pytest.mark.parametrize("hostile", [
    b"<html><head>" + b"<meta" * 200_000 + b"</head>",
    b"<html><head>" + b"<script" * 200_000 + b"</head>",
    b"<html><head>" + b"<meta charset=x" * 100_000 + b"</head>",
    b"<html><head>" + b"<script></script" * 100_000 + b"<meta charset=koi8-r></head>",
], ids=["metas", "unclosed-scripts", "unknown-labels", "many-scripts"])
def test_a_hostile_head_is_read_in_linear_time(hostile):
    started = time.process_time()
    page_charset._meta_encoding(hostile)
    assert time.process_time() - started < 0.5
