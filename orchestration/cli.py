"""The `pairlake` command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from infra.config import ConfigError, PairlakeConfig, load_config


def _cmd_parse_warc(args: argparse.Namespace, config: PairlakeConfig) -> None:
    from spark_jobs.warc_pairs import write_pairs_parquet

    counts = write_pairs_parquet([str(p) for p in args.files], str(args.out), config.crawl.crawl_id, config.extract)
    print(f"wrote {counts.get('pairs', 0)} pairs to {args.out}")
    for key, value in sorted(counts.items()):
        print(f"  {key:<28} {value:>9,}")


def _cmd_materialize(args: argparse.Namespace, config: PairlakeConfig) -> None:
    from orchestration.report import build_funnel
    from orchestration.runner import ensure_dagster_home, materialize_all
    from infra.delta_store import Lake

    ensure_dagster_home()
    runs = materialize_all(partitions=args.partitions or None)
    print(f"{len(runs)} runs: {', '.join(runs)}")
    print(build_funnel(Lake(config.lake.root), config.clip_threshold()).table())


def _cmd_demo(args: argparse.Namespace, config: PairlakeConfig) -> None:
    from orchestration.demo import run_demo
    from assets.funnel_report import report_path
    from orchestration.resources import PairlakeResource

    funnel = run_demo(config)
    print()
    print(funnel.table())
    print(f"\nreport: {report_path(PairlakeResource()).resolve()}")
    print("see the runs and asset lineage: make ui  (http://127.0.0.1:3000)")


def _cmd_report(args: argparse.Namespace, config: PairlakeConfig) -> None:
    from orchestration.report import build_funnel, write_report
    from infra.delta_store import Lake

    funnel = build_funnel(Lake(config.lake.root), config.clip_threshold())
    print(funnel.table())
    print(f"report: {write_report(funnel, Path(config.lake.root) / 'reports' / 'funnel.html')}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pairlake", description="Build and curate image-text datasets.")
    parser.add_argument("--config", help="a TOML config file (default: $PAIRLAKE_CONFIG or the embedded demo config)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("parse-warc", help="extract (image URL, alt text) pairs from WARC files, no Spark")
    p.add_argument("files", nargs="+", type=Path)
    p.add_argument("--out", required=True, type=Path)
    p.set_defaults(run=_cmd_parse_warc)

    p = sub.add_parser("materialize", help="run the whole asset graph through Dagster")
    p.add_argument("--partitions", nargs="*", help="WARC file names to ingest (default: all)")
    p.set_defaults(run=_cmd_materialize)

    p = sub.add_parser("demo", help="build the demo model and sample crawl, then materialize everything")
    p.set_defaults(run=_cmd_demo)

    p = sub.add_parser("report", help="print the funnel and write the HTML report")
    p.set_defaults(run=_cmd_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.config:
            import os

            from infra.config import CONFIG_ENV

            # The Dagster resource reads the same file: pass it on through the environment.
            os.environ[CONFIG_ENV] = str(Path(args.config).resolve())
        config = load_config(args.config)
        args.run(args, config)
    except ConfigError as exc:
        print(f"pairlake: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # one clear line for the user; the traceback is in the Dagster run logs
        from infra.crawl_source import CrawlSourceError
        from infra.delta_store import LakeError
        from orchestration.runner import RunFailed

        if isinstance(exc, (CrawlSourceError, LakeError, RunFailed, FileNotFoundError)):
            print(f"pairlake: {exc}", file=sys.stderr)
            return 1
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
