"""WARC files streamed over HTTP and from a bucket: sample-crawl WARCs served by a real http.server on 127.0.0.1 that
drops connections, stalls and answers 5xx on cue; an unreadable file fails its partition only."""

from __future__ import annotations

import dataclasses
import gzip
import threading
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import dagster as dg
import pyarrow as pa
import pytest

from assets.candidates import candidates
from infra.config import ConfigError, CrawlConfig, ExtractConfig, load_config
from infra.crawl_source import WarcFile, list_warc_files
from infra.delta_store import Lake, Lineage
from infra.lake_storage import filesystem
from infra.sample_crawl import SampleCrawl, generate_sample_crawl
from infra.tables import CANDIDATES, WARC_FILES, WARC_REJECTS
from orchestration.resources import PairlakeResource
from spark_jobs.candidates_job import build_candidates
from spark_jobs.warc_pairs import extract_pairs

CRAWL_ID = "CC-TEST"
FAST = ExtractConfig(read_retries=2, read_backoff_s=0.01, read_timeout_s=10.0)
STALL_S = 3.0


class _Handler(BaseHTTPRequestHandler):
    server: WarcServer

    def do_GET(self) -> None:
        server = self.server
        asked = self.headers.get("Range")
        server.requests.append((self.path, asked))
        script = server.faults.get(self.path)
        fault = script.pop(0) if script else None
        body = server.files.get(self.path)
        if body is None or fault in ("429", "503"):
            self.send_error(404 if body is None else int(fault))
            return
        ranged = asked is not None and server.honour_range
        start = int(asked.removeprefix("bytes=").removesuffix("-")) if ranged else 0
        self.send_response(206 if ranged else 200)
        if ranged:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        part = body[start:]
        if fault is None:
            self.wfile.write(part)
            return
        self.wfile.write(part[: len(part) // 2])  # "drop" or "stall": half the body, then trouble
        if fault == "stall":
            time.sleep(STALL_S)
        self.close_connection = True

    def log_message(self, format: str, *args: object) -> None:
        pass


class WarcServer(ThreadingHTTPServer):
    """Serves ``files`` (URL path -> bytes) with Range requests (206), or ignoring them (200) when
    ``honour_range`` is false. ``faults[path]`` is consumed one entry per request: "429" or "503"
    answer that status; "drop" sends half the body and closes; "stall" sends half and goes silent.
    ``requests`` records (path, Range header) per request."""

    daemon_threads = True

    def __init__(self, files: dict[str, bytes], honour_range: bool = True) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files = dict(files)
        self.honour_range = honour_range
        self.faults: dict[str, list[str]] = {}
        self.requests: list[tuple[str, str | None]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def __enter__(self) -> WarcServer:
        threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown()
        self.server_close()


@pytest.fixture(scope="module")
def crawl(tmp_path_factory) -> SampleCrawl:
    return generate_sample_crawl(tmp_path_factory.mktemp("crawl"), "http://127.0.0.1:9", pages=24, seed=7, warc_files=3)


@pytest.mark.parametrize(
    "faults, honour_range, config, ranges",
    [
        ((), True, FAST, [None]),
        (("drop",), True, FAST, [None, "bytes={half}-"]),
        (("drop",), False, FAST, [None, "bytes={half}-"]),  # the server resends it all: the reader skips
        (("503", "429"), True, FAST, [None, None, None]),
        (("stall",), True, ExtractConfig(read_retries=2, read_backoff_s=0.01, read_timeout_s=0.5), None),
    ],
    ids=["clean", "dropped-resumed", "dropped-range-ignored", "503-429", "stalled"],
)
def test_streamed_over_http_the_pairs_are_those_of_the_local_file(crawl, faults, honour_range, config, ranges):
    path = crawl.warcs[0]
    body = path.read_bytes()
    local = extract_pairs(str(path), path.name, CRAWL_ID, FAST)
    with WarcServer({f"/{path.name}": body}, honour_range) as server:
        server.faults[f"/{path.name}"] = list(faults)
        streamed = extract_pairs(f"{server.url}/{path.name}", path.name, CRAWL_ID, config)
    assert local.pairs.num_rows > 0
    assert streamed.pairs.equals(local.pairs) and streamed.rejects.equals(local.rejects)
    assert streamed.counts == local.counts
    asked = [r for _, r in server.requests]
    if ranges is None:  # a stall times out before the reader got any bytes: asked again from the start
        assert len(asked) >= 2 and asked[0] is None
    else:
        assert asked == [r and r.format(half=len(body) // 2) for r in ranges]


def _tables(lake: Lake) -> dict[str, list[dict]]:
    return {
        spec.name: sorted(lake.read(spec).to_pylist(), key=lambda r: (r["warc_file"], r["record_offset"], str(r)))
        for spec in (CANDIDATES, WARC_REJECTS)
    }


def test_an_unreadable_file_fails_its_partition_only_and_a_rerun_heals_it(spark, crawl, tmp_path, monkeypatch):
    monkeypatch.delenv("PAIRLAKE_PROFILE", raising=False)
    lake = Lake(str(tmp_path / "lake"))
    missing, flaky, good = (p.name for p in crawl.warcs)
    with WarcServer({f"/{p.name}": p.read_bytes() for p in crawl.warcs}) as server:
        files = [WarcFile(p.name, f"{server.url}/{p.name}", None) for p in crawl.warcs]
        clean = build_candidates(spark, lake, files, CRAWL_ID, FAST, Lineage())
        assert not clean.failed and sorted(clean.counts) == [missing, flaky, good]
        stored = _tables(lake)
        assert {r["warc_file"] for r in stored[CANDIDATES.name]} == {missing, flaky, good}

        # The same files through the Dagster asset, while one is gone and one answers only 503.
        del server.files[f"/{missing}"]
        server.faults[f"/{flaky}"] = ["503"] * 3
        config = tmp_path / "pairlake.toml"
        config.write_text(f'[lake]\nroot = "{lake.root}"\n[crawl]\ncrawl_id = "{CRAWL_ID}"\n'
                          "[extract]\nread_retries = 2\nread_backoff_s = 0.01\n")
        now = datetime.now(UTC)
        lake.append(WARC_FILES, pa.Table.from_pylist(
            [{"warc_file": f.warc_file, "crawl_id": CRAWL_ID, "uri": f.uri, "size_bytes": None, "discovered_at": now}
             for f in files], schema=WARC_FILES.schema), Lineage())
        asked_before = len(server.requests)
        with dg.instance_for_test() as instance:
            instance.add_dynamic_partitions("warc_files", [missing, flaky, good])
            result = dg.materialize(
                [candidates], instance=instance, resources={"pairlake": PairlakeResource(config_path=str(config))},
                tags={"dagster/asset_partition_range_start": missing, "dagster/asset_partition_range_end": good},
                raise_on_error=False,
            )
        assert not result.success
        (failure,) = [e.step_failure_data.user_failure_data for e in result.get_step_failure_events()]
        headline, *lines = failure.description.splitlines()
        assert headline.startswith("2 of 3 WARC files could not be read")
        assert lines == [
            f"{missing}: WARC file not found: {server.url}/{missing}",
            f"{flaky}: cannot read WARC file {server.url}/{flaky}: gave up after 3 attempts at byte 0: "
            "HTTP 503 Service Unavailable",
        ]
        assert sorted(failure.metadata["failed_files"].data) == [missing, flaky]
        assert [r for p, r in server.requests[asked_before:] if p == f"/{flaky}"] == [None] * 3
        # The good file was committed by the failed run; the failed files' partitions are as stored.
        assert lake.version(CANDIDATES) == clean.version + 1
        assert lake.lineage(CANDIDATES).run_id == result.run_id
        assert _tables(lake) == stored
        # A run whose every file fails commits nothing.
        nothing = build_candidates(spark, lake, files[:1], CRAWL_ID, FAST, Lineage())
        assert list(nothing.failed) == [missing] and nothing.counts == {}
        assert nothing.version == lake.version(CANDIDATES) == clean.version + 1 and _tables(lake) == stored

        # The server recovers: re-running gives what the clean run gave.
        server.files[f"/{missing}"] = crawl.warcs[0].read_bytes()
        again = build_candidates(spark, lake, files, CRAWL_ID, FAST, Lineage())
    assert not again.failed and again.counts == clean.counts
    assert _tables(lake) == stored


def test_a_file_that_fails_midway_leaves_no_pair_or_reject_and_takes_no_uid(spark, crawl, tmp_path):
    """Pairs stream out of a task in batches before its file is read whole; a file that then fails
    must not keep them, nor win a uid from a file read whole (its name sorts first here)."""
    lake = Lake(str(tmp_path / "lake"))
    good = tmp_path / crawl.warcs[2].name
    body = crawl.warcs[2].read_bytes() * 2  # every page twice: each pair repeats on a later page
    good.write_bytes(body)
    copy = "a-copy.warc.gz"
    config = dataclasses.replace(FAST, batch_rows=5)
    with WarcServer({f"/{copy}": body, f"/{good.name}": body}) as server:
        server.faults[f"/{copy}"] = ["drop", "503", "503", "503"]  # half the file arrives, then it gives up
        files = [WarcFile(copy, f"{server.url}/{copy}", None), WarcFile(good.name, f"{server.url}/{good.name}", None)]
        outcome = build_candidates(spark, lake, files, CRAWL_ID, config, Lineage())
    assert list(outcome.failed) == [copy]
    whole = extract_pairs(str(good), good.name, CRAWL_ID, FAST)
    uids = whole.pairs["uid"].to_pylist()
    stored = lake.read(CANDIDATES)
    assert set(stored["warc_file"].to_pylist()) == {good.name}
    assert sorted(stored["uid"].to_pylist()) == sorted(set(uids))
    assert set(lake.read(WARC_REJECTS)["warc_file"].to_pylist()) <= {good.name}
    # A pair repeated on a later page of the file is stored once, and counted.
    assert len(uids) == 2 * len(set(uids)) > 0
    assert outcome.counts[good.name]["duplicate_uid_across_pages"] == len(uids) - len(set(uids))
    assert outcome.counts[good.name]["candidates"] == len(set(uids))


@pytest.mark.parametrize(
    "line, message",
    [("read_timeout_s = 0", "extract.read_timeout_s must be positive"), ("read_retries = -1", "read_retries must be >= 0")],
)
def test_read_settings_are_checked(tmp_path, line, message):
    path = tmp_path / "bad.toml"
    path.write_text(f"[extract]\n{line}\n")
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_a_crawl_in_a_bucket_is_read_with_its_own_store_options(spark, crawl, tmp_path, s3_endpoint, monkeypatch):
    """WARC files under an s3:// prefix and in a warc.paths.gz listing, reached with
    crawl.storage_options (its own endpoint and credential variables; the lake is a local folder):
    the same tables as from local files; a missing object fails its partition only."""
    monkeypatch.setenv("CRAWL_KEY", s3_endpoint.access_key)
    monkeypatch.setenv("CRAWL_SECRET", s3_endpoint.secret_key)
    storage = dataclasses.replace(s3_endpoint.storage_options(), access_key_id_env="CRAWL_KEY",
                                  secret_access_key_env="CRAWL_SECRET")
    s3_endpoint.create_bucket("crawl-input")
    fs, _ = filesystem("s3://crawl-input", storage)
    for path in crawl.warcs:
        with fs.open_output_stream(f"crawl-input/cc/{path.name}", compression=None) as fh:
            fh.write(path.read_bytes())
    with fs.open_output_stream("crawl-input/warc.paths.gz", compression=None) as fh:
        fh.write(gzip.compress("".join(f"cc/{p.name}\n" for p in crawl.warcs).encode()))

    local = build_candidates(spark, Lake(str(tmp_path / "local")), list_warc_files(CrawlConfig(source=str(crawl.warcs[0].parent))),
                             CRAWL_ID, FAST, Lineage())
    in_folder = list_warc_files(CrawlConfig(source="s3://crawl-input/cc/", storage_options=storage))
    assert [(f.warc_file, f.uri, f.size_bytes) for f in in_folder] == [
        (p.name, f"s3://crawl-input/cc/{p.name}", p.stat().st_size) for p in sorted(crawl.warcs)]
    listed = list_warc_files(CrawlConfig(source="s3://crawl-input/warc.paths.gz", storage_options=storage))
    assert [f.uri for f in listed] == [f.uri for f in in_folder]
    lake = Lake(str(tmp_path / "lake"))
    streamed = build_candidates(spark, lake, listed, CRAWL_ID, FAST, Lineage(), storage)
    assert not streamed.failed and streamed.counts == local.counts
    assert _tables(lake) == _tables(Lake(str(tmp_path / "local")))

    fs.delete_file(f"crawl-input/cc/{crawl.warcs[0].name}")
    again = build_candidates(spark, lake, listed, CRAWL_ID, FAST, Lineage(), storage)
    assert list(again.failed) == [crawl.warcs[0].name]
    assert again.failed[crawl.warcs[0].name].startswith(f"WARC file not found: s3://crawl-input/cc/{crawl.warcs[0].name}")
    assert _tables(lake) == _tables(Lake(str(tmp_path / "local")))  # the missing file's partition as stored
