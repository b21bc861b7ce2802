"""The funnel (pages → candidates → downloaded → kept → unblocked → deduplicated → curated variants →
shards) and an HTML report with plots, curation counts and a tag histogram."""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pyarrow.compute as pc

from infra.delta_store import Lake
from infra.tables import BLOCKLIST_MATCHES, CLIP_SCORES, CURATED, DEDUP, IMAGE_TAGS, KEPT_PAIRS, SHARDS, STAGE_STATS

TAGS = ("punsafe", "pwatermark", "aesthetic")


@dataclass
class Funnel:
    steps: list[tuple[str, int]]  # (name, count), in funnel order
    counters: dict[str, dict[str, int]]  # stage -> metric -> value, summed over partitions
    failure_reasons: dict[str, int]
    similarities: list[float]
    threshold: float
    shards: int
    curation: dict[str, dict[str, int]]  # "dedup" -> reason -> pairs, "blocklist matches" -> list -> pairs
    tags: dict[str, list[float]]  # tag -> values over the tagged images

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


def build_funnel(lake: Lake, threshold: float) -> Funnel:
    stats = lake.read(STAGE_STATS)
    counters: dict[str, dict[str, int]] = {}
    for row in stats.to_pylist():
        stage = counters.setdefault(row["stage"], {})
        stage[row["metric"]] = stage.get(row["metric"], 0) + row["value"]
    cand, imgs = counters.get("candidates", {}), counters.get("images", {})
    shards = lake.read(SHARDS)
    latest_export = None
    if shards.num_rows:
        latest_export = max(shards.to_pylist(), key=lambda r: (r["source_version"], r["created_at"]))["export_id"]
    shard_rows = shards.filter(pc.equal(shards["export_id"], latest_export)) if latest_export else shards
    kept = set(lake.read(KEPT_PAIRS, columns=["uid"])["uid"].to_pylist())
    matches = lake.read(BLOCKLIST_MATCHES, columns=["uid", "source", "kind"])
    dedup = lake.read(DEDUP, columns=["reason"])["reason"].to_pylist()
    curated = lake.read(CURATED, columns=["variant"])["variant"].to_pylist()
    variants = sorted(set(curated), key=lambda v: -curated.count(v))  # nested sets, largest first
    steps = [
        ("html pages", cand.get("html_pages", 0)),
        ("candidate pairs", cand.get("candidates", 0)),
        ("downloaded", imgs.get("images_ok", 0)),
        ("kept (CLIP)", counters.get("kept_pairs", {}).get("kept", 0)),
        ("not on hash lists", len(kept - set(matches["uid"].to_pylist()))),
        ("after dedup", dedup.count("kept")),
        *[(f"curated {v}", curated.count(v)) for v in variants],
        ("in shards", int(pc.sum(shard_rows["samples"]).as_py() or 0) if shard_rows.num_rows else 0),
    ]
    failures = {k.removeprefix("failed_"): v for k, v in imgs.items() if k.startswith("failed_")}
    sims = lake.read(CLIP_SCORES, columns=["similarity"]).column("similarity").to_pylist()
    per_list: dict[str, int] = {}
    for source, kind in zip(matches["source"].to_pylist(), matches["kind"].to_pylist()):
        per_list[f"{source}/{kind}"] = per_list.get(f"{source}/{kind}", 0) + 1
    curation = {"dedup": {r: dedup.count(r) for r in sorted(set(dedup))}, "blocklist matches": per_list}
    tags = lake.read(IMAGE_TAGS, columns=list(TAGS))
    tag_values = {t: [v for v in tags[t].to_pylist() if v is not None] for t in TAGS}
    return Funnel(steps, counters, failures, sims, threshold, shard_rows.num_rows, curation, tag_values)


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
    kept = [s for s in funnel.similarities if s > funnel.threshold]
    dropped = [s for s in funnel.similarities if s <= funnel.threshold]
    bins = [i / 50 - 1 for i in range(101)]
    ax.hist(dropped, bins=bins, alpha=0.7, label=f"dropped ({len(dropped)})", color="#C44E52")
    ax.hist(kept, bins=bins, alpha=0.7, label=f"kept ({len(kept)})", color="#55A868")
    ax.axvline(funnel.threshold, color="black", linestyle="--", label=f"threshold {funnel.threshold}")
    ax.set_xlabel("CLIP image–text cosine")
    ax.legend()
    ax.set_title("CLIP similarity")
    plots.append(("CLIP similarity, kept vs dropped", _png(fig)))
    plt.close(fig)

    if any(funnel.tags.values()):
        fig, axes = plt.subplots(1, len(funnel.tags), figsize=(9, 2.6))
        for ax, (tag, values) in zip(axes, funnel.tags.items()):
            ax.hist(values, bins=20, color="#8172B2")
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


def write_report(funnel: Funnel, path: Path) -> Path:
    """Write the HTML report (funnel table, counters, plots inline) to ``path``."""
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
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page)
    return path
