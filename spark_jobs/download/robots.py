"""Robots Exclusion Protocol rules (RFC 9309): parse robots.txt syntax and match URL paths.

Used for robots.txt and for ai.txt (Spawning's format: robots.txt syntax whose patterns are often
file types such as ``Disallow: *.jpg``). A group applies to a product token when one of its
``User-agent`` lines names that token exactly (case-insensitively); groups naming the same token are
merged, and ``*`` applies when none names it. Within the applicable rules the longest matching
pattern wins and Allow wins a tie; ``*`` matches any run of characters, a final ``$`` anchors the
end, and otherwise a pattern matches a prefix of the path (query included). Lines that do not parse
are skipped, so an HTML page served in place of the file yields no rules (allow all).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from yarl import URL

_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_PERCENT = re.compile(r"%([0-9A-Fa-f]{2})")


def normalise(path: str) -> str:
    """The comparison form of a path or pattern (RFC 9309 2.2.2): percent-encoded unreserved
    characters decoded, other escapes upper-cased, non-ASCII characters UTF-8 percent-encoded."""

    def escape(m: re.Match[str]) -> str:
        char = chr(int(m.group(1), 16))
        return char if char in _UNRESERVED else m.group(0).upper()

    path = _PERCENT.sub(escape, path)
    return "".join(c if c.isascii() else "".join(f"%{b:02X}" for b in c.encode()) for c in path)


def request_path(url: str) -> str:
    """The part of ``url`` that rules match: path and query, normalised."""
    return normalise(URL(url).raw_path_qs or "/")


def compile_pattern(pattern: str, *, ignore_case: bool = False) -> re.Pattern[str]:
    """A robots.txt path pattern as a regex anchored at the path's start."""
    anchored = pattern.endswith("$")
    body = ".*".join(re.escape(part) for part in normalise(pattern.removesuffix("$")).split("*"))
    return re.compile(body + ("$" if anchored else ""), re.IGNORECASE if ignore_case else 0)


@dataclass(frozen=True)
class Rule:
    allow: bool
    pattern: str
    regex: re.Pattern[str] = field(compare=False)


def _allowed_by(rules: list[Rule], path: str) -> bool:
    """Whether ``path`` (see ``request_path``) is allowed: the longest matching pattern decides."""
    best: Rule | None = None
    for rule in rules:
        if rule.regex.match(path) and (
            best is None or (len(rule.pattern), rule.allow) > (len(best.pattern), best.allow)
        ):
            best = rule
    return best is None or best.allow


class RobotsRules:
    """The groups of one robots.txt-syntax file, by lower-cased product token."""

    def __init__(self, groups: dict[str, list[Rule]] | None = None):
        self._groups = groups or {}

    @classmethod
    def parse(cls, text: str, *, ignore_case: bool = False) -> RobotsRules:
        """``ignore_case``: match patterns case-insensitively (ai.txt's ``*.jpg`` also covers ``.JPG``)."""
        groups: dict[str, list[Rule]] = {}
        agents: list[str] = []  # the current group's tokens
        in_rules = False  # a User-agent line after rules starts a new group
        for line in text.splitlines():
            key, colon, value = line.split("#", 1)[0].partition(":")
            key, value = key.strip().lower(), value.strip()
            if not colon:
                continue
            if key == "user-agent":
                if in_rules:
                    agents, in_rules = [], False
                token = value.split("/")[0].strip().lower()
                agents.append(token)
                groups.setdefault(token, [])
            elif key in ("allow", "disallow") and agents:
                in_rules = True
                if value:  # an empty Disallow allows everything: no rule
                    rule = Rule(key == "allow", value, compile_pattern(value, ignore_case=ignore_case))
                    for token in agents:
                        groups[token].append(rule)
        return cls(groups)

    def allows(self, path: str, token: str, *, star: bool = True) -> bool:
        """Whether ``token`` may fetch ``path``; ``star``: fall back to the ``*`` group."""
        rules = self._groups.get(token.lower())
        if rules is None:
            rules = self._groups.get("*", []) if star else []
        return _allowed_by(rules, path)
