"""W3C TDM Reservation Protocol (TDMRep, Community Group final report, 2024): the ``tdm-reservation``
response header and the origin's ``/.well-known/tdmrep.json``.

tdmrep.json is a JSON array of rules ``{"location": pattern, "tdm-reservation": 0|1, "tdm-policy": url}``.
The first rule in file order whose location matches the URL's path (and query) decides; locations
use robots.txt pattern syntax (``*``, final ``$``, otherwise a prefix), matched case-sensitively.
A reservation value other than 0 or 1 is a protocol error, which the spec says to read as unset; we
also read the strings "0"/"1" and JSON false/true as the numbers they obviously mean. Rules that are not objects or
lack a string location are skipped. A file that is not a JSON array does not parse (``ValueError``).
"""

from __future__ import annotations

import json
import re

from spark_jobs.download.robots import compile_pattern

_VALUES = {0: False, 1: True, "0": False, "1": True}


def header_reserves(values: list[str]) -> bool:
    """Whether ``tdm-reservation`` response header values reserve TDM rights."""
    return any(value.strip() == "1" for value in values)


class TdmRules:
    def __init__(self, rules: list[tuple[re.Pattern[str], bool | None]] | None = None):
        self._rules = rules or []  # (location, reserved; None = unset)

    @classmethod
    def parse(cls, body: bytes) -> TdmRules:
        data = json.loads(body.decode("utf-8-sig"))
        if not isinstance(data, list):
            raise ValueError(f"not a JSON array but {type(data).__name__}")
        rules = []
        for entry in data:
            if isinstance(entry, dict) and isinstance(entry.get("location"), str):
                value = entry.get("tdm-reservation")
                reserved = _VALUES.get(value) if isinstance(value, (int, float, str)) else None
                rules.append((compile_pattern(entry["location"]), reserved))
        return cls(rules)

    def reserved(self, path: str) -> bool:
        """Whether TDM rights are reserved for ``path`` (see ``robots.request_path``)."""
        for location, reserved in self._rules:
            if location.match(path):
                return bool(reserved)
        return False
