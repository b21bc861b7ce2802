"""Where every artefact lives under the lake root: the one place that names locations.

Everything is a key relative to the root, '/'-separated, so the same layout serves a local folder
and a bucket (``Lake.location`` makes it a path on the lake's filesystem). Stages ask here and never
join paths of their own onto the root.

    <root>/<table>/                      Delta tables (infra.tables), each with its _delta_log/
    <root>/releases/<release>/v<N>/      a release version: webdataset shards + manifest.json
    <root>/indexes/<variant>/            a kNN index: index.faiss, metadata-*.parquet, manifest.json
    <root>/indexes/<variant>/.staging-*  an index build in progress (removed when it ends)
    <root>/heads/                        registered tag heads (pairlake train-head)
    <root>/reports/funnel.html           the funnel report
    <root>/optout/inbox/                 opt-out request files (optout.inbox), with held/ and
    <root>/optout/{held,rejected}/         rejected/ beside it
    <root>/_leases/                      who holds a lake-wide lease (removals)
"""

from __future__ import annotations

RELEASES = "releases"
INDEXES = "indexes"
HEADS = "heads"
REPORTS = "reports"
LEASES = "_leases"


def table(name: str) -> str:
    return name


def release(name: str) -> str:
    return f"{RELEASES}/{name}"


def release_version(name: str, version: int) -> str:
    return f"{release(name)}/v{version}"


def index(variant: str) -> str:
    return f"{INDEXES}/{variant}"


def index_staging(variant: str, token: str) -> str:
    return f"{index(variant)}/.staging-{token}"


def report(name: str) -> str:
    return f"{REPORTS}/{name}"


def lease(name: str) -> str:
    return f"{LEASES}/{name}.json"


def optout_inbox(configured: str) -> str:
    """The inbox key (``optout.inbox``; an absolute path stays as it is: an inbox outside the lake)."""
    return configured.strip("/") if not configured.startswith("/") else configured


def optout_beside_inbox(configured: str, folder: str) -> str:
    """``held`` or ``rejected``: a sibling of the inbox."""
    inbox = optout_inbox(configured).rstrip("/")
    parent = inbox.rsplit("/", 1)[0] if "/" in inbox else ""
    return f"{parent}/{folder}" if parent else folder
