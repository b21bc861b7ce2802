"""A seeded Common-Crawl-like WARC file and the (image URL, caption) pairs a correct extractor finds in it.

The .warc.gz is record-gzipped (one gzip member per record, written with warcio) and holds, per
capture, a request, a response and a metadata record as Common Crawl's do. Most responses are HTML
pages shaped like the ones in real crawls: ~75 KB of HTML (about 15-260 KB), mostly boilerplate (inline
scripts and styles, JSON-LD, menus, footers, comments), ~37 ``<img>`` of every kind (relative,
absolute, protocol-relative, under a ``<base href>``, lazy ``data:`` placeholders with
``data-src``/``data-lazy-src``, ``srcset``, tracking pixels, icons, missing/empty/padded/escaped alt).
About 7% of the pages are in legacy encodings (declared in the HTTP header, only in a ``<meta>`` late
in the head, or not at all), the rest UTF-8. Non-HTML responses, error pages and redirects are mixed in.

The ground truth, a JSON file beside the WARC, lists for every HTML page with status 200 the
(absolute URL without fragment, caption, lazy) triples of its ``<img>`` elements with a non-empty
alt (whitespace collapsed, entities decoded once, read in the page's true charset) whose URL resolves
(against ``<base href>`` or the page URL) to http(s). For a lazy image whose ``src`` is a ``data:``
(or empty) placeholder the URL is its ``data-src``/``data-lazy-src`` and the pair is marked lazy.

    files = cached_crawl(pages=3000, seed=0)   # -> CrawlFiles(warc, truth), cached under .cache/
    report = score(pairs, load_truth(files.truth), min_chars=5, max_chars=1000)
"""

from __future__ import annotations

import html
import io
import json
import math
import random
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from html.entities import codepoint2name
from pathlib import Path
from typing import NamedTuple
from urllib.parse import urljoin, urlsplit

from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

ROOT = Path(__file__).resolve().parent.parent
CACHE_DIR = ROOT / ".cache" / "bench_warc_pairs"
GENERATOR_VERSION = 2  # bump when the generated crawl or truth changes: it keys the cache
LEGACY_SHARE = 0.07  # of sites (so about of pages) served in a legacy encoding

# --- text ------------------------------------------------------------------------------------------

_TEXT = {
    "en": "the old house garden river morning photo of a small dog playing in park family dinner with friends "
          "summer holiday beach sunset over mountains city street at night new kitchen design wooden table red "
          "car vintage bicycle coffee cup on desk children reading books autumn leaves forest trail historic "
          "bridge market stall fresh vegetables wedding ceremony bride groom football match stadium crowd "
          "portrait woman smiling man hiking snow winter lake boat harbour fishing village modern office team",
    "fr": "le la les un une des petit grand maison jardin rivière matin photo chien qui joue dans parc dîner en "
          "famille avec amis vacances d'été plage coucher de soleil sur montagnes rue ville nuit nouvelle cuisine "
          "table en bois voiture rouge vélo ancien tasse café bureau enfants lisent livres feuilles d'automne "
          "forêt sentier pont historique marché légumes frais mariage cérémonie mariée stade foule portrait "
          "femme souriante homme randonnée neige hiver lac bateau port village pêcheurs équipe très où déjà noël",
    "de": "der die das ein eine kleine großer Haus Garten Fluss Morgen Foto Hund spielt im Park Familienessen "
          "mit Freunden Sommerurlaub Strand Sonnenuntergang über Bergen Straße bei Nacht neue Küche Holztisch "
          "rotes Auto altes Fahrrad Kaffeetasse Schreibtisch Kinder lesen Bücher Herbstblätter Wald Wanderweg "
          "historische Brücke Markt frisches Gemüse Hochzeit Braut Fußballspiel Stadion Menschenmenge Porträt "
          "lächelnde Frau Mann Wandern Schnee Winter See Boot Hafen Fischerdorf Bürogebäude schön für Mädchen",
    "es": "el la los un una pequeño gran casa jardín río mañana foto perro jugando en el parque cena familiar con "
          "amigos vacaciones de verano playa atardecer sobre montañas calle ciudad noche nueva cocina mesa de "
          "madera coche rojo bicicleta antigua taza de café niños leyendo libros hojas de otoño bosque sendero "
          "puente histórico mercado verduras frescas boda ceremonia novia partido de fútbol estadio multitud "
          "retrato mujer sonriente hombre nieve invierno lago barco puerto pueblo pesquero reunión año señor",
    "it": "il la gli un una piccolo grande casa giardino fiume mattina foto cane che gioca nel parco cena in "
          "famiglia con amici vacanze estive spiaggia tramonto sulle montagne strada della città di notte nuova "
          "cucina tavolo di legno macchina rossa bicicletta d'epoca tazza di caffè bambini leggono libri foglie "
          "autunnali bosco sentiero ponte storico mercato verdure fresche matrimonio sposa partita di calcio "
          "stadio folla ritratto donna sorridente uomo neve inverno lago barca porto villaggio perché più è",
    "pt": "o a os um uma pequeno grande casa jardim rio manhã foto cão brincando no parque jantar em família com "
          "amigos férias de verão praia pôr do sol sobre montanhas rua da cidade à noite nova cozinha mesa de "
          "madeira carro vermelho bicicleta antiga xícara de café crianças lendo livros folhas de outono "
          "floresta trilha ponte histórica mercado legumes frescos casamento noiva jogo de futebol estádio "
          "multidão retrato mulher sorridente homem neve inverno lago barco porto aldeia coração ação",
    "nl": "de het een kleine grote huis tuin rivier ochtend foto hond speelt in het park familiediner met vrienden "
          "zomervakantie strand zonsondergang boven bergen straat in de stad nachts nieuwe keuken houten tafel "
          "rode auto oude fiets kopje koffie bureau kinderen lezen boeken herfstbladeren bos wandelpad "
          "historische brug markt verse groenten bruiloft bruid voetbalwedstrijd stadion menigte portret "
          "lachende vrouw man sneeuw winter meer boot haven vissersdorp kantoorgebouw vergadering één café",
    "pl": "mały duży dom ogród rzeka poranek zdjęcie pies bawi się w parku rodzinny obiad z przyjaciółmi "
          "wakacje letnie plaża zachód słońca nad górami ulica miasta nocą nowa kuchnia drewniany stół "
          "czerwony samochód stary rower filiżanka kawy dzieci czytają książki jesienne liście las szlak "
          "zabytkowy most targ świeże warzywa ślub panna młoda mecz piłki nożnej stadion tłum portret "
          "uśmiechnięta kobieta mężczyzna śnieg zima jezioro łódź port wioska rybacka spotkanie źródło żółw gęś",
    "cs": "malý velký dům zahrada řeka ráno fotografie pes si hraje v parku rodinná večeře s přáteli letní "
          "dovolená pláž západ slunce nad horami ulice města v noci nová kuchyně dřevěný stůl červené auto "
          "staré kolo šálek kávy děti čtou knihy podzimní listí les stezka historický most trh čerstvá "
          "zelenina svatba nevěsta fotbalový zápas stadion dav portrét usměvavá žena muž sníh zima jezero loď "
          "přístav rybářská vesnice moderní budova porada příliš žluťoučký kůň",
    "ru": "маленький большой дом сад река утро фото собака играет в парке семейный ужин с друзьями летний "
          "отпуск пляж закат над горами улица города ночью новая кухня деревянный стол красная машина старый "
          "велосипед чашка кофе дети читают книги осенние листья лес тропа исторический мост рынок свежие "
          "овощи свадьба невеста футбольный матч стадион толпа портрет улыбающаяся женщина мужчина снег зима "
          "озеро лодка порт рыбацкая деревня современное здание встреча ёлка съёмка",
    "ja": "東京 桜 写真 公園 子供 家族 夕食 友達 夏休み 海 夕日 山 街 夜 新しい キッチン 木の テーブル 赤い 車 "
          "自転車 コーヒー 本 秋 紅葉 森 橋 市場 野菜 結婚式 花嫁 サッカー 試合 スタジアム 笑顔 女性 男性 雪 冬 湖 "
          "船 港 漁村 ビル 会議 猫 ラーメン 富士山 温泉 寺 神社 の で と が を に は",
    "zh": "北京 春天 照片 公园 孩子 家庭 晚餐 朋友 暑假 海滩 日落 山 城市 街道 夜晚 新的 厨房 木桌 红色 汽车 "
          "自行车 咖啡 书 秋天 树叶 森林 小路 古桥 市场 蔬菜 婚礼 新娘 足球 比赛 体育场 人群 微笑 女人 男人 雪 "
          "冬天 湖 船 港口 渔村 大楼 会议 熊猫 长城 的 在 和 是 了",
    "ko": "서울 봄 사진 공원 아이들 가족 저녁 친구들 여름 휴가 해변 일몰 산 도시 거리 밤 새로운 부엌 나무 "
          "테이블 빨간 자동차 자전거 커피 책 가을 단풍 숲 길 다리 시장 채소 결혼식 신부 축구 경기 경기장 군중 "
          "웃는 여자 남자 눈 겨울 호수 배 항구 어촌 건물 회의 김치 한강",
    "ar": "صورة حديقة منزل كبير صغير نهر صباح كلب يلعب في الحديقة عشاء عائلي مع الأصدقاء عطلة الصيف شاطئ "
          "غروب الشمس فوق الجبال شارع المدينة ليلا مطبخ جديد طاولة خشبية سيارة حمراء دراجة قديمة فنجان قهوة "
          "أطفال يقرؤون كتب",
    "el": "μικρό μεγάλο σπίτι κήπος ποτάμι πρωί φωτογραφία σκύλος παίζει στο πάρκο οικογενειακό δείπνο με "
          "φίλους καλοκαιρινές διακοπές παραλία ηλιοβασίλεμα πάνω από τα βουνά δρόμος της πόλης τη νύχτα νέα "
          "κουζίνα ξύλινο τραπέζι κόκκινο αυτοκίνητο",
    "tr": "küçük büyük ev bahçe nehir sabah fotoğraf köpek parkta oynuyor aile yemeği arkadaşlarla yaz tatili "
          "plaj gün batımı dağların üzerinde şehir sokağı gece yeni mutfak ahşap masa kırmızı araba eski "
          "bisiklet kahve fincanı çocuklar kitap okuyor sonbahar yaprakları orman",
    "vi": "nhỏ lớn nhà vườn sông buổi sáng ảnh con chó chơi trong công viên bữa tối gia đình với bạn bè kỳ "
          "nghỉ hè bãi biển hoàng hôn trên núi đường phố ban đêm bếp mới bàn gỗ xe đỏ xe đạp cũ tách cà phê "
          "trẻ em đọc sách lá mùa thu rừng",
}
_VOCAB = {lang: tuple(text.split()) for lang, text in _TEXT.items()}
_NO_SPACES = frozenset({"ja", "zh"})  # written without spaces between words
# Languages of UTF-8 sites, weighted roughly as in Common Crawl.
_UTF8_LANGS = {"en": 40, "de": 7, "fr": 6, "es": 6, "ru": 6, "ja": 5, "zh": 5, "it": 3, "pt": 4, "nl": 3,
               "pl": 3, "cs": 1, "ko": 2, "ar": 2, "el": 1, "tr": 2, "vi": 2}


@dataclass(frozen=True)
class _Legacy:
    codec: str  # the Python codec the bytes are really in (what a browser decodes them as)
    labels: tuple[str, ...]  # WHATWG labels a server or page uses for it
    langs: tuple[str, ...]
    weight: float
    # Characters real pages under these labels contain that the label's strict codec lacks (GBK-only
    # hanzi under "gb2312", NEC symbols under "Shift_JIS", UHC hangul under "euc-kr", cp1252's
    # 0x80-0x9F under "ISO-8859-1"): browsers read the labels as the supersets, so must an extractor.
    extras: tuple[str, ...] = ()
    extras_rate: float = 0.0  # share of captions with one of them (one is enough to trip a strict decoder)


_LEGACY = (
    _Legacy("cp1252", ("windows-1252", "ISO-8859-1", "iso-8859-1", "latin1", "Windows-1252"),
            ("en", "fr", "de", "es", "it", "pt", "nl"), 0.36, ("“", "”", "€", "–", "…", "’"), 0.3),
    _Legacy("cp932", ("Shift_JIS", "shift_jis", "x-sjis", "Windows-31J"), ("ja",), 0.12, ("①", "②", "㈱", "Ⅱ"), 0.08),
    _Legacy("gbk", ("gbk", "GB2312", "gb2312"), ("zh",), 0.12, ("朱镕基", "陶喆", "王堃", "昇平"), 0.05),
    _Legacy("cp949", ("euc-kr", "EUC-KR", "ks_c_5601-1987"), ("ko",), 0.08, ("똠방각하", "햏자", "뷁"), 0.01),
    _Legacy("cp1251", ("windows-1251", "cp1251"), ("ru",), 0.14),
    _Legacy("koi8_r", ("koi8-r", "KOI8-R"), ("ru",), 0.06),
    _Legacy("iso8859_2", ("iso-8859-2", "ISO-8859-2", "latin2"), ("pl", "cs"), 0.12),
)
# How a site declares its charset: header (HTTP Content-Type only), header+meta, meta (a <meta> in the
# first few hundred bytes), meta-late (a <meta> after kilobytes of head content), none.
_LEGACY_DECLARED = {"header": 0.35, "header+meta": 0.1, "meta": 0.1, "meta-late": 0.25, "none": 0.2}
_UTF8_DECLARED = {"header+meta": 0.35, "header": 0.15, "meta": 0.3, "meta-late": 0.1, "none": 0.1}

_AMPERSAND_NAMES = ("AT&T", "Q&A", "R&D", "H&M", "B&B", "Tom & Jerry")  # literal '&' that must survive
_GIF_1PX = "data:image/gif;base64,R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7"
_SVG_PLACEHOLDER = ("data:image/svg+xml,%3Csvg%20xmlns='http://www.w3.org/2000/svg'%20viewBox='0%200%20800%20600'"
                    "%3E%3C/svg%3E")
_INLINE_ICON = "data:image/svg+xml;base64,PHN2ZyB4bWxucz0iaHR0cDovL3d3dy53My5vcmcvMjAwMC9zdmciLz4="
_JS_WORDS = ("init", "config", "render", "track", "slider", "menu", "toggle", "cookie", "consent", "lazy", "load",
             "observer", "event", "push", "dataLayer", "widget", "modal", "cart", "user", "session", "fetch", "api",
             "theme", "scroll", "resize", "swiper", "gallery", "analytics", "banner", "popup", "video", "player")
_EVENTS = ("DOMContentLoaded", "load", "scroll", "resize", "click", "keydown")


def _weighted(rng: random.Random, table: dict[str, float]) -> str:
    return rng.choices(list(table), weights=list(table.values()))[0]


def _words(rng: random.Random, lang: str, n: int) -> str:
    return ("" if lang in _NO_SPACES else " ").join(rng.choices(_VOCAB[lang], k=n))


# --- boilerplate -----------------------------------------------------------------------------------

def _js_blob(rng: random.Random, size: int, with_img_strings: bool) -> str:
    """Minified-looking script: real pages carry tens of KB of it inline. Never contains '</script' or
    '<!--' (which would end or change the script's raw-text parsing); may build <img> markup in strings,
    which is not part of the DOM."""
    parts: list[str] = ["!function(w,d){\"use strict\";"]
    n = 0
    while n < size:
        name = f"{rng.choice(_JS_WORDS)}{rng.randrange(100)}"
        kind = rng.random()
        if kind < 0.35:
            s = (f"var {name}=function(e,t){{return e&&e.{rng.choice(_JS_WORDS)}?t.{rng.choice(_JS_WORDS)}"
                 f"(e,{rng.randrange(1000)}):null}};")
        elif kind < 0.6:
            s = f'w.{name}="{rng.choice(_JS_WORDS)}-{rng.getrandbits(32):08x}";'
        elif kind < 0.8:
            nums = ",".join(str(rng.randrange(999)) for _ in range(8))
            s = f"if({name}<{rng.randrange(100)}){{{name}+={rng.randrange(9)}}}else{{{name}=[{nums}]}}"
        else:
            s = f'd.addEventListener("{rng.choice(_EVENTS)}",function(){{w.{name}&&w.{name}()}});'
        parts.append(s)
        n += len(s)
    if with_img_strings:
        parts.append("var tpl='<img src=\"'+u+'\" alt=\"'+t+'\" class=\"js-img\">';"
                     "d.write('<img src=\"/ads/banner-728x90.gif\" alt=\"Advertisement banner\">');")
    parts.append("}(window,document);")
    return "".join(parts)


def _css_blob(rng: random.Random, size: int) -> str:
    parts: list[str] = []
    n = 0
    while n < size:
        cls = f"{rng.choice(_JS_WORDS)}-{rng.getrandbits(20):05x}"
        s = (f".{cls},.{cls}__item--{rng.choice(_JS_WORDS)}{{display:{rng.choice(('flex', 'block', 'grid'))};"
             f"margin:{rng.randrange(40)}px {rng.randrange(40)}px;color:#{rng.getrandbits(24):06x};"
             f"background:url(/static/img/bg-{rng.randrange(500)}.png) no-repeat}}")
        if rng.random() < 0.1:
            s = f"@media (max-width:{rng.choice((480, 768, 1024))}px){{{s}}}"
        parts.append(s)
        n += len(s)
    return "".join(parts)


class _Pools:
    """Inline scripts and styles shared by all pages of a crawl (built once: cheap to reuse, and gzip
    members do not share a window, so reuse across records does not make the file smaller)."""

    def __init__(self, rng: random.Random) -> None:
        def size() -> int:  # log-uniform 300 B .. 40 KB
            return int(math.exp(rng.uniform(math.log(300), math.log(40_000))))

        self.js = [_js_blob(rng, size(), with_img_strings=i % 5 == 0) for i in range(32)]
        self.css = [_css_blob(rng, size()) for _ in range(16)]

    def script(self, rng: random.Random, room: int = 1 << 30) -> str:
        """An inline script, preferably one that fits in ``room`` characters (pages keep their size)."""
        return f"<script>{self._pick(rng, self.js, room)}</script>\n"

    def style(self, rng: random.Random, room: int = 1 << 30) -> str:
        return f"<style>/* {rng.getrandbits(32):08x} */{self._pick(rng, self.css, room)}</style>\n"

    @staticmethod
    def _pick(rng: random.Random, pool: list[str], room: int) -> str:
        choice = rng.choice(pool)
        return choice if len(choice) <= room else min(pool, key=len)


# --- sites -----------------------------------------------------------------------------------------

@dataclass
class _Site:
    host: str
    scheme: str
    name: str
    lang: str
    codec: str  # Python codec of the bytes
    label: str | None  # charset label declared (header and/or meta), None when undeclared
    declared: str  # key of _LEGACY_DECLARED / _UTF8_DECLARED
    legacy: _Legacy | None
    base_href: str | None  # the <base href> value its pages carry, if any
    base_target_first: bool  # a <base target> before the <base href>
    lazy_attr: str | None  # data-src / data-lazy-src when its theme lazy-loads images
    noscript_fallback: bool  # lazy images followed by a <noscript><img src=real></noscript>
    bom: bool
    mixed: bool  # undeclared UTF-8 with one stray non-UTF-8 byte (a pasted legacy footer)
    cdn: str
    img_host: str
    logo_src: str
    logo_alt: str | None
    icons: list[tuple[str, str | None]]
    posts: list[tuple[str, str]]  # (thumbnail src, title) of its "related posts"
    nav: str  # menu markup, the same on every page
    stats_id: int = field(default=0)

    @property
    def origin(self) -> str:
        return f"{self.scheme}://{self.host}"


_TLDS = {"en": ("com", "co.uk", "org", "net", "com.au"), "de": ("de", "at"), "fr": ("fr", "be"), "es": ("es", "com.mx"),
         "it": ("it",), "pt": ("com.br", "pt"), "nl": ("nl",), "pl": ("pl",), "cs": ("cz",), "ru": ("ru", "su"),
         "ja": ("jp", "co.jp"), "zh": ("cn", "com.cn"), "ko": ("kr", "co.kr"), "ar": ("sa", "eg"), "el": ("gr",),
         "tr": ("com.tr",), "vi": ("vn",)}


def _make_site(rng: random.Random, index: int, legacy_share: float) -> _Site:
    legacy: _Legacy | None = None
    if rng.random() < legacy_share:
        legacy = rng.choices(_LEGACY, weights=[entry.weight for entry in _LEGACY])[0]
        lang = rng.choice(legacy.langs)
        codec, label = legacy.codec, rng.choice(legacy.labels)
        declared = _weighted(rng, _LEGACY_DECLARED)
    else:
        lang = _weighted(rng, _UTF8_LANGS)
        codec, label = "utf-8", rng.choice(("UTF-8", "utf-8", "utf-8", "utf8"))
        declared = _weighted(rng, _UTF8_DECLARED)
    if declared == "none":
        label = None
    word = rng.choice(("news", "blog", "shop", "foto", "travel", "recipes", "garden", "auto", "style", "home"))
    domain = f"{word}{index}.{rng.choice(_TLDS[lang])}"
    host = f"www.{domain}" if rng.random() < 0.7 else domain
    scheme = "https" if rng.random() < 0.85 else "http"
    base_href = None
    if rng.random() < 0.12:
        base_href = rng.choice((f"{scheme}://{host}/", "/blog/", f"https://static.{domain}/assets/",
                                f"//{host}/{lang}/", "../"))
    name = _words(rng, lang, 2).title() if lang not in _NO_SPACES else _words(rng, lang, 2)
    logo_alt = rng.choice((name, name, f"{name} logo", "Logo", "", None))
    icons: list[tuple[str, str | None]] = []
    icon_style = rng.random()
    for network in rng.sample(("Facebook", "Twitter", "Instagram", "YouTube", "Pinterest", "LinkedIn"), rng.randint(2, 6)):
        alt = network if icon_style < 0.4 else f"Share on {network}" if icon_style < 0.55 else (
            network[:2].lower() if icon_style < 0.65 else rng.choice(("", None)))
        icons.append((f"/static/icons/{network.lower()}.svg", alt))
    posts = []
    for k in range(30):
        title = _words(rng, lang, rng.randint(3, 9))
        posts.append((f"/wp-content/uploads/thumbs/{index}-{k}-150x150.jpg", title))
    menu = "".join(f'<li class="menu-item"><a href="/{_slug(rng)}/">{_words(rng, lang, rng.randint(1, 3))}</a></li>'
                   for _ in range(rng.randint(8, 60)))
    nav = f'<nav class="main-navigation" aria-label="Main"><ul id="menu-main" class="menu">{menu}</ul></nav>\n'
    return _Site(
        host=host, scheme=scheme, name=name, lang=lang, codec=codec, label=label, declared=declared,
        legacy=legacy, base_href=base_href, base_target_first=rng.random() < 0.3,
        lazy_attr=rng.choice(("data-src", "data-lazy-src")) if rng.random() < 0.3 else None,
        noscript_fallback=rng.random() < 0.4, bom=legacy is None and rng.random() < 0.02,
        mixed=legacy is None and declared == "none" and rng.random() < 0.1,
        cdn=f"cdn.{domain}", img_host=f"img{rng.randrange(4)}.{domain}",
        logo_src=rng.choice(("/static/logo.svg", f"https://cdn.{domain}/brand/logo.png", "images/logo.png")),
        logo_alt=logo_alt, icons=icons, posts=posts, nav=nav, stats_id=rng.randrange(10**8),
    )


def _slug(rng: random.Random) -> str:
    return "-".join(rng.choices(_JS_WORDS, k=rng.randint(1, 3)))


# --- pages -----------------------------------------------------------------------------------------

def _escape_attr(rng: random.Random, value: str, quote: str) -> str:
    """``value`` as attribute markup in ``quote``s: entities the way CMSs write them, sometimes raw."""
    if "&" in value and rng.random() < 0.8:
        value = value.replace("&", "&amp;")  # else left bare: '& ', '&T' are not character references
    value = value.replace(quote, "&quot;" if quote == '"' else "&#39;").replace("<", "&lt;")
    if "\xa0" in value and rng.random() < 0.6:
        value = value.replace("\xa0", "&nbsp;")
    if rng.random() < 0.08 and not value.isascii():
        # Named, decimal or hex references for some non-ASCII characters (decoded once by the parser).
        out = []
        for ch in value:
            if ord(ch) > 127 and ch != "\xa0" and rng.random() < 0.5:
                name = codepoint2name.get(ord(ch))
                roll = rng.random()
                out.append(f"&{name};" if name and roll < 0.4 else f"&#{ord(ch)};" if roll < 0.7 else f"&#x{ord(ch):x};")
            else:
                out.append(ch)
        value = "".join(out)
    return value


def _attr(rng: random.Random, name: str, value: str | None) -> str:
    if value is None:
        return f" {name}"
    if value and rng.random() < 0.1 and all(c.isalnum() or c in "_./:-" for c in value):
        return f" {name}={value}"  # unquoted
    quote = "'" if ('"' in value and "'" not in value) or rng.random() < 0.15 else '"'
    return f" {name}={quote}{_escape_attr(rng, value, quote)}{quote}"


class _Page:
    """Builds one page's markup and, alongside, the truth for every <img> it writes."""

    def __init__(self, rng: random.Random, site: _Site, url: str, n: int, pools: _Pools) -> None:
        self.rng, self.site, self.url, self.n, self.pools = rng, site, url, n, pools
        base = url
        if site.base_href is not None:
            resolved = urljoin(url, site.base_href)
            base = resolved if urlsplit(resolved).scheme in ("http", "https") else url
        self.base = base
        self.truth: list[tuple[str, str, bool]] = []
        self.images = 0

    # The one place that knows what a correct extractor makes of an <img>.
    def _expect(self, src: str | None, alt: str | None, lazy_src: str | None) -> None:
        if alt is None:
            return
        caption = " ".join(alt.split())
        target = lazy_src if lazy_src is not None else src
        if not caption or target is None or not target.strip():
            return
        url = urljoin(self.base, target.strip()).partition("#")[0]
        parts = urlsplit(url)
        if parts.scheme in ("http", "https") and parts.hostname:
            # Schemes are case-insensitive and written lowercase (urljoin keeps "HTTPS:" when the base's
            # scheme differs).
            url = parts.scheme + url[len(parts.scheme):]
            self.truth.append((url, caption, lazy_src is not None))

    def img(self, src: str | None, alt: str | None, extra: Iterable[tuple[str, str | None]] = (),
            lazy_src: str | None = None, *, in_dom: bool = True) -> str:
        """An <img> tag; ``lazy_src`` set: ``src`` is a placeholder and the real URL is in the site's
        lazy attribute. ``in_dom`` False: markup that a parser does not turn into an element."""
        rng = self.rng
        if in_dom:
            self._expect(src, alt, lazy_src)
            self.images += 1
        attrs: list[tuple[str, str | None]] = []
        if src is not None:
            if rng.random() < 0.03:
                src = f" {src}\n"  # stray whitespace around URLs: stripped by URL parsing
            attrs.append(("src", src))
        if lazy_src is not None:
            attrs.append((self.site.lazy_attr or "data-src", lazy_src))
        if alt is not None:
            attrs.insert(rng.randrange(len(attrs) + 1), ("alt", alt))
        attrs.extend(extra)
        upper = rng.random() < 0.02
        markup = "".join(_attr(rng, name.upper() if upper else name, value) for name, value in attrs)
        return f"<{'IMG' if upper else 'img'}{markup}{' /' if rng.random() < 0.3 else ''}>"

    # -- image kinds --

    def caption(self, short_ok: bool = True) -> str:
        rng, site = self.rng, self.site
        lang = site.lang if rng.random() > 0.15 else "en"
        roll = rng.random()
        if roll < 0.12 and short_ok:
            n = rng.randint(1, 2)
        elif roll < 0.85:
            n = rng.randint(3, 12)
        elif roll < 0.99:
            n = rng.randint(13, 40)
        else:
            n = rng.randint(220, 320)  # a pasted product description: over the caption limit
        text = _words(rng, lang, n)
        if lang not in _NO_SPACES:
            text = text[:1].upper() + text[1:]
        if site.legacy and rng.random() < site.legacy.extras_rate:
            extra = rng.choice(site.legacy.extras)
            text = f"“{text}”" if extra in "“”" else f"{text} {extra}" if lang not in _NO_SPACES else f"{text}{extra}"
        elif site.legacy is None and rng.random() < 0.03:
            text = f"{text} 📷"
        if rng.random() < 0.03:
            text = f"{rng.choice(_AMPERSAND_NAMES)} {text}"
        return self.pad(text)

    def pad(self, text: str) -> str:
        """Whitespace as templates leave it around and inside alt text (collapsed by extractors)."""
        rng = self.rng
        roll = rng.random()
        if roll < 0.12:
            return f"  {text} "
        if roll < 0.18:
            return f"\n      {text}\n    "
        if roll < 0.24 and " " in text:
            return text.replace(" ", rng.choice(("\xa0", "  ", "\t", " \n ")), 1)
        if roll < 0.26 and self.site.lang == "ja":
            return text + "\u3000" + _words(rng, "ja", 2)
        return text

    def content_src(self, k: int) -> str:
        rng, site, slug = self.rng, self.site, f"{self.n}-{k}"
        roll = rng.random()
        if roll < 0.30:
            return f"/wp-content/uploads/20{rng.randint(15, 24)}/{rng.randint(1, 12):02d}/img-{slug}.jpg"
        if roll < 0.42:
            return f"images/photo-{slug}.jpg"
        if roll < 0.47:
            return f"../media/pic-{slug}.jpeg"
        if roll < 0.50:
            return f"./gallery/{slug}.png"
        if roll < 0.66:
            return f"https://{site.cdn}/img/{slug}.jpg"
        if roll < 0.70:
            return f"http://{site.host}/photos/{slug}.jpg"
        if roll < 0.80:
            return f"//{site.img_host}/thumbs/{slug}.webp"
        if roll < 0.87:
            return f"https://i0.wp.com/{site.host}/uploads/{slug}.jpg?resize=800%2C600&ssl=1"
        if roll < 0.93:
            return f"/images/{slug}.jpg?w=640&h=480&fit=crop"
        if roll < 0.96:
            return f"/images/{slug}.jpg#zoom"
        if roll < 0.965:
            return f"HTTPS://{site.cdn}/IMG/{slug}.JPG"
        if site.legacy is None and roll < 0.98:
            return f"/bilder/größe-{slug}.jpg"  # non-ASCII path, UTF-8 pages only
        return f"/img/{slug}.gif"

    def content_img(self, k: int) -> str:
        rng, site = self.rng, self.site
        roll = rng.random()
        alt = None if roll < 0.10 else "" if roll < 0.17 else " " if roll < 0.18 else self.caption()
        src = self.content_src(k)
        extra: list[tuple[str, str | None]] = [("width", str(rng.choice((300, 640, 800, 1024)))),
                                               ("height", str(rng.choice((200, 480, 600, 768))))]
        if rng.random() < 0.25:
            stem = src.rsplit(".", 1)[0]
            extra.append(("srcset", f"{stem}-300x200.jpg 300w, {stem}-768x512.jpg 768w, {stem}-1024x683.jpg 1024w"))
            extra.append(("sizes", "(max-width: 800px) 100vw, 800px"))
        classes = f"wp-image-{rng.randrange(10**5)} aligncenter size-large" if rng.random() < 0.3 else ""
        if rng.random() < 0.1:
            extra.append(("title", self.caption(short_ok=False)))  # a title is not a caption
        if site.lazy_attr and rng.random() < 0.75:
            placeholder = rng.choice((_GIF_1PX, _SVG_PLACEHOLDER, ""))
            extra += [("class", f"{classes} lazyload".strip()), ("loading", "lazy")]
            tag = self.img(placeholder, alt, extra, lazy_src=src)
            if site.noscript_fallback:
                # Parsers disagree on whether <noscript> content is markup: not counted as an image.
                tag += f"<noscript>{self.img(src, alt, in_dom=False)}</noscript>"
            return tag
        if classes:
            extra.append(("class", classes))
        if rng.random() < 0.15:
            extra.append(("loading", "lazy"))  # native lazy loading: src is real
        if rng.random() < 0.05:
            extra.append(("data-src", self.content_src(k + 500)))  # src is a real thumbnail: src counts
        tag = self.img(src, alt, extra)
        if rng.random() < 0.1:
            stem = src.rsplit(".", 1)[0]
            tag = f'<picture><source type="image/webp" srcset="{stem}.webp">{tag}</picture>'
        return tag

    def odd_img(self) -> str:
        """Images whose src is not an http(s) URL, or missing: never a pair."""
        rng = self.rng
        alt = self.caption()
        roll = rng.random()
        if roll < 0.4:
            return self.img(_INLINE_ICON, alt, [("class", "icon")])
        if roll < 0.55:
            return self.img("javascript:void(0)", alt)
        if roll < 0.7:
            return self.img("about:blank", alt)
        if roll < 0.8:
            return self.img("", alt)
        if roll < 0.9:
            return self.img(None, alt, [("srcset", f"/img/set-{self.n}.jpg 1x")])
        return self.img(f"ftp://files.{self.site.host}/pub/{self.n}.jpg", alt)

    def logo(self) -> str:
        return f'<a href="/" class="custom-logo-link">{self.img(self.site.logo_src, self.site.logo_alt)}</a>'

    def icons(self) -> str:
        return "".join(f'<a href="#share">{self.img(src, alt, [("width", "24"), ("height", "24")])}</a>'
                       for src, alt in self.site.icons)

    def related(self, count: int) -> str:
        rng = self.rng
        out = ['<aside class="related"><h3>Related</h3><ul>']
        for src, title in rng.sample(self.site.posts, count):
            alt = title if rng.random() < 0.85 else rng.choice(("", None))
            out.append(f'<li><a href="/{_slug(rng)}/">{self.img(src, alt, [("width", "150"), ("height", "150")])}'
                       f"<span>{html.escape(title)}</span></a></li>")
        out.append("</ul></aside>\n")
        return "".join(out)

    def pixels(self) -> str:
        rng, site = self.rng, self.site
        out = [f'<noscript><img height="1" width="1" style="display:none" '
               f'src="https://www.facebook.com/tr?id={site.stats_id}&amp;ev=PageView&amp;noscript=1"/></noscript>']
        if rng.random() < 0.5:  # WordPress stats: alt ":)" (under the caption limit)
            out.append(self.img(f"https://pixel.wp.com/g.gif?v=ext&blog={site.stats_id}&post={self.n}", ":)",
                                [("width", "6"), ("height", "5"), ("id", "wpstats")]))
        if rng.random() < 0.5:
            out.append(self.img(f"//sb.scorecardresearch.com/p?c1=2&c2={site.stats_id}&cv=2.0&cj=1",
                                rng.choice(("", None)), [("width", "1"), ("height", "1")]))
        if rng.random() < 0.3:
            out.append(self.img("/images/spacer.gif", rng.choice(("", " ", None)), [("width", "1"), ("height", "1")]))
        return "".join(out)

    def emoji(self) -> str:
        return self.img("https://s.w.org/images/core/emoji/14.0.0/svg/1f600.svg", "😀",
                        [("class", "emoji"), ("role", "img"), ("draggable", "false")])

    def paragraph(self) -> str:
        rng, lang = self.rng, self.site.lang
        text = html.escape(_words(rng, lang, rng.randint(15, 70)), quote=False)
        if rng.random() < 0.3:
            text += f' <a href="/{_slug(rng)}/">{html.escape(_words(rng, lang, 3), quote=False)}</a>.'
        return f"<p>{text}</p>\n"


def _charset_meta(rng: random.Random, label: str) -> str:
    return rng.choice((f'<meta charset="{label}">', f"<meta charset={label} />",
                       f'<meta http-equiv="Content-Type" content="text/html; charset={label}">',
                       f'<META HTTP-EQUIV="content-type" CONTENT="text/html;charset={label}">'))


def _content_type(rng: random.Random, site: _Site) -> str:
    mime = "application/xhtml+xml" if rng.random() < 0.02 else "text/html"
    if site.declared not in ("header", "header+meta"):
        return mime
    label = site.label
    roll = rng.random()
    if roll < 0.1:
        return f'{mime}; charset="{label}"'  # quoted: valid, and FastWARC keeps the quotes
    if roll < 0.35:
        return f"{mime};charset={label}"
    if roll < 0.4:
        return f"{mime.upper()}; Charset={label}"
    return f"{mime}; charset={label}"


def _target_size(rng: random.Random) -> int:
    """HTML characters of a page: log-normal, median ~58 KB, mean ~75 KB once markup is added, 15..250 KB."""
    return int(min(240_000, max(15_000, rng.lognormvariate(math.log(58_000), 0.6))))


def _page_html(rng: random.Random, site: _Site, url: str, n: int, pools: _Pools,
               error_page: bool = False) -> tuple[str, list[tuple[str, str, bool]]]:
    """One page's markup and its truth pairs (in document order, each once)."""
    page = _Page(rng, site, url, n, pools)
    lang = site.lang
    target = _target_size(rng) // (3 if error_page else 1)
    plain = rng.random() < 0.02  # a page without a single image
    n_images = 0 if plain else max(1, round(target / 2000 * rng.uniform(0.6, 1.4)))
    title = html.escape(_words(rng, lang, rng.randint(4, 10)), quote=False)

    # Body first: the head's filler is sized from what is left of the target.
    body: list[str] = [f'<body class="post-template-default single single-post postid-{n}">\n',
                       "<!-- Google Tag Manager (noscript) -->\n", '<div id="page" class="site">\n',
                       '<header id="masthead" class="site-header">']
    if not plain:
        body.append(page.logo())
    body.append(site.nav)
    if rng.random() < 0.5:
        body.append('<form role="search" action="/"><input type="search" name="s">'
                    '<input type="image" src="/static/search.png" alt="Search this site"></form>')
    body.append("</header>\n<main id=\"main\"><article>\n")
    body.append(f"<h1 class=\"entry-title\">{title}</h1>\n")
    if not plain and rng.random() < 0.5:
        body.append(page.img(f"https://secure.gravatar.com/avatar/{rng.getrandbits(128):032x}?s=96&d=mm&r=g",
                             rng.choice(("", f"Avatar of {site.name}", None)), [("class", "avatar")]))
    related = 0 if plain else min(len(site.posts), rng.choice((0, 0, 3, 4, 6, 8, 12)))
    fixed = 2 + len(site.icons) * 2 + related + 3
    content = max(0, n_images - fixed) if not plain else 0
    paragraphs = max(3, content + rng.randint(0, 10))
    images_at = sorted(rng.sample(range(paragraphs + content), content)) if content else []
    k = 0
    for i in range(paragraphs + content):
        if images_at and k < len(images_at) and images_at[k] == i:
            roll = rng.random()
            if roll < 0.93:
                tag = page.content_img(k)
            elif roll < 0.98:
                tag = page.odd_img()
            else:
                tag = page.emoji()
            if rng.random() < 0.6:
                caption = html.escape(_words(rng, lang, rng.randint(3, 10)), quote=False)
                tag = f'<figure class="wp-block-image">{tag}<figcaption>{caption}</figcaption></figure>'
            body.append(tag + "\n")
            k += 1
        else:
            body.append(page.paragraph())
        if rng.random() < 0.04:
            body.append(f'<!-- <img src="/old/banner-{n}-{i}.jpg" alt="Old banner {_words(rng, "en", 3)}"> -->\n')
        if rng.random() < 0.05:
            body.append('<div class="ad-slot"><ins class="adsbygoogle" data-ad-client="ca-pub-1"></ins>'
                        f"{pools.script(rng)}</div>\n")
    if not plain:
        body.append(f'<div class="share">{page.icons()}</div>\n')
    body.append("</article>\n")
    if related:
        body.append(page.related(related))
    body.append("</main>\n<footer class=\"site-footer\">")
    body.append("".join(f'<a href="/{_slug(rng)}/">{html.escape(_words(rng, lang, rng.randint(1, 3)), quote=False)}'
                        "</a> " for _ in range(rng.randint(6, 30))))
    if not plain:
        body.append(page.logo() + page.icons())
        body.append('<map name="m"><area shape="rect" coords="0,0,10,10" href="/north" alt="Region north"></map>')
        body.append(page.pixels())
    body.append("<!--STRAY--></footer>\n" if site.mixed else "</footer>\n")
    tail = ["</div>\n"]
    if rng.random() < 0.2:  # a framework's state blob: URLs and alt strings, not elements
        state = {"props": {"pageProps": {"post": {"id": n, "title": title, "images": [
            {"src": f"/img/state-{n}-{j}.jpg", "alt": _words(rng, lang, 4)} for j in range(rng.randint(2, 20))]}}}}
        tail.append(f'<script id="__NEXT_DATA__" type="application/json">{json.dumps(state, ensure_ascii=False)}'
                    "</script>\n")
    body_len = sum(map(len, body)) + sum(map(len, tail))

    head: list[str] = ["<!DOCTYPE html>\n", f'<html lang="{lang}" class="no-js">\n<head>\n']
    if site.label and site.declared in ("meta", "header+meta"):
        head.append(_charset_meta(rng, site.label) + "\n")
    head.append('<meta name="viewport" content="width=device-width, initial-scale=1">\n')
    if site.base_href is not None:
        if site.base_target_first:
            head.append('<base target="_blank">\n')
        head.append(f'<base href="{site.base_href}">\n')
    head.append(f"<title>{title} | {html.escape(site.name, quote=False)}</title>\n")
    head.append(f'<meta name="description" content="{html.escape(_words(rng, lang, 20))}">\n')
    head.append(f'<meta property="og:image" content="https://{site.cdn}/og/{n}.jpg">\n')
    head += [f'<link rel="stylesheet" href="/wp-content/themes/t/{_slug(rng)}.css?ver={rng.randrange(99)}">\n'
             for _ in range(rng.randint(3, 15))]
    head.append(f'<script type="application/ld+json">{json.dumps({"@context": "https://schema.org", "@type": "Article", "headline": title, "image": [f"https://{site.cdn}/og/{n}.jpg"]}, ensure_ascii=False)}</script>\n')
    head_budget = max(0, target - body_len) * rng.uniform(0.3, 0.7)
    late_meta = site.label is not None and site.declared == "meta-late"
    # A late <meta charset>: after 2-30 KB of head content (scripts and styles run first).
    late_at = rng.randint(2_000, 30_000) if late_meta else -1
    size = sum(map(len, head))
    while size < head_budget or (late_meta and size < late_at):
        room = int(max(head_budget - size, late_at - size, 0))
        block = pools.style(rng, room) if rng.random() < 0.35 else pools.script(rng, room)
        head.append(block)
        size += len(block)
        if late_meta and size >= late_at:
            head.append(_charset_meta(rng, site.label) + "\n")
            late_meta = False
    if late_meta:
        head.append(_charset_meta(rng, site.label) + "\n")
    head.append("</head>\n")
    size += body_len
    while size < target:  # the rest: scripts at the end of the body, as most sites load them
        block = pools.script(rng, target - size)
        tail.insert(0, block)
        size += len(block)
    tail.append("</body>\n</html>\n")
    markup = "".join(head) + "".join(body) + "".join(tail)
    # Each (url, caption) once per page, first occurrence first; a pair seen lazy and not counts as not.
    pairs: dict[tuple[str, str], bool] = {}
    for url_, caption, lazy in page.truth:
        pairs[(url_, caption)] = pairs.get((url_, caption), True) and lazy
    return markup, [(u, c, lazy) for (u, c), lazy in pairs.items()]


def _encode_page(site: _Site, markup: str) -> bytes:
    # Characters a legacy charset lacks become numeric references, as browsers submit and CMSs store them.
    body = markup.encode(site.codec, "xmlcharrefreplace")
    if site.mixed:
        body = body.replace(b"<!--STRAY-->", b"<!-- (c) caf\xe9 2011 -->", 1)
    if site.bom:
        body = b"\xef\xbb\xbf" + body
    return body


# --- the WARC --------------------------------------------------------------------------------------

class CrawlFiles(NamedTuple):
    warc: Path
    truth: Path


class _Writer:
    """warcio's writer with the record ids and dates drawn from the seed (so the file is reproducible)."""

    def __init__(self, fh: io.BufferedWriter, rng: random.Random) -> None:
        self.writer = WARCWriter(fh, gzip=True)
        self.rng = rng
        self.when = datetime(2024, 3, 1, 8, 0, 0, tzinfo=UTC)
        self.warcinfo_id = self.record_id()

    def record_id(self) -> str:
        return f"<urn:uuid:{uuid.UUID(int=self.rng.getrandbits(128), version=4)}>"

    def date(self) -> str:
        self.when += timedelta(milliseconds=self.rng.randint(5, 900))
        return self.when.strftime("%Y-%m-%dT%H:%M:%SZ")

    def warcinfo(self, filename: str) -> None:
        info = (f"software: pairlake-bench cc_like_crawl v{GENERATOR_VERSION}\r\nformat: WARC File Format 1.1\r\n"
                "robots: checked via crawler-commons\r\n").encode()
        headers = {"WARC-Date": self.date(), "WARC-Record-ID": self.warcinfo_id, "WARC-Filename": filename}
        self.writer.write_record(self.writer.create_warc_record(
            "", "warcinfo", payload=io.BytesIO(info), warc_content_type="application/warc-fields",
            warc_headers_dict=headers))

    def capture(self, url: str, status: str, headers: list[tuple[str, str]], body: bytes, meta: str) -> None:
        rng, writer = self.rng, self.writer
        split = urlsplit(url)
        date = self.date()
        request_id, response_id = self.record_id(), self.record_id()
        ip = f"{rng.randrange(1, 224)}.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
        request = StatusAndHeaders(f"GET {split.path or '/'}{'?' + split.query if split.query else ''} HTTP/1.1", [
            ("User-Agent", "CCBot/2.0 (https://commoncrawl.org/faq/)"), ("Accept", "text/html,*/*;q=0.8"),
            ("Accept-Language", "en-US,en;q=0.5"), ("If-Modified-Since", "Tue, 20 Feb 2024 10:00:00 GMT"),
            ("Accept-Encoding", "br,gzip"), ("Host", split.netloc)], is_http_request=True)
        common = {"WARC-Date": date, "WARC-Warcinfo-ID": self.warcinfo_id, "WARC-IP-Address": ip}
        writer.write_record(writer.create_warc_record(
            url, "request", payload=io.BytesIO(b""), http_headers=request,
            warc_headers_dict={**common, "WARC-Record-ID": request_id}))
        response = StatusAndHeaders(status, headers + [("Content-Length", str(len(body)))], protocol="HTTP/1.1")
        writer.write_record(writer.create_warc_record(
            url, "response", payload=io.BytesIO(body), http_headers=response,
            warc_headers_dict={**common, "WARC-Record-ID": response_id, "WARC-Concurrent-To": request_id}))
        writer.write_record(writer.create_warc_record(
            url, "metadata", payload=io.BytesIO(meta.encode()), warc_content_type="application/warc-fields",
            warc_headers_dict={"WARC-Date": date, "WARC-Record-ID": self.record_id(),
                               "WARC-Warcinfo-ID": self.warcinfo_id, "WARC-Concurrent-To": response_id}))


def _server_headers(rng: random.Random, content_type: str) -> list[tuple[str, str]]:
    headers = [("Date", "Fri, 01 Mar 2024 08:00:00 GMT"), ("Server", rng.choice(("nginx", "Apache", "cloudflare"))),
               ("Content-Type", content_type)]
    if rng.random() < 0.6:
        # Common Crawl stores bodies decoded and renames the coding headers.
        headers.append(("X-Crawler-Content-Encoding", "gzip"))
    if rng.random() < 0.3:
        headers.append(("X-Crawler-Transfer-Encoding", "chunked"))
    headers += [("Vary", "Accept-Encoding"), ("Cache-Control", "max-age=600")]
    return headers


def _non_html(rng: random.Random, site: _Site, n: int) -> tuple[str, str, bytes]:
    """(url, Content-Type, body) of a capture an extractor must skip for its type."""
    roll = rng.random()
    base = site.origin
    if roll < 0.5:
        kind = rng.choice(("image/jpeg", "image/png", "image/webp", "image/gif"))
        magic = {"image/jpeg": b"\xff\xd8\xff\xe0", "image/png": b"\x89PNG\r\n\x1a\n", "image/webp": b"RIFF",
                 "image/gif": b"GIF89a"}[kind]
        return f"{base}/img/{n}.{kind.split('/')[1]}", kind, magic + rng.randbytes(rng.randint(3_000, 60_000))
    if roll < 0.65:
        data = {"html": f'<div><img src="/json/{n}.jpg" alt="JSON embedded markup"></div>',
                "items": [_words(rng, "en", 5) for _ in range(rng.randint(5, 200))]}
        return f"{base}/wp-json/wp/v2/posts/{n}", "application/json; charset=UTF-8", json.dumps(data).encode()
    if roll < 0.75:
        return f"{base}/files/{n}.pdf", "application/pdf", b"%PDF-1.4\n" + rng.randbytes(rng.randint(5_000, 80_000))
    if roll < 0.85:
        return f"{base}/static/{n}.css", "text/css", _css_blob(rng, rng.randint(1_000, 20_000)).encode()
    if roll < 0.95:
        return f"{base}/static/{n}.js", "application/javascript", _js_blob(rng, rng.randint(1_000, 20_000), True).encode()
    items = "".join(f"<item><title>{_words(rng, 'en', 4)}</title><description><![CDATA[<img src=\"/rss/{n}-{j}.jpg\" "
                    f"alt=\"RSS item image\">]]></description></item>" for j in range(rng.randint(2, 10)))
    return f"{base}/feed/{n}", "application/rss+xml; charset=UTF-8", f"<?xml version=\"1.0\"?><rss><channel>{items}</channel></rss>".encode()


def _page_url(rng: random.Random, site: _Site, n: int) -> str:
    roll = rng.random()
    if roll < 0.4:
        return f"{site.origin}/{_slug(rng)}/{_slug(rng)}-{n}.html"
    if roll < 0.8:
        return f"{site.origin}/20{rng.randint(15, 24)}/{rng.randint(1, 12):02d}/{_slug(rng)}-{n}/"
    return f"{site.origin}/index.php?p={n}&lang={site.lang}"


def generate_crawl(warc_path: Path, truth_path: Path, pages: int, seed: int = 0,
                   legacy_share: float = LEGACY_SHARE) -> None:
    """Write ``pages`` HTML pages with status 200, among other captures, to ``warc_path`` and their truth
    to ``truth_path`` (both replaced atomically)."""
    rng = random.Random(seed)
    pools = _Pools(random.Random(seed + 1))
    sites = [_make_site(rng, i, legacy_share) for i in range(max(1, round(pages / 2.5)))]
    truth_pages: list[dict] = []
    tmp_warc, tmp_truth = warc_path.with_suffix(".tmp"), truth_path.with_suffix(".tmp")
    with tmp_warc.open("wb") as fh:
        out = _Writer(fh, rng)
        out.warcinfo(warc_path.name)
        n = 0
        while len(truth_pages) < pages:
            n += 1
            site = rng.choice(sites)
            roll = rng.random()
            fetch_meta = f"fetchTimeMs: {rng.randint(40, 2_000)}\r\n"
            if roll < 0.80:
                url = _page_url(rng, site, n)
                markup, pairs = _page_html(rng, site, url, n, pools)
                body = _encode_page(site, markup)
                headers = _server_headers(rng, _content_type(rng, site))
                charset_detected = {"cp1252": "windows-1252"}.get(site.codec, site.codec.upper())
                out.capture(url, "200 OK", headers, body, f"{fetch_meta}charset-detected: {charset_detected}\r\n"
                            f'languages-cld2: {{"reliable":true,"languages":[{{"code":"{site.lang}"}}]}}\r\n')
                truth_pages.append({"url": url, "codec": site.codec, "label": site.label, "declared": site.declared,
                                    "legacy": site.legacy is not None, "mixed": site.mixed, "bom": site.bom,
                                    "bytes": len(body), "pairs": [list(p) for p in pairs]})
            elif roll < 0.86:  # redirect, with the small HTML body servers send (an image with alt in it)
                url = _page_url(rng, site, n)
                body = (f"<html><head><title>301 Moved Permanently</title></head><body><h1>Moved</h1>"
                        f'<img src="/static/moved-{n}.png" alt="Moved permanently notice">'
                        f'<p>The document has moved <a href="{site.origin}/new/{n}/">here</a>.</p></body></html>').encode()
                status = rng.choice(("301 Moved Permanently", "302 Found", "308 Permanent Redirect"))
                headers = _server_headers(rng, "text/html; charset=iso-8859-1") + [("Location", f"{site.origin}/new/{n}/")]
                out.capture(url, status, headers, body, fetch_meta)
            elif roll < 0.90:  # error pages in the site's template: full of images, none of them wanted
                url = _page_url(rng, site, n)
                markup, _ = _page_html(rng, site, url, n, pools, error_page=True)
                status = rng.choice(("404 Not Found", "404 Not Found", "403 Forbidden", "500 Internal Server Error",
                                     "503 Service Unavailable"))
                out.capture(url, status, _server_headers(rng, _content_type(rng, site)), _encode_page(site, markup),
                            fetch_meta)
            else:
                url, content_type, body = _non_html(rng, site, n)
                out.capture(url, "200 OK", _server_headers(rng, content_type), body, fetch_meta)
    truth = {"generator_version": GENERATOR_VERSION, "seed": seed, "pages": pages, "legacy_share": legacy_share,
             "warc": warc_path.name, "captures": n, "page_truth": truth_pages}
    tmp_truth.write_text(json.dumps(truth, ensure_ascii=False))
    tmp_truth.replace(truth_path)
    tmp_warc.replace(warc_path)


def cached_crawl(pages: int, seed: int = 0) -> CrawlFiles:
    """The crawl of ``pages`` HTML pages for ``seed``, generated on first use under CACHE_DIR."""
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    stem = CACHE_DIR / f"crawl-v{GENERATOR_VERSION}-{pages}-{seed}"
    files = CrawlFiles(stem.with_suffix(".warc.gz"), stem.with_suffix(".truth.json"))
    if not (files.warc.exists() and files.truth.exists()):
        generate_crawl(files.warc, files.truth, pages, seed)
    return files


# --- scoring ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TruthPage:
    url: str
    codec: str
    label: str | None
    declared: str
    legacy: bool
    mixed: bool
    pairs: list[tuple[str, str, bool]]  # (url, caption, lazy)

    @property
    def kind(self) -> str:
        return f"{self.codec}/{self.declared}" + ("/mixed" if self.mixed else "")


def load_truth(path: Path) -> list[TruthPage]:
    data = json.loads(path.read_text())
    return [TruthPage(p["url"], p["codec"], p["label"], p["declared"], p["legacy"], p["mixed"],
                      [(u, c, bool(lazy)) for u, c, lazy in p["pairs"]]) for p in data["page_truth"]]


def score(emitted: Iterable[tuple[str, str, str]], pages: list[TruthPage], min_chars: int, max_chars: int,
          examples: int = 5) -> dict[str, dict]:
    """Precision and recall of ``emitted`` (url, caption, page URL) against the truth pairs whose caption
    length is within [min_chars, max_chars] (the limits the extractor applies).

    Pairs are compared as (url, caption) over the whole file: extractors dedup across pages, so a pair is
    found when it is emitted for any page. Categories: "all" (lazy pairs included), "no_lazy" (lazy-only
    truth pairs neither found nor counted against precision), "legacy" / "utf8" (no_lazy, restricted to
    pages in a legacy encoding / in UTF-8: recall over their truth, precision over pairs emitted for them),
    and "by_kind" (no_lazy per codec/declaration).
    """
    truth_all: dict[tuple[str, str], None] = {}
    not_lazy: dict[tuple[str, str], None] = {}
    per_page: dict[str, list[tuple[str, str]]] = {}
    by_url = {p.url: p for p in pages}
    for p in pages:
        kept = []
        for url, caption, lazy in p.pairs:
            if min_chars <= len(caption) <= max_chars:
                truth_all[(url, caption)] = None
                if not lazy:
                    not_lazy[(url, caption)] = None
                    kept.append((url, caption))
        per_page[p.url] = kept
    lazy_only = truth_all.keys() - not_lazy.keys()
    found: dict[tuple[str, str], str] = {}
    for url, caption, page in emitted:
        found.setdefault((url, caption), page)

    def metrics(truth: Iterable[tuple[str, str]], mine: Iterable[tuple[str, str]], skip: set) -> dict:
        truth = list(dict.fromkeys(truth))
        mine = [pair for pair in mine if pair not in skip]
        correct = sum(pair in truth_all for pair in mine)
        hits = [pair in found for pair in truth]
        return {"truth": len(truth), "emitted": len(mine), "hits": sum(hits),
                "precision": round(correct / len(mine), 4) if mine else None,
                "recall": round(sum(hits) / len(truth), 4) if truth else None,
                "missed": [list(pair) for pair, hit in zip(truth, hits) if not hit][:examples],
                "spurious": [list(pair) for pair in mine if pair not in truth_all][:examples]}

    def pages_where(test) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
        truth = [pair for p in pages if test(p) for pair in per_page[p.url]]
        mine = [pair for pair, page in found.items() if page in by_url and test(by_url[page])]
        return truth, mine

    report = {"all": metrics(truth_all, found, set()), "no_lazy": metrics(not_lazy, found, lazy_only),
              "legacy": metrics(*pages_where(lambda p: p.legacy), lazy_only),
              "utf8": metrics(*pages_where(lambda p: not p.legacy), lazy_only)}
    kinds = sorted({p.kind for p in pages})
    report["by_kind"] = {}
    for kind in kinds:
        m = metrics(*pages_where(lambda p, kind=kind: p.kind == kind), lazy_only)
        m["pages"] = sum(p.kind == kind for p in pages)
        report["by_kind"][kind] = m
    return report
