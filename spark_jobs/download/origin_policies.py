"""Opt-out signals read from files at an image's origin, checked before the image is requested.

pairlake announces itself as ``download.user_agent`` (default ``pairlake/0.1
(+https://github.com/pairlake)``); its product token, ``pairlake``, is what robots.txt, ai.txt and
X-Robots-Tag rules address. Per origin (scheme, host, port), once per batch:

- ``/robots.txt`` (RFC 9309): our token's group, else ``*``, disallowing the path →
  ``robots_disallowed`` (``honour_robots_txt``). Groups naming an AI-training crawler token
  (``AI_TRAINING_AGENTS``) disallowing it → ``opted_out:robots-txt`` (``honour_robots_txt_ai_agents``):
  a site that shuts out AI trainers by name has opted out of AI datasets, whoever collects them.
- ``/.well-known/tdmrep.json`` (W3C TDMRep) reserving TDM rights for the path →
  ``opted_out:tdmrep-json`` (``honour_tdmrep_json``).
- ``/ai.txt`` (Spawning's format, robots.txt syntax) disallowing the path for our token or ``*`` →
  ``opted_out:ai-txt`` (``honour_ai_txt``).

The fetcher adds the response-header signals: X-Robots-Tag (``opted_out:x-robots-tag``) and
TDMRep's ``tdm-reservation: 1`` (``opted_out:tdm-header``). A reservation in tdmrep.json is final
here even though the spec lets a header lift it: we decide before requesting, so the image is never
fetched. Opt-outs are not retryable.

Each file is fetched once per origin, its first requests sharing the one fetch, through the same
guarded client, deadlines and per-host limits as images, and read up to ``MAX_POLICY_BYTES``. 2xx →
parsed; 4xx or more than 5 redirects → no rules; 5xx, a timeout or a dropped connection →
``<file>_unavailable`` (retryable), so the origin's images wait for a later batch rather than being
fetched without knowing the rules; a fetch the guard refuses (a redirect into private address space)
or that cannot reach the host (DNS, TLS) gives the origin's images that reason. A file that does not
parse (a truncated or garbled tdmrep.json) counts as no rules and is logged: an unreadable file
expresses nothing we could honour.

``AI_TRAINING_AGENTS``: robots.txt tokens their operators document as collecting AI training data
(or, for Google-Extended and Applebot-Extended, as the switch for AI training use), plus the token
img2dataset's docs announce (the downloader LAION-5B was built with). Sources: each operator's
crawler page, and the community list at github.com/ai-robots-txt/ai.robots.txt. datadiligence
(Spawning) reads no robots.txt; it checks X-Robots-Tag and TDMRep headers, as we do.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from yarl import URL

from infra.config import DownloadConfig
from spark_jobs.download.robots import RobotsRules, request_path
from spark_jobs.download.tdmrep import TdmRules

AI_TRAINING_AGENTS = (
    "CCBot",  # Common Crawl: the corpus most image-text datasets, LAION's included, start from
    "GPTBot",  # OpenAI
    "Google-Extended",  # Google's AI-training switch
    "Applebot-Extended",  # Apple's AI-training switch
    "anthropic-ai",  # Anthropic
    "ClaudeBot",  # Anthropic
    "cohere-ai",  # Cohere
    "cohere-training-data-crawler",  # Cohere
    "Bytespider",  # ByteDance
    "PerplexityBot",  # Perplexity
    "omgili",  # Webz.io, sells crawl data for AI training
    "omgilibot",  # Webz.io
    "Diffbot",  # Diffbot
    "FacebookBot",  # Meta
    "meta-externalagent",  # Meta
    "AI2Bot",  # Allen Institute for AI
    "img2dataset",  # the token img2dataset's docs announce (--user_agent_token img2dataset)
)
MAX_POLICY_BYTES = 500 * 1024  # RFC 9309: crawlers must parse at least 500 KiB of robots.txt

# Fetches a policy file URL → (HTTP status, body up to MAX_POLICY_BYTES); raises when no HTTP answer came.
PolicyFetch = Callable[[str], Awaitable[tuple[int, bytes]]]
# Parsed policy files kept between downloader calls: file key -> origin -> rules (None: no rules).
PolicyAnswers = dict[str, dict[str, Any]]
T = TypeVar("T")
log = logging.getLogger(__name__)


def product_token(user_agent: str) -> str:
    """``pairlake/0.1 (+https://...)`` → ``pairlake``."""
    return user_agent.split("/")[0].strip().lower()


class PolicyUnavailable(Exception):
    """A policy file could not be read for now (5xx, timeout, ...); ``__cause__`` says why."""

    def __init__(self, key: str, detail: str):
        super().__init__(detail)
        self.key = key  # robots, tdmrep or ai_txt: the reason code is ``<key>_unavailable``
        self.detail = detail


@dataclass(frozen=True)
class Refusal:
    reason: str
    detail: str


class OriginFile(Generic[T]):
    """One policy file, loaded once per origin: concurrent first requests share a single fetch, and
    the answers (``answers``, origin -> parsed file or None) outlive the event loop, so a Spark task
    that downloads batch after batch asks each origin once."""

    def __init__(self, key: str, path: str, parse: Callable[[bytes], T], fetch: PolicyFetch,
                 answers: dict[str, T | None] | None = None):
        self.key = key
        self.path = path
        self._parse = parse
        self._fetch = fetch
        self._loads: dict[str, asyncio.Task[T | None]] = {}
        self._answers = {} if answers is None else answers

    async def get(self, origin: str) -> T | None:
        """The origin's parsed file, or None when it has none (or none that parses)."""
        if origin in self._answers:
            return self._answers[origin]
        task = self._loads.get(origin)
        if task is None:
            task = self._loads[origin] = asyncio.ensure_future(self._load(origin))
        answer = await asyncio.shield(task)  # a cancelled waiter must not cancel the shared fetch
        self._answers[origin] = answer  # an unavailable file raised above: asked again next time
        return answer

    async def _load(self, origin: str) -> T | None:
        try:
            status, body = await self._fetch(origin + self.path)
        except Exception as exc:
            raise PolicyUnavailable(self.key, f"{self.path}: {exc}") from exc
        if status >= 500:
            raise PolicyUnavailable(self.key, f"{self.path} answered HTTP {status}")
        if not 200 <= status < 300:
            return None
        try:
            return self._parse(body)
        except (ValueError, RecursionError) as exc:  # RecursionError: JSON nested past Python's limit
            log.warning("%s%s does not parse (%s): read as no rules", origin, self.path, str(exc)[:200])
            return None


def _robots_txt(body: bytes) -> RobotsRules:
    return RobotsRules.parse(body.decode("utf-8", errors="replace"))


def _ai_txt(body: bytes) -> RobotsRules:
    return RobotsRules.parse(body.decode("utf-8", errors="replace"), ignore_case=True)


class OriginPolicies:
    """The origin-file signals ``config`` honours; ``check`` says whether a URL may be requested."""

    def __init__(self, config: DownloadConfig, fetch: PolicyFetch, answers: PolicyAnswers | None = None):
        answers = {} if answers is None else answers
        self._token = product_token(config.user_agent)
        self._own_robots = config.honour_robots_txt
        self._ai_robots = config.honour_robots_txt_ai_agents
        # Most explicit first: when several files refuse a URL, the first one's reason is recorded.
        self._checks: list[tuple[OriginFile[Any], Callable[[Any, str], Refusal | None]]] = []
        if config.honour_tdmrep_json:
            tdmrep = OriginFile("tdmrep", "/.well-known/tdmrep.json", TdmRules.parse, fetch,
                                answers.setdefault("tdmrep", {}))
            self._checks.append((tdmrep, _judge_tdmrep))
        if config.honour_ai_txt:
            ai_txt = OriginFile("ai_txt", "/ai.txt", _ai_txt, fetch, answers.setdefault("ai_txt", {}))
            self._checks.append((ai_txt, self._judge_ai_txt))
        if self._own_robots or self._ai_robots:
            robots = OriginFile("robots", "/robots.txt", _robots_txt, fetch, answers.setdefault("robots", {}))
            self._checks.append((robots, self._judge_robots))

    async def check(self, url: str) -> Refusal | None:
        """The refusal of ``url`` by its origin's files, or None; raises ``PolicyUnavailable`` when a
        file could not be read and none of the others refuses the URL."""
        if not self._checks:
            return None
        origin, path = str(URL(url).origin()), request_path(url)
        loaded = await asyncio.gather(*(file.get(origin) for file, _ in self._checks), return_exceptions=True)
        unavailable: BaseException | None = None
        for (_, judge), rules in zip(self._checks, loaded):
            if isinstance(rules, BaseException):
                unavailable = unavailable or rules
            elif rules is not None and (refusal := judge(rules, path)):
                return refusal
        if unavailable is not None:
            raise unavailable
        return None

    def _judge_ai_txt(self, rules: RobotsRules, path: str) -> Refusal | None:
        if rules.allows(path, self._token):
            return None
        return Refusal("opted_out:ai-txt", f"ai.txt disallows {path[:200]}")

    def _judge_robots(self, rules: RobotsRules, path: str) -> Refusal | None:
        if self._ai_robots:
            for agent in AI_TRAINING_AGENTS:
                if not rules.allows(path, agent, star=False):
                    return Refusal("opted_out:robots-txt", f"robots.txt disallows {path[:200]} for {agent}")
        if self._own_robots and not rules.allows(path, self._token):
            return Refusal("robots_disallowed", "disallowed by robots.txt")
        return None


def _judge_tdmrep(rules: TdmRules, path: str) -> Refusal | None:
    if rules.reserved(path):
        return Refusal("opted_out:tdmrep-json", f"tdmrep.json reserves TDM rights on {path[:200]}")
    return None
