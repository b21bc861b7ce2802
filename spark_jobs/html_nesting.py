"""The parse budget of one HTML page: refuse, in one linear pass, pages that would cost the HTML
parser super-linear time (see the comment below), before the parser sees them."""

from __future__ import annotations

import bisect
import re
from collections import defaultdict

#
# Lexbor builds the tree as the HTML standard says, and the standard's scope checks walk the stack
# of open elements: every <div>, <p>, <li>, <section>... start tag looks for an open <p> "in button
# scope", down to the first scope boundary, so N unclosed <div> cost O(N²): 100,000 of them (2.4 KB
# gzipped) take ~30 s, 95% of it in lxb_html_tree_element_in_scope and lxb_html_tag_is_category.
# Formatting elements left open (<b id=1>…<b id=N>) are re-opened after every block that closed
# them, at a cost that grows faster still (Lexbor issue #340). Browsers cap the depth (Blink and
# WebKit at 512 open elements); Lexbor does not, and selectolax cannot interrupt a parse. So a big
# page's tags are read first, in one linear pass, into a model of the stack and of the list of
# active formatting elements: end tags and the implied end tags of sloppy markup (<p>, <li>, <td>,
# <option>...) close what the standard says they close; where the model is unsure (misnested
# formatting, the adoption agency) it keeps elements open, so it errs deep rather than shallow.
# SVG and MathML are read as HTML, where "/>" closes nothing: one SVG with a thousand self-closed
# shapes side by side counts as that deep (rare; reading foreign content exactly would let removed
# or unseen tags end it early, which errs shallow). On ~6,000 real pages the model's depth was 0 to
# 3 levels above that of Lexbor's tree, never below.


def _names(text: str) -> frozenset[bytes]:
    return frozenset(text.encode().split())


# Pages with at most this many "<" are not read: nesting alone costs them at most ~0.2 s, re-opened
# formatting at most a few seconds. Reading a page costs about as much as Lexbor's parse of it (the
# model is Python, ~3 µs a tag, so _LEAF shrinks the page first), so it is kept to big pages.
_UNCHECKED_TAGS = 10_000
# An element holding only text (<a href=…>text</a>): open and closed at once, whatever else is open.
# Two passes of the regex engine remove those and then their parents, most of a big page's tags;
# the model adds back the two levels they can have nested. Table parts stay: a cell implies its
# row and body. Possessive quantifiers: a failed match costs no backtracking.
_LEAF = re.compile(
    rb"<(?!(?i:td|th|tr|tbody|thead|tfoot|caption|colgroup)[\t\n\f\r />])([A-Za-z][^\t\n\f\r />]*+)"
    rb"(?:[\t\n\f\r /][^<>]*+)?+>[^<>]*+</\1\s*+>"
)
_LEAF_PASSES = 2
# One pass of the regex engine splits a page into comments, raw-text elements (whose content is
# text up to their end tag) and tags (end-tag slash, name, attributes); the rest is text.
_TOKENS = re.compile(
    rb"<!--.*?-->"
    rb"|<(script|style|textarea|title|xmp|iframe|noembed|noframes)(?=[\t\n\f\r />])[^>]*>.*?(?:</\1|\Z)"
    rb"|<(/?)([a-z][^\t\n\f\r />]*)([^>]*)>",
    re.DOTALL | re.IGNORECASE,
)
_VOID = _names("area base basefont bgsound br col embed frame hr image img input keygen link meta param source "
                "track wbr")
_NEVER_PUSHED = _names("html head body")  # the parser merges repeats of these into the first
# Boundaries of "has an element in scope" (default scope, plus button; list-item and table scope
# have other sets, see _fence).
_SCOPE = _names("applet caption table td th marquee object template button mi mo mn ms mtext annotation-xml "
                "foreignobject desc")
# The standard's "special" elements that can be open, less address, div and p (see-through for the
# <li>/<dd>/<dt> rule; _fence adds them back elsewhere).
_SPECIAL = _SCOPE | _names(
    "article aside blockquote center colgroup dd details dir dl dt fieldset figcaption figure footer form frameset "
    "h1 h2 h3 h4 h5 h6 header hgroup li listing main menu nav noscript ol pre search section select summary tbody "
    "tfoot thead tr ul"
)
_SEE_THROUGH = (b"address", b"div", b"p")
_CLOSES_P = _names(
    "address article aside blockquote center details dialog dir div dl fieldset figcaption figure footer header "
    "hgroup main menu nav ol p search section summary ul h1 h2 h3 h4 h5 h6 pre listing form li dd dt table hr xmp"
)
_TABLE_PARTS = _names("caption colgroup table tbody td tfoot th thead tr")
_HEADINGS = tuple(_names("h1 h2 h3 h4 h5 h6"))
_FORMATTING = _names("a b big code em font i nobr s small strike strong tt u")
# Elements that put a marker on the list of active formatting elements (cleared when they close).
_MARKERS = _names("applet caption marquee object td template th")
# Start tags that close an open sibling: the names they close and what shields those from them.
_SIBLINGS: dict[bytes, tuple[tuple[bytes, ...], str]] = {
    b"li": ((b"li",), "list"),
    **dict.fromkeys((b"dd", b"dt"), ((b"dd", b"dt"), "list")),
    **dict.fromkeys((b"td", b"th"), ((b"td", b"th"), "table")),
    b"tr": ((b"tr",), "table"),
    **dict.fromkeys((b"tbody", b"thead", b"tfoot"), ((b"tbody", b"thead", b"tfoot"), "table")),
    b"button": ((b"button",), "scope"),
    b"option": ((b"option",), "top"),
    b"optgroup": ((b"option", b"optgroup"), "top"),
    **dict.fromkeys(_HEADINGS, (_HEADINGS, "top")),
}
_ROW_CONTENT = (b"tr", b"td", b"th")
# Start tags with more to do than being pushed.
_CLOSING_START_TAGS = frozenset(_SIBLINGS) | _CLOSES_P | _NEVER_PUSHED | _TABLE_PARTS | {b"a", b"nobr", b"form"}
# Tags the model has rules or bookkeeping for; any other tag is simply pushed, or popped when it
# closes the current node.
_RULED = _CLOSING_START_TAGS | _SCOPE | _SPECIAL | _MARKERS | _FORMATTING


class _Formatting:
    """One entry of the list of active formatting elements."""

    __slots__ = ("name", "index", "live")

    def __init__(self, name: bytes, index: int) -> None:
        self.name, self.index, self.live = name, index, True  # index -1: not open


class _OpenElements:
    """The tree builder's stack of open elements and list of active formatting elements, as far as
    tags alone tell them. ``depth`` counts both: every listed element may be re-opened."""

    def __init__(self) -> None:
        self.names: list[bytes] = []
        self.at: defaultdict[bytes, list[int]] = defaultdict(list)  # name -> its stack indexes
        self.scope: list[int] = []  # stack indexes of open _SCOPE elements
        self.special: list[int] = []  # stack indexes of open _SPECIAL elements
        self.formatting: list[_Formatting | None] = []  # None: a marker
        self.listed = 0  # live entries of self.formatting
        self.entry_at: dict[int, _Formatting] = {}  # stack index -> its entry
        # Live entries after the last marker, by name and by (name, attributes): the standard's
        # lookups "between the end of the list and the last marker".
        self.by_name: list[defaultdict[bytes, list[_Formatting]]] = [defaultdict(list)]
        self.by_key: list[defaultdict[tuple[bytes, bytes], list[_Formatting]]] = [defaultdict(list)]

    @property
    def depth(self) -> int:
        return len(self.names) + self.listed

    def nearest(self, *names: bytes) -> int:
        """Stack index of the innermost open element among ``names``, or -1."""
        best = -1
        for name in names:
            indexes = self.at[name]
            if indexes and indexes[-1] > best:
                best = indexes[-1]
        return best

    def push(self, name: bytes) -> None:
        i = len(self.names)
        self.names.append(name)
        self.at[name].append(i)
        if name in _SCOPE:
            self.scope.append(i)
        if name in _SPECIAL:
            self.special.append(i)
        if name in _MARKERS:
            self.formatting.append(None)
            self.by_name.append(defaultdict(list))
            self.by_key.append(defaultdict(list))

    def pop_to(self, i: int) -> None:
        """Pop the element at stack index ``i`` and everything opened inside it."""
        names, at = self.names, self.at
        while len(names) > i:
            name = names.pop()
            at[name].pop()
            if name in _SCOPE:
                self.scope.pop()
            if name in _SPECIAL:
                self.special.pop()
            if name in _MARKERS:
                self._clear_to_marker()
            entry = self.entry_at.pop(len(names), None)
            if entry is not None:
                entry.index = -1

    def _clear_to_marker(self) -> None:
        while self.formatting:
            entry = self.formatting.pop()
            if entry is None:
                break
            self._unlist(entry)
        if len(self.by_name) > 1:
            self.by_name.pop()
            self.by_key.pop()

    def _unlist(self, entry: _Formatting) -> None:
        if entry.live:
            entry.live = False
            self.listed -= 1
            self.entry_at.pop(entry.index, None)

    def _listed(self, name: bytes) -> _Formatting | None:
        """The last live entry named ``name`` after the last marker."""
        entries = self.by_name[-1][name]
        while entries and not entries[-1].live:
            entries.pop()
        return entries[-1] if entries else None

    def _list(self, name: bytes, attrs: bytes) -> None:
        """Add the element just pushed to the list; the Noah's Ark clause keeps three alike."""
        alike = self.by_key[-1][(name, attrs)]
        if len(alike) >= 3:
            alike[:] = [e for e in alike if e.live]
            if len(alike) >= 3:
                self._unlist(alike.pop(0))
        entry = _Formatting(name, len(self.names) - 1)
        alike.append(entry)
        self.by_name[-1][name].append(entry)
        self.formatting.append(entry)
        self.entry_at[entry.index] = entry
        self.listed += 1

    def _fence(self, kind: str) -> int:
        """Stack index of the innermost element that shields what lies below it from a tag."""
        if kind == "table":
            return self.nearest(b"table", b"template")
        if kind == "list":
            return self.special[-1] if self.special else -1
        if kind == "block":  # any special element
            return max(self.special[-1] if self.special else -1, self.nearest(*_SEE_THROUGH))
        scope = self.scope[-1] if self.scope else -1
        return max(scope, self.nearest(b"ol", b"ul")) if kind == "list-scope" else scope

    def close(self, names: tuple[bytes, ...], kind: str) -> None:
        """Pop through the innermost open element among ``names`` unless something shields it."""
        if kind == "top":
            while self.names and self.names[-1] in names:
                self.pop_to(len(self.names) - 1)
            return
        i = self.nearest(*names)
        if i >= 0 and self._fence(kind) <= i:
            self.pop_to(i)

    def start_tag(self, name: bytes, attrs: bytes) -> None:
        at = self.at
        if name in _CLOSING_START_TAGS:
            # Dropped by the parser: repeats of <html>/<head>/<body>, a nested <form>, table parts
            # outside a table.
            if (name in _NEVER_PUSHED or (name == b"form" and at[b"form"])
                    or (name in _TABLE_PARTS and name != b"table" and not (at[b"table"] or at[b"template"]))):
                return
            if name in (b"a", b"nobr") and self._listed(name):
                self.end_tag(name)  # a second <a> ends the first (adoption agency)
            sibling = _SIBLINGS.get(name)
            if sibling:
                self.close(*sibling)
                if name in _ROW_CONTENT:
                    self._imply_table_parents(name)
            if name in _CLOSES_P and at[b"p"]:
                self.close((b"p",), "scope")
        self.push(name)
        if name in _FORMATTING:
            self._list(name, attrs)

    def _imply_table_parents(self, name: bytes) -> None:
        """The <tbody> (and for a cell the <tr>) the parser inserts when a table lacks them."""
        table = self.nearest(b"table")
        if table < 0:
            return
        if self.nearest(b"tbody", b"thead", b"tfoot") < table:
            self.push(b"tbody")
        if name != b"tr" and self.nearest(b"tr") < table:
            self.push(b"tr")

    def end_tag(self, name: bytes) -> None:
        names = self.names
        entry = self._listed(name) if name in _FORMATTING else None
        if names and names[-1] == name:  # well nested: every rule pops the current node
            self.pop_to(len(names) - 1)
        elif self.at[name]:
            if name in _TABLE_PARTS:
                self.close((name,), "table")
            elif name == b"li":
                self.close((name,), "list-scope")
            elif name in _SPECIAL or name in _SEE_THROUGH:
                self.close((name,), "scope")
            else:  # formatting and phrasing elements stop at any special element
                self.close((name,), "block")
        if entry is None:
            return
        if entry.index < 0:  # closed: the adoption agency unlists it
            self._unlist(entry)
        elif self._fence("scope") <= entry.index:
            self._adopt(entry)

    def _adopt(self, entry: _Formatting) -> None:
        """The adoption agency for a formatting element with a block opened right inside it
        (``<font><p>x</font>``): a copy of it moves inside the block, so the two swap places on
        the stack. With more in between the element stays where it is: deeper than the parser."""
        i = entry.index
        names = self.names
        if i + 1 >= len(names):
            return
        block = names[i + 1]
        if block not in _SPECIAL and block not in _SEE_THROUGH:
            return
        names[i], names[i + 1] = block, entry.name
        self.at[entry.name][-1] = i + 1
        for indexes, holds in ((self.at[block], True), (self.scope, block in _SCOPE), (self.special, block in _SPECIAL)):
            if holds:
                indexes[bisect.bisect_left(indexes, i + 1)] = i
        del self.entry_at[i]
        entry.index = i + 1
        self.entry_at[i + 1] = entry


def over_parse_budget(page: bytes, max_elements: int, max_depth: int) -> str | None:
    """Why ``page`` must not be parsed (more than ``max_elements`` start tags, or elements nested
    deeper than ``max_depth``), or None. Linear in the page's size."""
    tags = page.count(b"<")
    if tags > max_elements and tags - page.count(b"</") > max_elements:  # start tags, comments, stray "<"
        return f"more than {max_elements} elements (extract.max_page_elements)"
    if tags <= _UNCHECKED_TAGS:
        return None
    for _ in range(_LEAF_PASSES):
        page = _LEAF.sub(b" ", page)  # a space: joins nothing into a new tag or comment
    depth_limit = max_depth - _LEAF_PASSES
    stack = _OpenElements()
    names, at = stack.names, stack.at
    for raw_text, end_slash, name, attrs in _TOKENS.findall(page):
        if end_slash:
            name = name.lower()
            if names and names[-1] == name and name not in _RULED:
                names.pop()  # the common case: the current node closes
                at[name].pop()
            else:
                stack.end_tag(name)
            continue
        name = name.lower()
        if not name or name in _VOID:
            # Comments, raw text and void elements never stay open (the <p> an <hr> closes is left
            # open: the model errs deep).
            continue
        if name in _RULED:
            stack.start_tag(name, attrs)
        else:
            at[name].append(len(names))  # the common case: pushed, nothing else
            names.append(name)
        if stack.depth > depth_limit:
            return f"elements nested deeper than {max_depth} (extract.max_nesting_depth)"
    return None
