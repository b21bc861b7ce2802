"""The `pairlake` command line."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from infra.config import CONFIG_ENV, PROFILE_ENV, InputError, PairlakeConfig, effective_config, format_config

# Errors the CLI reports as one line (rc 1), by module and class: matched without importing the
# modules, so an early error never pays for torch, faiss or Spark.
_ONE_LINE_ERRORS = (
    ("infra.crawl_source", "CrawlSourceError"), ("infra.delta_store", "LakeError"),
    ("orchestration.runner", "RunFailed"), ("gpu_jobs.knn_index", "IndexLoadError"),
)


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
    print(build_funnel(Lake.of(config.lake), config.clip_threshold()).table())


def _cmd_s3_server(args: argparse.Namespace, config: PairlakeConfig) -> None:
    from infra.s3_server import serve

    serve(config.demo.s3_dir, config.demo.s3_port, config.demo.s3_bucket)


def _cmd_demo(args: argparse.Namespace, config: PairlakeConfig) -> None:
    from orchestration.demo import demo_lake, run_demo
    from orchestration.report import REPORT
    from infra.delta_store import Lake

    with demo_lake(config, args.store) as config:
        funnel = run_demo(config)
        print()
        print(funnel.table())
        manifest = _index_manifest(config)
        last = _latest_release(config)
    lake = Lake.of(config.lake)
    captions = f", captions {manifest['text_recall_at_10']}" if "text_recall_at_10" in manifest else ""
    print(f"\nkNN index ({manifest['variant']}): {manifest['factory']} over {manifest['vectors']} images, "
          f"recall@10 {manifest['recall_at_10']}{captions}; try: .venv/bin/pairlake --profile demo search \"a red circle\"")
    if last is not None:
        print(f"release {last['release']} v{last['version']} ({last['kind']}): {last['samples']} samples in "
              f"{last['shards']} shards at {lake.uri_of(last['path'])}")
    print("opt out an image: .venv/bin/pairlake --profile demo optout submit --url URL --requester WHO --reason WHY; "
          "then make ui (the sensor applies it) or .venv/bin/pairlake --profile demo optout apply")
    print(f"report: {lake.uri_of(REPORT)}")
    if args.store == "s3":
        print("the lake's store stopped with the demo: make s3-server serves it again and prints the variables "
              "that point the commands above at it")
    print("search the index and see the runs: make ui  (search http://127.0.0.1:1234/, Dagster http://127.0.0.1:3000)")


def _latest_release(config: PairlakeConfig) -> dict | None:
    from infra.delta_store import Lake
    from spark_jobs.release import latest

    return latest(Lake.of(config.lake), config.release.name)


def _index_manifest(config: PairlakeConfig) -> dict:
    from gpu_jobs.knn_index import index_folder, load_index
    from infra.delta_store import Lake

    return load_index(index_folder(Lake.of(config.lake), config.index.variant))[1]


def _cmd_report(args: argparse.Namespace, config: PairlakeConfig) -> None:
    from orchestration.report import build_funnel, write_report
    from infra.delta_store import Lake

    funnel = build_funnel(Lake.of(config.lake), config.clip_threshold())
    print(funnel.table())
    print(f"report: {write_report(funnel, Lake.of(config.lake))}")


def _cmd_blocklist_import(args: argparse.Namespace, config: PairlakeConfig) -> None:
    from datetime import date

    from orchestration.blocklist_import import import_hash_list

    try:
        list_date = date.fromisoformat(args.date) if args.date else None
    except ValueError:
        raise InputError(f"--date must be YYYY-MM-DD, got {args.date!r}") from None
    version, imported = import_hash_list(config, args.file, args.source, args.kind, list_date)
    print(f"imported {imported} {args.kind} digests as {args.source!r} (blocklist v{version})")


# Checked before the search stack (torch, faiss) is imported: a bad argument answers at once.
MAX_QUERY_CHARS = 1000


def _cmd_search(args: argparse.Namespace, config: PairlakeConfig) -> None:
    if bool(args.text) == bool(args.image):
        raise InputError("search needs a text query or --image FILE (one of them)")
    if not 1 <= args.k <= config.index.max_k:
        raise InputError(f"-k must be between 1 and {config.index.max_k:,} (index.max_k), got {args.k}")
    if len(args.text) > MAX_QUERY_CHARS:
        raise InputError(f"the text query is {len(args.text):,} characters; at most {MAX_QUERY_CHARS:,}")
    image = _read_capped(args.image, config.download.max_body_bytes) if args.image else b""

    from gpu_jobs.retrieval import LakeIndexes, QueryEncoder, SearchOptions
    from spark_jobs.download.resizer import ImageRejected
    from infra.delta_store import Lake

    index = LakeIndexes(Lake.of(config.lake), config.clip).get(args.variant or config.index.variant)
    encoder = QueryEncoder(config.clip, config.download)
    if args.image:
        try:
            query = encoder.image(image)
        except ImageRejected as exc:
            raise InputError(f"cannot search by {args.image}: {exc}") from None
    else:
        query = encoder.text(args.text)
    print(f"{'similarity':>10}  {'uid':<32}  caption / url")
    for hit in index.search(query, SearchOptions(num_result_ids=args.k, num_images=args.k), args.over):
        row = hit.metadata
        print(f"{hit.similarity:>10.4f}  {row['uid']:<32}  {row['caption']}\n{'':>44}{row['url']}")


def _cmd_serve(args: argparse.Namespace, config: PairlakeConfig) -> None:
    from orchestration.search_server import serve

    serve(config, args.host, args.port)


def _read_capped(path: Path, cap: int) -> bytes:
    """A regular file's bytes, refused when larger than ``cap`` (never read a device or a FIFO)."""
    if not path.is_file():
        raise InputError(f"{path} is not a regular file")
    if path.stat().st_size > cap:
        raise InputError(f"{path} is {path.stat().st_size:,} bytes; at most {cap:,} (download.max_body_bytes)")
    return path.read_bytes()


def _cmd_train_head(args: argparse.Namespace, config: PairlakeConfig) -> None:
    from gpu_jobs import head_training

    report, path = head_training.train_registered_head(
        config, args.name, args.labels, layout=args.layout, holdout=args.holdout, seed=args.seed
    )
    print(f"trained head {args.name!r} ({report.layout}) on {report.n_train} rows, {report.positives} labelled 1")
    print(f"held-out accuracy {report.held_out_accuracy:.3f} on {report.n_holdout} rows")
    print(f"registered as {path}; use it with [tags.<tag>] head = \"{args.name}\"")


def _cmd_lineage(args: argparse.Namespace, config: PairlakeConfig) -> None:
    import json

    from infra.delta_store import Lake
    from orchestration.lineage import describe, format_lineage

    info = describe(Lake.of(config.lake), args.uid)
    print(json.dumps(info, indent=2, default=str) if args.json else format_lineage(info))


def _cmd_optout_submit(args: argparse.Namespace, config: PairlakeConfig) -> None:
    from orchestration.optout_requests import inbox_dir, submit_request

    given = {kind: value for kind, value in (("url", args.url), ("url_prefix", args.url_prefix), ("domain", args.domain),
                                             ("sha256", args.sha256), ("md5", args.md5), ("image", args.image)) if value}
    if len(given) != 1:
        raise InputError("name exactly one of --url, --url-prefix, --domain, --sha256, --md5, --image")
    (kind, value), = given.items()
    data = {"kind": kind, "requester": args.requester, "reason": args.reason}
    if args.id:
        data["request_id"] = args.id
    if kind != "image":
        data["value"] = value
    if args.min_similarity is not None:
        data["min_similarity"] = args.min_similarity
    name = submit_request(config, data, Path(value) if kind == "image" else None)
    print(f"request {Path(name).stem} written to {inbox_dir(config).file(name)}")
    print("the optout_inbox_sensor applies it (make ui); or now: .venv/bin/pairlake optout apply")


def _cmd_optout_apply(args: argparse.Namespace, config: PairlakeConfig) -> None:
    from orchestration.optout_requests import removal_lease
    from orchestration.runner import ensure_dagster_home, tick_sensor

    # Held for the whole command (the runs take it again in this process): a second `optout apply`
    # waits, or says in one line who is applying, before it touches the Dagster instance.
    with removal_lease(config, "pairlake optout apply"):
        ensure_dagster_home()
        runs = tick_sensor("optout_inbox_sensor")
    print(f"{len(runs)} request runs: {', '.join(runs) or 'none pending'}")
    _cmd_optout_status(argparse.Namespace(request_id=None, limit=len(runs) or 5), config)


def _cmd_optout_preview(args: argparse.Namespace, config: PairlakeConfig) -> None:
    import json

    from orchestration.optout_requests import preview_request

    shown = preview_request(config, args.request_id)
    if args.json:
        print(json.dumps(shown, indent=2, default=str))
        return
    print(f"request {shown['request_id']} ({shown['status']}, {shown['kind']}"
          f"{', ' + shown['target'] if shown.get('target') else ''})")
    if "matched" in shown:
        print(f"  matches {shown['matched']:,} of {shown['lake_pairs']:,} pairs ({shown['fraction']:.4%})")
        print(f"  matched by: {', '.join(f'{k} {v}' for k, v in shown['matched_by'].items()) or '-'}")
        print(f"  hosts: {', '.join(f'{k} {v}' for k, v in shown['hosts'].items()) or '-'}")
        print(f"  first uids: {' '.join(shown['uids'][:5]) or '-'}{' ...' if len(shown['uids']) > 5 else ''}")
    reason = shown.get("would_hold") or shown.get("hold_reason")
    if reason:
        print(f"  needs confirmation: {reason}")
        print(f"  confirm with: .venv/bin/pairlake optout confirm {shown['request_id']} --by WHO")


def _cmd_optout_confirm(args: argparse.Namespace, config: PairlakeConfig) -> None:
    from orchestration.optout_requests import held_dir, removal_lease
    from orchestration.runner import ensure_dagster_home, execute_job
    from spark_jobs.optout import check_request_id

    name = f"{check_request_id(args.request_id)}.json"
    if not held_dir(config).exists(name):
        raise InputError(f"no held request {args.request_id} (see: pairlake optout status)")
    if not args.by.strip():
        raise InputError("--by must say who confirms")
    with removal_lease(config, f"pairlake optout confirm {args.request_id}"):
        ensure_dagster_home()
        run = execute_job("apply_optout", run_config={"ops": {"optout_requests": {"config": {
            "request_file": name, "confirm": True, "confirmed_by": args.by.strip()}}}},
            tags={"pairlake/request_file": name, "pairlake/confirmed_by": args.by.strip()})
    print(f"run {run}: request {args.request_id} confirmed by {args.by.strip()}")
    _cmd_optout_status(argparse.Namespace(request_id=args.request_id, limit=1), config)


def _cmd_optout_status(args: argparse.Namespace, config: PairlakeConfig) -> None:
    import json

    from orchestration.optout_requests import request_status

    rows = request_status(config, args.request_id)[: args.limit]
    if not rows:
        raise InputError(f"no request {args.request_id!r}" if args.request_id else "no opt-out requests yet")
    print(f"{'request':<28} {'status':<18} {'kind':<10} {'matched':>7}  {'when':<25} rows deleted / why")
    for row in rows:
        when = row["recorded_at"] or row["applied_at"] or row["received_at"]
        detail = row["rejection"] or row["hold_reason"] or ", ".join(
            f"{k} {v}" for k, v in json.loads(row["rows_deleted"] or "{}").items())
        print(f"{row['request_id']:<28} {row['status']:<18} {row['kind'] or '-':<10} {row['matched'] or 0:>7}  "
              f"{when:%Y-%m-%d %H:%M:%S %Z}   {detail}")


def _cmd_release_run(args: argparse.Namespace, config: PairlakeConfig) -> None:
    from infra.delta_store import Lake
    from orchestration.runner import ensure_dagster_home, execute_job

    ensure_dagster_home()
    mode = "rerelease" if args.release_command == "rerelease" else "auto"
    run_config = {"ops": {"release": {"config": {"mode": mode, "confirmed_by": args.confirmed_by}}}}
    run = execute_job("rerelease" if mode == "rerelease" else "export_release", run_config=run_config)
    last = _latest_release(config)
    if last is None:
        raise InputError(f"release {config.release.name} has no version (is curated empty?)")
    print(f"run {run}: {config.release.name} v{last['version']} ({last['kind']}), {last['samples']} samples in "
          f"{last['shards']} shards, {last['removed']} removed / {last['added']} added since the previous version")
    print(f"  {Lake.of(config.lake).uri_of(last['path'])}")


def _cmd_release_list(args: argparse.Namespace, config: PairlakeConfig) -> None:
    from infra.delta_store import Lake
    from infra.tables import RELEASES

    rows = sorted(Lake.of(config.lake).read(RELEASES).to_pylist(), key=lambda r: (r["release"], r["version"]))
    if not rows:
        raise InputError("no releases yet: .venv/bin/pairlake release create")
    print(f"{'release':<24} {'version':>7} {'kind':<10} {'samples':>8} {'shards':>6} {'removed':>7} {'added':>6}  created")
    for r in rows:
        print(f"{r['release']:<24} {r['version']:>7} {r['kind']:<10} {r['samples']:>8} {r['shards']:>6} "
              f"{r['removed']:>7} {r['added']:>6}  {r['created_at']:%Y-%m-%d %H:%M:%S}")


def _cmd_release_apply_diff(args: argparse.Namespace, config: PairlakeConfig) -> None:
    from infra.delta_store import Lake
    from spark_jobs.release import DIFF, apply_diff

    diff = args.diff
    if "://" in diff:  # the new version in the lake's bucket, read with the lake's credentials
        lake = Lake.of(config.lake)
        if not diff.startswith(lake.root + "/"):
            raise InputError(f"{diff} is not in the lake ({lake.root}): give a local path or a version under the root")
        diff = lake.folder(diff[len(lake.root) + 1:].rstrip("/").removesuffix(f"/{DIFF}"))
    done = apply_diff(diff, args.shards, args.out)
    print(f"rewrote {len(done)} shards ({', '.join(done) or 'none'}); every checksum matches the new version")


def _cmd_vacuum(args: argparse.Namespace, config: PairlakeConfig) -> None:
    import uuid

    from infra.delta_store import Lake, Lineage
    from infra.purge import vacuum_history
    from infra.tables import ALL_TABLES

    lake, hours = Lake.of(config.lake), config.lake.history_retention_hours
    lineage = Lineage(run_id=f"vacuum-{uuid.uuid4().hex[:12]}")
    for name, spec in ALL_TABLES.items():
        print(f"{name:<20} {vacuum_history(lake, spec, hours, lineage):>6} files older than {hours} h deleted")


def _cmd_optimize(args: argparse.Namespace, config: PairlakeConfig) -> None:
    import uuid

    from infra.delta_store import Lineage
    from infra.tables import ALL_TABLES
    from orchestration.upkeep import optimize_lake

    unknown = sorted(set(args.table) - set(ALL_TABLES))
    if unknown:
        raise InputError(f"unknown table(s) {', '.join(unknown)}; known: {', '.join(sorted(ALL_TABLES))}")

    def report(done) -> None:
        change = f"v{done.version}" if done.version is not None else "nothing to compact"
        print(f"{done.table:<20} {done.files_before:>6} files -> {done.files_after:>6}  {change}", flush=True)

    optimize_lake(config, Lineage(run_id=f"optimize-{uuid.uuid4().hex[:12]}"), args.table, report)


def _cmd_config_show(args: argparse.Namespace, config: PairlakeConfig) -> None:
    print(format_config(config, args.sources), end="")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pairlake", description="Build and curate image-text datasets.")
    parser.add_argument("--config", help="a TOML config file (default: $PAIRLAKE_CONFIG); it overrides the profile")
    parser.add_argument("--profile", help="a config profile from infra/configs (demo, production; default: "
                                          "$PAIRLAKE_PROFILE, else only the embedded production-safe defaults)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("parse-warc", help="extract (image URL, alt text) pairs from WARC files, no Spark")
    p.add_argument("files", nargs="+", type=Path)
    p.add_argument("--out", required=True, type=Path)
    p.set_defaults(run=_cmd_parse_warc)

    p = sub.add_parser("materialize", help="run the whole asset graph through Dagster")
    p.add_argument("--partitions", nargs="*", help="WARC file names to ingest (default: all)")
    p.set_defaults(run=_cmd_materialize)

    p = sub.add_parser("s3-server", help="serve the demo's local S3 store (demo.s3_*) until Ctrl-C")
    p.set_defaults(run=_cmd_s3_server)

    p = sub.add_parser("demo", help="build the demo model and sample crawl, then materialize everything")
    p.add_argument("--store", choices=("folder", "s3"), default="folder",
                   help="where the lake goes: the configured folder, or a bucket of a local S3 server (make demo-s3)")
    p.set_defaults(run=_cmd_demo)

    p = sub.add_parser("blocklist", help="hash-list blocklists (Re-LAION style)")
    block = p.add_subparsers(dest="blocklist_command", required=True)
    p = block.add_parser("import", help="import a hash list (plain text or CSV); replaces the source's earlier import")
    p.add_argument("file", type=Path)
    p.add_argument("--source", required=True, help="the list's name, e.g. iwf-2024-08")
    p.add_argument("--kind", required=True, help="image-md5, image-sha1, image-sha256, url-md5, url-sha1 or url-sha256")
    p.add_argument("--date", help="the list's date, YYYY-MM-DD (default: today)")
    p.set_defaults(run=_cmd_blocklist_import)

    p = sub.add_parser("search", help="text -> image (or --image FILE: image -> image) search of the kNN index")
    p.add_argument("text", nargs="?", default="")
    p.add_argument("--image", type=Path, help="search by this image instead of text")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--variant", help="curated variant (default: index.variant)")
    p.add_argument("--over", choices=("image", "text"), default="image",
                   help="search the image embeddings (default) or the caption embeddings")
    p.set_defaults(run=_cmd_search)

    p = sub.add_parser("serve", help="the search service (clip-retrieval's back-end API) and its web UI, until Ctrl-C")
    p.add_argument("--host", help="address to bind (default: search.host, 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default: search.port, 1234)")
    p.set_defaults(run=_cmd_serve)

    p = sub.add_parser("train-head", help="fit a tag head on stored embeddings from labelled uids, and register it")
    p.add_argument("name")
    p.add_argument("--labels", required=True, type=Path, help="CSV with columns uid,label (label 0 or 1)")
    p.add_argument("--layout", default="linear", help="linear or mlp")
    p.add_argument("--holdout", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=_cmd_train_head)

    p = sub.add_parser("lineage", help="where a sample came from and where it went: tables, releases, removal")
    p.add_argument("uid")
    p.add_argument("--json", action="store_true", help="print the answer as JSON")
    p.set_defaults(run=_cmd_lineage)

    p = sub.add_parser("optout", help="opt-out requests: submit, apply, status")
    opt = p.add_subparsers(dest="optout_command", required=True)
    p = opt.add_parser("submit", help="validate a removal request and put it in the inbox")
    p.add_argument("--url", help="an exact image URL")
    p.add_argument("--url-prefix", help="every image URL starting with this")
    p.add_argument("--domain", help="every image on this host and its subdomains")
    p.add_argument("--sha256", help="sha256 of the original image bytes")
    p.add_argument("--md5", help="md5 of the original image bytes")
    p.add_argument("--image", help="an example image file: removes its near-duplicates too")
    p.add_argument("--min-similarity", type=float, help="for --image (default: optout.min_similarity)")
    p.add_argument("--requester", required=True, help="who asked (a ticket or contact reference)")
    p.add_argument("--reason", required=True)
    p.add_argument("--id", help="request id (default: generated)")
    p.set_defaults(run=_cmd_optout_submit)
    p = opt.add_parser("apply", help="apply the inbox now, as the sensor would (one Dagster run per request)")
    p.set_defaults(run=_cmd_optout_apply)
    p = opt.add_parser("preview", help="what a request would remove (or did): counts, share of the lake, hosts")
    p.add_argument("request_id")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=_cmd_optout_preview)
    p = opt.add_parser("confirm", help="apply a request held as needs_confirmation (over-broad)")
    p.add_argument("request_id")
    p.add_argument("--by", required=True, help="who looked at the preview and confirms it")
    p.set_defaults(run=_cmd_optout_confirm)
    p = opt.add_parser("status", help="requests with their status and what was removed")
    p.add_argument("request_id", nargs="?")
    p.add_argument("--limit", type=int, default=50)
    p.set_defaults(run=_cmd_optout_status)

    p = sub.add_parser("release", help="versioned releases and Re-LAION-style re-releases")
    rel = p.add_subparsers(dest="release_command", required=True)
    for name, text in (("create", "curate and make the next version (a snapshot, or a re-release if samples only left)"),
                       ("rerelease", "the previous version minus every removal since, with a diff")):
        p = rel.add_parser(name, help=text)
        p.add_argument("--confirmed-by", default="", metavar="WHO",
                       help="confirm a version that drops more than release.max_auto_drop_fraction")
        p.set_defaults(run=_cmd_release_run)
    p = rel.add_parser("list", help="every version with its counts")
    p.set_defaults(run=_cmd_release_list)
    p = rel.add_parser("apply-diff", help="clean a copy of the previous version's shards with a published diff")
    p.add_argument("diff", help="diff.json or the new version's folder (a local path, or its s3:// URI in the lake)")
    p.add_argument("shards", type=Path, help="folder holding the previous version's shards")
    p.add_argument("--out", type=Path, help="write cleaned shards here instead of in place")
    p.set_defaults(run=_cmd_release_apply_diff)

    p = sub.add_parser("vacuum", help="delete table files older than lake.history_retention_hours (ordinary history)")
    p.set_defaults(run=_cmd_vacuum)

    p = sub.add_parser("optimize", help="compact every table's small files into files of lake.compact_target_mb")
    p.add_argument("--table", action="append", default=[], help="only this table (repeatable)")
    p.set_defaults(run=_cmd_optimize)
    p = sub.add_parser("config", help="the effective configuration")
    cfg = p.add_subparsers(dest="config_command", required=True)
    p = cfg.add_parser("show", help="print the effective config as TOML, each value with where it came from")
    p.set_defaults(run=_cmd_config_show)

    p = sub.add_parser("report", help="print the funnel and write the HTML report")
    p.set_defaults(run=_cmd_report)
    return parser


def _is_one_line_error(exc: Exception) -> bool:
    if isinstance(exc, OSError):  # a missing, unreadable or read-only path: the message names it
        return True
    kinds = [getattr(sys.modules.get(module), name, None) for module, name in _ONE_LINE_ERRORS]
    return isinstance(exc, tuple(k for k in kinds if isinstance(k, type)))


def _os_error_line(exc: OSError) -> str:
    if exc.strerror and exc.filename:
        return f"{exc.strerror}: {exc.filename}"
    return str(exc)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        # The Dagster resource reads the same config: pass it on through the environment.
        if args.command == "demo":
            args.profile = "demo"  # the demo is the one command that applies its profile itself
        if args.profile:
            os.environ[PROFILE_ENV] = args.profile
        if args.config:
            os.environ[CONFIG_ENV] = str(Path(args.config).resolve())
        config, sources = effective_config(args.config)
        args.sources = sources
        args.run(args, config)
    except InputError as exc:
        print(f"pairlake: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # one clear line for the user; the traceback is in the Dagster run logs
        if _is_one_line_error(exc):
            print(f"pairlake: {_os_error_line(exc) if isinstance(exc, OSError) else exc}", file=sys.stderr)
            return 1
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
