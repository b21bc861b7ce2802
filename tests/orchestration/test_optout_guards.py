"""Opt-out guards on a copy of the session's demo lake: an over-broad request is held until a person
confirms it, a re-release that drops most of the previous version needs the same, one poison request
never delays the others, ids are validated before any file is touched, the audit is append-only and
two appliers at once wait for each other."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from infra.config import load_config
from infra.delta_store import Lake
from infra.tables import CANDIDATES, CURATED, IMAGES, SAMPLE_TABLES
from orchestration.cli import main
from orchestration.optout_requests import held_dir, inbox_dir, rejected_dir, request_status, submit_request
from orchestration.runner import tick_sensor
from spark_jobs import optout, release

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def lake_copy(pipeline, tmp_path_factory):
    root = tmp_path_factory.mktemp("guards")
    shutil.copytree(pipeline.lake_root, root / "lake")
    config_path = root / "pairlake.toml"
    config_path.write_text(pipeline.config_path.read_text().replace(str(pipeline.lake_root), str(root / "lake")))
    previous = {name: os.environ.get(name) for name in ("PAIRLAKE_CONFIG", "DAGSTER_HOME")}
    os.environ["PAIRLAKE_CONFIG"] = str(config_path)
    os.environ["DAGSTER_HOME"] = str(root / "dagster")  # the CLI's instance, for this module only
    try:
        with dg.instance_for_test() as instance:
            yield root, config_path, instance
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _versions(lake: Lake) -> dict[str, int | None]:
    return {spec.name: lake.version(spec) for spec in SAMPLE_TABLES}


def _status(config, request_id):
    return request_status(config, request_id)[0]


def test_ids_are_checked_before_any_file_is_touched(lake_copy, tmp_path, capsys):
    root, config_path, _ = lake_copy
    victim = root / "victim.txt"
    victim.write_text("keep me")
    image = tmp_path / "x.jpg"
    image.write_bytes(b"not even an image")
    args = ["--config", str(config_path), "optout", "submit", "--image", str(image), "--requester", "a",
            "--reason", "b"]
    for bad in ("../../victim", "../victim.txt", "/etc/passwd"):
        assert main([*args, "--id", bad]) == 2
        assert "request_id" in capsys.readouterr().err
    assert victim.read_text() == "keep me"
    assert inbox_dir(load_config(config_path)).names() == []


def test_an_over_broad_request_is_held_until_confirmed_and_the_rerelease_needs_confirming_too(lake_copy, capsys):
    root, config_path, instance = lake_copy
    config = load_config(config_path)
    lake = Lake.of(config.lake)
    before = _versions(lake)
    pairs = lake.read(CANDIDATES, columns=["uid"]).num_rows
    submit_request(config, {"request_id": "everything", "kind": "domain", "value": "127.0.0.1",
                            "requester": "typo", "reason": "meant one site"})
    submit_request(config, {"request_id": "suffix", "kind": "domain", "value": "com", "requester": "x",
                            "reason": "typo"})
    runs = tick_sensor("optout_inbox_sensor", instance)
    assert len(runs) == 2
    assert _versions(lake) == before  # nothing deleted
    held = _status(config, "everything")
    assert held["status"] == "needs_confirmation" and "optout.max_auto_" in held["hold_reason"]
    matched = json.loads(held["preview"])["matched"]  # the match set is in the audit row
    assert matched > pairs / 2
    assert "public suffix 'com'" in _status(config, "suffix")["hold_reason"]
    assert held_dir(config).names() == ["everything.json", "suffix.json"]
    assert tick_sensor("optout_inbox_sensor", instance) == []  # the sensor alone never applies them

    assert main(["--config", str(config_path), "optout", "preview", "everything"]) == 0
    out = capsys.readouterr().out
    assert f"matches {matched:,} of {pairs:,} pairs" in out and "127.0.0.1" in out
    assert "optout confirm everything" in out

    last = release.latest(lake, config.release.name)
    assert main(["--config", str(config_path), "optout", "confirm", "everything", "--by", "ops on-call"]) == 0
    capsys.readouterr()
    applied = _status(config, "everything")
    assert applied["status"] == "applied" and applied["confirmed_by"] == "ops on-call"
    assert lake.read(CURATED).num_rows == 0 and lake.read(IMAGES).num_rows < pairs - matched + 1
    assert [r["status"] for r in optout.request_rows(lake)["everything"]] == ["needs_confirmation", "received",
                                                                            "applied"]

    # A re-release that would drop every sample is refused with one line, then made when confirmed.
    assert main(["--config", str(config_path), "release", "rerelease"]) == 1
    said = capsys.readouterr().err.strip().splitlines()[-1]  # after the run's own Dagster log lines
    assert said.startswith("pairlake: run ") and "would drop" in said and "release.max_auto_drop_fraction" in said
    assert release.latest(lake, config.release.name)["version"] == last["version"]
    assert main(["--config", str(config_path), "release", "rerelease", "--confirmed-by", "ops on-call"]) == 0
    made = release.latest(lake, config.release.name)
    assert (made["version"], made["samples"]) == (last["version"] + 1, 0)


def test_a_poison_request_never_delays_the_others(lake_copy, capsys):
    root, config_path, instance = lake_copy
    config = load_config(config_path)
    inbox = inbox_dir(config)
    inbox.write_bytes("a-poison.json", b"[" * 3_000_000 + b"]" * 3_000_000)  # 6 MB, deeply nested
    inbox.write_bytes("b-nested.json", b"[" * 30_000 + b"]" * 30_000)  # small but deeper than a parser recurses
    inbox.write_bytes("c-good.json", json.dumps({"kind": "sha256", "value": "0" * 64, "requester": "a",
                                                 "reason": "b"}).encode())
    assert main(["--config", str(config_path), "optout", "apply"]) == 0
    capsys.readouterr()
    assert _status(config, "c-good")["status"] == "applied"
    for name, why in (("a-poison", "a request is at most"), ("b-nested", "not a JSON request")):
        assert _status(config, name)["status"] == "rejected"
        assert why in rejected_dir(config).read_bytes(f"{name}.json.reason.txt").decode()
    assert inbox.names("*.json") == []


def test_a_used_id_is_refused_and_its_audit_rows_stay_as_they_were(lake_copy, capsys):
    root, config_path, instance = lake_copy
    config = load_config(config_path)
    lake = Lake.of(config.lake)
    rows_before = optout.request_rows(lake)["c-good"]
    with pytest.raises(optout.RequestError, match="already used"):
        submit_request(config, {"request_id": "c-good", "kind": "md5", "value": "1" * 32, "requester": "a",
                                "reason": "b"})
    inbox_dir(config).write_bytes("c-good.json", json.dumps({"kind": "md5", "value": "1" * 32, "requester": "a",
                                                             "reason": "again"}).encode())
    tick_sensor("optout_inbox_sensor", instance)
    assert optout.request_rows(lake)["c-good"] == rows_before
    reused = [r for rid, h in optout.request_rows(lake).items() if rid.startswith("c-good~") for r in h]
    assert len(reused) == 1 and "already used (applied)" in reused[0]["rejection"]


def test_two_appliers_at_once_wait_for_each_other(lake_copy, tmp_path):
    root, config_path, _ = lake_copy
    config = load_config(config_path)
    for n in range(2):
        submit_request(config, {"request_id": f"parallel-{n}", "kind": "md5", "value": f"{n}" * 32,
                                "requester": "a", "reason": "b"})
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path / "fresh-home"), "PAIRLAKE_CONFIG": str(config_path)}
    command = [sys.executable, "-m", "orchestration.cli", "optout", "apply"]
    procs = [subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    assert not any("OperationalError" in err or "Traceback" in err for _, err in results)
    assert {_status(config, f"parallel-{n}")["status"] for n in range(2)} == {"applied"}
