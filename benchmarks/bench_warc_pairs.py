"""Benchmark WARC → candidate pairs: pairlake's extract_pairs against a FastWARC + Resiliparse extractor.

Both sides read the same generated Common-Crawl-like .warc.gz (benchmarks/cc_like_crawl.py: ~75 KB
pages with ~37 <img> each, 7% of them in legacy charsets, non-HTML, error and redirect captures) and
write their pairs to a file, each as a whole separate process, so that both pay interpreter start and
imports: pairlake = benchmarks/peer_scripts/warc_pairlake.py (what ``pairlake parse-warc`` does:
extract_pairs, then Parquet), baseline = benchmarks/peer_scripts/warc_baseline.py
under fastwarc/resiliparse 2.0.1 and 1.1.0 (own virtualenvs, benchmarks/peers.py). Runs alternate
(pairlake, 2.0.1, 1.1.0, pairlake, ...) for --repeat rounds; CPU seconds are the kernel's (wait4: user +
system of the whole process). Reported: median CPU and wall per side, pages per CPU-second, the
pairlake/baseline CPU ratio per pin, each side's start cost (the same run on a 1-page file), what
language ID would add were it run on every candidate (pairlake runs it on the kept pairs only, after
the CLIP filter; timed in-process), and precision/recall of each side's pairs against the
generator's ground truth. Prints a table and writes ``benchmarks/results/warc_pairs.json``.

    .venv/bin/python -m benchmarks.bench_warc_pairs [--pages 3000] [--repeat 3] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from benchmarks.cc_like_crawl import GENERATOR_VERSION, CrawlFiles, cached_crawl, load_truth, score
from benchmarks.machine import describe
from benchmarks.peers import peer_env, peer_python, run_measured
from infra.config import ExtractConfig
from spark_jobs.caption_language import detect_languages

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "warc_pairs.json"
SCRIPTS = ROOT / "benchmarks" / "peer_scripts"
PEERS = ("fastwarc-2.0.1", "fastwarc-1.1.0")
SCORING_NOTE = ("Scored as (url, caption) pairs over the whole file against the truth pairs whose caption has "
                "{min}..{max} characters (ExtractConfig defaults). The baseline's raw output gets the same caption "
                "limits and a (url, caption) dedup before scoring (pairlake applies both itself). 'no lazy': pairs "
                "only reachable through data-src/data-lazy-src are left out of recall and precision; 'legacy' / "
                "'utf8': the same on pages in a legacy charset / in UTF-8.")


@dataclass(frozen=True)
class Side:
    name: str
    python: Path
    script: Path
    output_suffix: str

    def command(self, warc: Path, out: Path) -> list[str]:
        return [str(self.python), str(self.script), str(warc), str(out)]


def _sides(peers: tuple[str, ...]) -> list[Side]:
    sides = [Side("pairlake", Path(sys.executable), SCRIPTS / "warc_pairlake.py", ".parquet")]
    sides += [Side(name, peer_python(name), SCRIPTS / "warc_baseline.py", ".jsonl") for name in peers]
    return sides


def _run(side: Side, warc: Path, out: Path) -> dict:
    out.unlink(missing_ok=True)
    measured = run_measured(side.command(warc, out))
    summary = json.loads(measured.stdout.strip().splitlines()[-1])
    return {"cpu_s": round(measured.cpu_s, 3), "wall_s": round(measured.wall_s, 3), **summary}


def _rounds(sides: list[Side], warc: Path, repeat: int, workdir: Path) -> dict[str, list[dict]]:
    """``repeat`` rounds of one run per side, in turn, so that drifts in machine load hit all sides alike."""
    runs: dict[str, list[dict]] = {side.name: [] for side in sides}
    for round_ in range(repeat):
        for side in sides:
            run = _run(side, warc, workdir / f"{side.name}{side.output_suffix}")
            runs[side.name].append(run)
            print(f"  round {round_ + 1}/{repeat} {side.name:15} {run['cpu_s']:8.2f} CPU s {run['wall_s']:8.2f} s",
                  flush=True)
    return runs


def _read_pairs(path: Path) -> list[tuple[str, str, str]]:
    if path.suffix == ".parquet":
        table = pq.read_table(path, columns=["url", "caption", "page_url"])
        return list(zip(*(table.column(name).to_pylist() for name in ("url", "caption", "page_url"))))
    with path.open(encoding="utf-8") as fh:
        return [tuple(json.loads(line)) for line in fh]


def _limit_and_dedup(pairs: list[tuple[str, str, str]], config: ExtractConfig) -> list[tuple[str, str, str]]:
    """pairlake's caption length limits and its dedup on (url, caption), first page kept."""
    kept: dict[tuple[str, str], str] = {}
    for url, caption, page in pairs:
        if config.min_caption_chars <= len(caption) <= config.max_caption_chars:
            kept.setdefault((url, caption), page)
    return [(url, caption, page) for (url, caption), page in kept.items()]


def _language_id_cost(captions: list[str]) -> dict:
    """pairlake's language ID over the distinct captions, timed in this process: what it would cost in
    this stage (pairlake runs it later, on the kept pairs only)."""
    started = time.process_time()
    detect_languages(["warm up the language model"])
    load_s = time.process_time() - started
    distinct = list(dict.fromkeys(captions))
    started = time.process_time()
    detect_languages(distinct)
    return {"load_cpu_s": round(load_s, 3), "cpu_s": round(time.process_time() - started, 3), "captions": len(distinct)}


def _peer_versions(side: Side) -> dict[str, str]:
    packages = ("pairlake", "selectolax", "faust-cchardet", "isal", "pyarrow", "fasttext-predict") \
        if side.name == "pairlake" else ("fastwarc", "resiliparse")
    code = ("import importlib.metadata as m, json, platform; "
            f"print(json.dumps({{'python': platform.python_version(), **{{p: m.version(p) for p in {packages!r}}}}}))")
    return json.loads(subprocess.run([str(side.python), "-c", code], check=True, capture_output=True,
                                     text=True, env=peer_env()).stdout)


def _median(runs: list[dict], key: str) -> float:
    return round(statistics.median(run[key] for run in runs), 3)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=3_000, help="HTML pages (status 200) in the crawl")
    parser.add_argument("--repeat", type=int, default=3, help="rounds of alternating runs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--peers", default=",".join(PEERS), help=f"comma-separated, of {', '.join(PEERS)}")
    args = parser.parse_args(argv)
    peers = tuple(name for name in args.peers.split(",") if name)
    config = ExtractConfig()

    started = time.perf_counter()
    crawl = cached_crawl(args.pages, args.seed)
    generated_s = time.perf_counter() - started
    tiny = cached_crawl(1, args.seed)
    truth = load_truth(crawl.truth)
    sides = _sides(peers)
    versions = {side.name: _peer_versions(side) for side in sides}
    load_before = os.getloadavg()

    with tempfile.TemporaryDirectory(prefix="bench_warc_pairs-") as tmp:
        workdir = Path(tmp)
        print(f"warm-up and start cost: {args.repeat} round(s) on a 1-page file", flush=True)
        for side in sides:
            _run(side, tiny.warc, workdir / f"{side.name}{side.output_suffix}")  # pyc, page cache
        start_runs = _rounds(sides, tiny.warc, args.repeat, workdir)
        print(f"{crawl.warc.name}: {args.repeat} round(s)", flush=True)
        runs = _rounds(sides, crawl.warc, args.repeat, workdir)
        load_after = os.getloadavg()
        outputs = {side.name: _read_pairs(workdir / f"{side.name}{side.output_suffix}") for side in sides}

    results = _results(args, crawl, truth, sides, runs, start_runs, outputs, versions, config)
    results["language_id_on_every_candidate"] = _language_id_cost([caption for _, caption, _ in outputs["pairlake"]])
    results["machine"] = describe(load_before, load_after)
    results["generated_in_s"] = round(generated_s, 1)
    _print_table(results)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {RESULTS.relative_to(ROOT)}")
    return results


def _results(args: argparse.Namespace, crawl: CrawlFiles, truth: list, sides: list[Side], runs: dict,
             start_runs: dict, outputs: dict, versions: dict, config: ExtractConfig) -> dict:
    data = json.loads(crawl.truth.read_text())
    pages = len(truth)
    per_side = {}
    for side in sides:
        raw = outputs[side.name]
        scored = _limit_and_dedup(raw, config)
        cpu, wall = _median(runs[side.name], "cpu_s"), _median(runs[side.name], "wall_s")
        start_cpu = _median(start_runs[side.name], "cpu_s")
        per_side[side.name] = {
            "versions": versions[side.name],
            "cpu_s": cpu,
            "wall_s": wall,
            "pages_per_cpu_s": round(pages / cpu),
            "pages_per_s_wall": round(pages / wall),
            "peak_rss_mb": _median(runs[side.name], "peak_rss_mb"),
            "start": {"cpu_s": start_cpu, "wall_s": _median(start_runs[side.name], "wall_s")},
            "cpu_s_without_start": round(cpu - start_cpu, 3),
            "pages_seen": runs[side.name][-1]["pages"],
            "pairs_raw": len(raw),
            "pairs_scored": len(scored),
            "accuracy": score(scored, truth, config.min_caption_chars, config.max_caption_chars),
            "runs": runs[side.name],
            "start_runs": start_runs[side.name],
        }
    mine = per_side["pairlake"]
    ratios = {
        f"pairlake/{name}": {
            "cpu": round(mine["cpu_s"] / other["cpu_s"], 3),
            "cpu_without_start": round(mine["cpu_s_without_start"] / other["cpu_s_without_start"], 3),
            "wall": round(mine["wall_s"] / other["wall_s"], 3),
        }
        for name, other in per_side.items() if name != "pairlake"
    }
    return {
        "crawl": {
            "file": str(crawl.warc.relative_to(ROOT)) if crawl.warc.is_relative_to(ROOT) else str(crawl.warc),
            "truth": crawl.truth.name,
            "generator_version": GENERATOR_VERSION,
            "seed": args.seed,
            "compressed_mb": round(crawl.warc.stat().st_size / 1e6, 1),
            "html_mb": round(sum(page["bytes"] for page in data["page_truth"]) / 1e6, 1),
            "records": 1 + 3 * data["captures"],
            "captures": data["captures"],
            "html_pages": pages,
            "legacy_pages": sum(page.legacy for page in truth),
            "truth_pairs": sum(len(page.pairs) for page in truth),
        },
        "repeat": args.repeat,
        "method": ("whole processes, run in turn (pairlake, then each baseline pin) per round; CPU = user + system "
                   "from wait4; medians over rounds; start = the same command on a 1-page crawl"),
        "scoring": SCORING_NOTE.format(min=config.min_caption_chars, max=config.max_caption_chars),
        "sides": per_side,
        "ratios": ratios,
    }


def _pct(value: float | None) -> str:
    return "   -" if value is None else f"{100 * value:5.1f}"


def _print_table(r: dict) -> None:
    c = r["crawl"]
    print(f"\n{c['file']}: {c['html_pages']} HTML pages ({c['legacy_pages']} legacy-charset), {c['html_mb']} MB of "
          f"HTML, {c['compressed_mb']} MB gzipped, {c['records']} records, {c['truth_pairs']} truth pairs")
    print(f"median of {r['repeat']} alternating whole-process runs; CPU = user+sys of the process (wait4)")
    print(f"{'side':16}{'CPU s':>8}{'wall s':>8}{'pages/CPU-s':>13}{'peak MB':>9}{'start CPU s':>13}"
          f"{'CPU w/o start':>15}{'pairlake/it CPU':>17}{'(w/o start)':>13}")
    for name, s in r["sides"].items():
        ratio = r["ratios"].get(f"pairlake/{name}")
        ratio_text = f"{ratio['cpu']:>17.2f}{ratio['cpu_without_start']:>13.2f}" if ratio else f"{'-':>17}{'-':>13}"
        print(f"{name:16}{s['cpu_s']:>8.2f}{s['wall_s']:>8.2f}{s['pages_per_cpu_s']:>13}{s['peak_rss_mb']:>9.0f}"
              f"{s['start']['cpu_s']:>13.2f}"
              f"{s['cpu_s_without_start']:>15.2f}{ratio_text}")
    print(f"\naccuracy, % ({r['scoring']})")
    print(f"{'side':16}{'pairs raw':>10}{'scored':>8}   {'P':>5} {'R':>5} | {'no lazy P':>9} {'R':>5} | "
          f"{'legacy P':>8} {'R':>5} | {'utf8 P':>6} {'R':>5}")
    for name, s in r["sides"].items():
        a = s["accuracy"]
        print(f"{name:16}{s['pairs_raw']:>10}{s['pairs_scored']:>8}   {_pct(a['all']['precision'])} "
              f"{_pct(a['all']['recall'])} | {_pct(a['no_lazy']['precision']):>9} {_pct(a['no_lazy']['recall'])} | "
              f"{_pct(a['legacy']['precision']):>8} {_pct(a['legacy']['recall'])} | "
              f"{_pct(a['utf8']['precision']):>6} {_pct(a['utf8']['recall'])}")
    for name, s in r["sides"].items():
        weak = [f"{kind} {_pct(m['recall']).strip()}%" for kind, m in s["accuracy"]["by_kind"].items()
                if m["recall"] is not None and m["recall"] < 0.98]
        if weak:
            print(f"  {name}: no-lazy recall under 98% on {', '.join(weak)}")
    lang = r["language_id_on_every_candidate"]
    print(f"\nlanguage ID, not in these runs (pairlake identifies the kept pairs' languages, after the CLIP "
          f"filter): on every candidate here it would add {lang['load_cpu_s']:.2f} s + {lang['cpu_s']:.2f} CPU-s "
          f"({lang['captions']} distinct captions)")
    m = r["machine"]
    print(f"{m['cpu']}, {m['cores']} cores; load average {m['load_before'][0]} before, {m['load_after'][0]} after")


if __name__ == "__main__":
    main()
