"""The funnel (pages → candidates → downloaded → kept → unblocked → deduplicated → curated variants →
shards) and an HTML report with plots, curation counts and a tag histogram."""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass
from datetime import datetime, timezone

from collections import Counter
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from infra import lake_layout
from infra.delta_store import Lake
from infra.tables import (
    BLOCKLIST_MATCHES,
    CLIP_SCORES,
    CURATED,
    DEDUP,
    IMAGE_TAGS,
    KEPT_PAIRS,
    SHARDS,
    STAGE_STATS,
    TableSpec,
)

TAGS = ("punsafe", "pwatermark", "aesthetic")
SIMILARITY_BINS = np.linspace(-1.0, 1.0, 101)
TAG_BINS = 20
_BATCH_ROWS = 65_536


@dataclass
class Histogram:
    edges: list[float]
    counts: list[int]


@dataclass
class Funnel:
    steps: list[tuple[str, int]]  # (name, count), in funnel order
    counters: dict[str, dict[str, int]]  # stage -> metric -> value, summed over partitions
    failure_reasons: dict[str, int]
    similarity_kept: Histogram  # CLIP cosines above the threshold, over SIMILARITY_BINS
    similarity_dropped: Histogram
    threshold: float
    shards: int
    curation: dict[str, dict[str, int]]  # "dedup" -> reason -> pairs, "blocklist matches" -> list -> pairs
    tags: dict[str, Histogram]  # tag -> its values over the tagged images, TAG_BINS bins between min and max

    def table(self) -> str:
        """The funnel as a plain-text table."""
        width = max(len(name) for name, _ in self.steps)
        lines = [f"{'stage'.ljust(width)}  {'count':>9}  {'of previous':>11}", "-" * (width + 24)]
        previous = None
        for name, count in self.steps:
            share = f"{count / previous:>11.1%}" if previous else " " * 11
            lines.append(f"{name.ljust(width)}  {count:>9,}  {share}")
            previous = count
        if self.failure_reasons:
            lines.append("")
            signals = {k.removeprefix(OPTED_OUT): v for k, v in self.failure_reasons.items() if k.startswith(OPTED_OUT)}
            failures = {k: v for k, v in self.failure_reasons.items() if not k.startswith(OPTED_OUT)}
            lines.append("download failures: " + ", ".join(f"{k} {v}" for k, v in sorted(failures.items())))
            if signals:
                lines.append("opted out by the site: " + ", ".join(f"{k} {v}" for k, v in sorted(signals.items())))
        for name, counts in self.curation.items():
            if counts:
                lines.append(f"{name}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
        return "\n".join(lines)


# Reason codes of images refused by a machine-readable opt-out signal: opted_out:<signal>.
OPTED_OUT = "opted_out:"


def _batches(lake: Lake, spec: TableSpec, columns: list[str]) -> Iterator[pa.RecordBatch]:
    return lake.batches(spec, columns, _BATCH_ROWS)


def _value_counts(lake: Lake, spec: TableSpec, column: str) -> Counter[str]:
    counts: Counter[str] = Counter()
    for batch in _batches(lake, spec, [column]):
        for entry in pc.value_counts(batch.column(column)).to_pylist():
            counts[entry["values"]] += entry["counts"]
    return counts


def _histograms(lake: Lake, spec: TableSpec, column: str, edges: np.ndarray, split: float | None = None) -> list[Histogram]:
    """One pass over ``column``: its histogram, or with ``split`` those of the values above it and
    of the rest."""
    counts = np.zeros((1 if split is None else 2, len(edges) - 1), dtype=np.int64)
    for batch in _batches(lake, spec, [column]):
        values = batch.column(column).to_numpy(zero_copy_only=False).astype(np.float64)
        values = values[~np.isnan(values)]
        parts = [values] if split is None else [values[values > split], values[values <= split]]
        for row, part in enumerate(parts):
            counts[row] += np.histogram(part, bins=edges)[0]
    return [Histogram(edges.tolist(), row.tolist()) for row in counts]


def _tag_histogram(lake: Lake, tag: str) -> Histogram:
    """Two passes (range, then counts): the values are never held."""
    low, high = np.inf, -np.inf
    for batch in _batches(lake, IMAGE_TAGS, [tag]):
        values = pc.min_max(batch.column(tag)).as_py()
        if values["min"] is not None:
            low, high = min(low, values["min"]), max(high, values["max"])
    if low > high:
        return Histogram([], [])
    return _histograms(lake, IMAGE_TAGS, tag, np.linspace(low, high if high > low else low + 1, TAG_BINS + 1))[0]


def build_funnel(lake: Lake, threshold: float) -> Funnel:
    """The funnel from every table, each scanned a batch at a time: counts and histograms are
    accumulated, so memory stays that of a batch (and of the hash-list matches) at any lake size."""
    counters: dict[str, dict[str, int]] = {}
    for batch in _batches(lake, STAGE_STATS, ["stage", "metric", "value"]):
        for row in batch.to_pylist():
            stage = counters.setdefault(row["stage"], {})
            stage[row["metric"]] = stage.get(row["metric"], 0) + row["value"]
    cand, imgs = counters.get("candidates", {}), counters.get("images", {})
    shards = lake.read(SHARDS, columns=["export_id", "samples", "source_version", "created_at"])  # a row per shard
    latest_export = None
    if shards.num_rows:
        latest_export = max(shards.to_pylist(), key=lambda r: (r["source_version"], r["created_at"]))["export_id"]
    shard_rows = shards.filter(pc.equal(shards["export_id"], latest_export)) if latest_export else shards
    matches = lake.read(BLOCKLIST_MATCHES, columns=["uid", "source", "kind"])  # what hash lists hit: small
    listed = pa.array(sorted(set(matches["uid"].to_pylist())), pa.string())
    unlisted = sum(
        batch.num_rows - (pc.sum(pc.is_in(batch.column("uid"), listed)).as_py() or 0)
        for batch in _batches(lake, KEPT_PAIRS, ["uid"])
    )
    dedup = _value_counts(lake, DEDUP, "reason")
    curated = _value_counts(lake, CURATED, "variant")
    variants = sorted(curated, key=lambda v: -curated[v])  # nested sets, largest first
    steps = [
        ("html pages", cand.get("html_pages", 0)),
        ("candidate pairs", cand.get("candidates", 0)),
        ("downloaded", imgs.get("images_ok", 0)),
        ("kept (CLIP)", counters.get("kept_pairs", {}).get("kept", 0)),
        ("not on hash lists", unlisted),
        ("after dedup", dedup.get("kept", 0)),
        *[(f"curated {v}", curated[v]) for v in variants],
        ("in shards", int(pc.sum(shard_rows["samples"]).as_py() or 0) if shard_rows.num_rows else 0),
    ]
    failures = {k.removeprefix("failed_"): v for k, v in imgs.items() if k.startswith("failed_")}
    kept, dropped = _histograms(lake, CLIP_SCORES, "similarity", SIMILARITY_BINS, split=threshold)
    per_list = Counter(f"{source}/{kind}" for source, kind in zip(matches["source"].to_pylist(), matches["kind"].to_pylist()))
    curation = {"dedup": dict(sorted(dedup.items())), "blocklist matches": dict(per_list)}
    tags = {tag: _tag_histogram(lake, tag) for tag in TAGS}
    return Funnel(steps, counters, failures, kept, dropped, threshold, shard_rows.num_rows, curation, tags)


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode()


def _plots(funnel: Funnel) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots = []
    fig, ax = plt.subplots(figsize=(7, 3))
    names = [n for n, _ in funnel.steps][::-1]
    ax.barh(names, [c for _, c in funnel.steps][::-1], color="#4C72B0")
    ax.set_title("Funnel")
    plots.append(("Funnel", _png(fig)))
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 3))
    for histogram, label, colour in ((funnel.similarity_dropped, "dropped", "#C44E52"),
                                     (funnel.similarity_kept, "kept", "#55A868")):
        ax.stairs(histogram.counts, histogram.edges, fill=True, alpha=0.7, color=colour,
                  label=f"{label} ({sum(histogram.counts)})")
    ax.axvline(funnel.threshold, color="black", linestyle="--", label=f"threshold {funnel.threshold}")
    ax.set_xlabel("CLIP image–text cosine")
    ax.legend()
    ax.set_title("CLIP similarity")
    plots.append(("CLIP similarity, kept vs dropped", _png(fig)))
    plt.close(fig)

    if any(histogram.counts for histogram in funnel.tags.values()):
        fig, axes = plt.subplots(1, len(funnel.tags), figsize=(9, 2.6))
        for ax, (tag, histogram) in zip(axes, funnel.tags.items()):
            if histogram.counts:
                ax.stairs(histogram.counts, histogram.edges, fill=True, color="#8172B2")
            ax.set_title(tag)
        plots.append(("Tags over the downloaded images", _png(fig)))
        plt.close(fig)

    if funnel.failure_reasons:
        fig, ax = plt.subplots(figsize=(7, 3))
        reasons = sorted(funnel.failure_reasons.items(), key=lambda kv: kv[1])
        ax.barh([k for k, _ in reasons], [v for _, v in reasons], color="#DD8452")
        ax.set_title("Download failure reasons")
        plots.append(("Download failure reasons", _png(fig)))
        plt.close(fig)
    return plots


REPORT = lake_layout.report("funnel.html")


def write_report(funnel: Funnel, lake: Lake) -> str:
    """Publish the HTML report (funnel table, counters, plots inline) in the lake; returns its URI."""
    rows = "".join(f"<tr><td>{html.escape(n)}</td><td>{c:,}</td></tr>" for n, c in funnel.steps)
    counters = "".join(
        f"<h3>{html.escape(stage)}</h3><table>"
        + "".join(f"<tr><td>{html.escape(k)}</td><td>{v:,}</td></tr>" for k, v in sorted(metrics.items()))
        + "</table>"
        for stage, metrics in [*sorted(funnel.counters.items()), *funnel.curation.items()]
    )
    images = "".join(f"<h2>{html.escape(t)}</h2><img src='data:image/png;base64,{b}'>" for t, b in _plots(funnel))
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>pairlake report</title>
<style>body{{font-family:sans-serif;max-width:900px;margin:2em auto}}td{{padding:2px 12px}}
table{{border-collapse:collapse}}tr:nth-child(even){{background:#f3f3f3}}</style></head><body>
<h1>pairlake funnel</h1><p>generated {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}</p>
<table><tr><th>stage</th><th>count</th></tr>{rows}</table>{images}<h2>Counters per stage</h2>{counters}
</body></html>"""
    with lake.publish(REPORT) as fh:
        fh.write(page.encode())
    return lake.uri(REPORT)
