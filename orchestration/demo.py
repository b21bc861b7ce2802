"""The demo: build what cannot be downloaded (model, crawl), serve the images, run the graph, with
the lake in a local folder or (``make demo-s3``) in a bucket of a local S3-compatible server.

Everything here is cached: the demo model is trained once (rebuilt when its training code
changes) and the sample crawl is regenerated only when missing, made for another address, or made
by older generator code.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import dagster as dg

from gpu_jobs.demo_heads import ensure_demo_heads
from gpu_jobs.demo_model import ensure_demo_model
from infra.config import PairlakeConfig, load_config
from infra.delta_store import Lake
from infra.image_server import ImageServer, load_site
from infra.s3_server import LocalS3Server
from infra.sample_crawl import generate_sample_crawl, generator_fingerprint
from orchestration import report
from orchestration.blocklist_import import import_hash_list
from orchestration.runner import ensure_dagster_home, materialize_all


def demo_base_url(config: PairlakeConfig) -> str:
    return f"http://127.0.0.1:{config.demo.server_port}"


def ensure_sample_crawl(config: PairlakeConfig) -> Path:
    """The sample crawl's folder, generated when missing, or made for another server address or
    seed, or by older generator code."""
    crawl_dir = Path(config.demo.crawl_dir)
    expected = crawl_dir / "expected.json"
    current = json.loads(expected.read_text()) if expected.exists() else {}
    wanted = {"base_url": demo_base_url(config), "seed": config.demo.seed, "generator": generator_fingerprint()}
    if any(current.get(key) != value for key, value in wanted.items()):
        generate_sample_crawl(crawl_dir, demo_base_url(config), config.demo.pages, config.demo.seed)
    return crawl_dir


def prepare_demo(config: PairlakeConfig) -> Path:
    """Train (or reuse) the demo model and write (or reuse) the sample crawl; returns the crawl dir."""
    checkpoint = ensure_demo_model(Path(config.demo.model_dir), config.demo.seed, progress=True)
    ensure_demo_heads(Path(config.demo.model_dir), config.demo.seed)
    if config.clip.checkpoint and Path(config.clip.checkpoint).resolve() != checkpoint.resolve():
        print(f"note: clip.checkpoint is {config.clip.checkpoint}, the demo model is at {checkpoint}")
    return ensure_sample_crawl(config)


def import_demo_blocklists(config: PairlakeConfig, crawl_dir: Path, instance: dg.DagsterInstance | None = None) -> None:
    """The sample crawl's hash lists, imported as a user would (before ingestion, so that the URL
    list stops its images from being requested at all)."""
    lists = json.loads((crawl_dir / "expected.json").read_text())["blocklists"]
    for name, kind in sorted(lists.items()):
        import_hash_list(config, crawl_dir / "blocklists" / name, f"demo-{Path(name).stem}", kind, instance=instance)


def run_demo(config: PairlakeConfig) -> report.Funnel:
    ensure_dagster_home()
    crawl_dir = prepare_demo(config)
    import_demo_blocklists(config, crawl_dir)
    with ImageServer(load_site(crawl_dir / "site"), port=config.demo.server_port) as server:
        print(f"serving the sample crawl's images at {server.url}")
        materialize_all()
    return report.build_funnel(Lake.of(config.lake), config.clip_threshold())


@contextlib.contextmanager
def demo_lake(config: PairlakeConfig, store: str) -> Iterator[PairlakeConfig]:
    """The demo's config with its lake where ``store`` says: "folder" (as configured) or "s3", a
    bucket of a local S3 server that runs until the block ends. The lake's settings and the
    server's credentials go into this process's environment, where the Dagster runs (and their
    Spark executors) read them as any user's would."""
    if store == "folder":
        yield config
        return
    with LocalS3Server(config.demo.s3_dir, port=config.demo.s3_port) as endpoint:
        endpoint.create_bucket(config.demo.s3_bucket)
        os.environ.update(endpoint.pairlake_environment(f"s3://{config.demo.s3_bucket}/lake"))
        print(f"the lake is in s3://{config.demo.s3_bucket}/lake on a local S3 server at {endpoint.url} "
              f"(its data in {config.demo.s3_dir})")
        yield load_config()
