"""The inbox sensor, on a lake in a local folder and in a bucket alike: one run per request file
keyed by its name and a sha256 of its bytes (the same bytes never run twice, other bytes under the
same name are a new request), and a failed run retried under a new run key a bounded number of
times."""

import json

import dagster as dg
import pytest

from infra.config import PairlakeConfig, load_config
from orchestration.optout_requests import inbox_dir, rejected_dir, request_status
from orchestration.resources import PairlakeResource
from orchestration.runner import tick_sensor
from orchestration.sensors import MAX_ATTEMPTS, optout_inbox_sensor

REQUEST = {"request_id": "r1", "kind": "md5", "value": "0" * 32, "requester": "a", "reason": "b"}


@pytest.fixture(params=["folder", "bucket"])
def config(request, tmp_path, monkeypatch) -> PairlakeConfig:
    """The settings the sensor's resource reads: a lake in a local folder, or in a bucket of the
    local S3 server."""
    monkeypatch.setenv("PAIRLAKE_CONFIG", "")
    if request.param == "folder":
        monkeypatch.setenv("PAIRLAKE__LAKE__ROOT", str(tmp_path / "lake"))
    else:
        lake = request.getfixturevalue("s3_lake")
        monkeypatch.setenv("PAIRLAKE__LAKE__ROOT", lake.root)
        for key in ("endpoint", "region", "allow_http", "addressing_style"):
            value = getattr(lake.storage, key)
            monkeypatch.setenv(f"PAIRLAKE__LAKE__STORAGE_OPTIONS__{key.upper()}", str(value).lower()
                               if isinstance(value, bool) else value)
    return load_config()


def _keys(instance):
    with dg.build_sensor_context(instance=instance, resources={"pairlake": PairlakeResource()}) as context:
        result = optout_inbox_sensor.evaluate_tick(context)
    return [r.run_key for r in result.run_requests or []]


def _failed_run(instance, key):
    @dg.op
    def fails():
        raise dg.Failure("the lake was busy")

    @dg.job
    def attempt():
        fails()

    attempt.execute_in_process(instance=instance, tags={"dagster/run_key": key}, raise_on_error=False)


def test_a_request_runs_once_and_other_bytes_under_its_name_are_a_new_request(config):
    inbox = inbox_dir(config)
    inbox.write_bytes("r1.json", json.dumps(REQUEST).encode())
    with dg.instance_for_test() as instance:
        first = _keys(instance)
        assert len(first) == 1 and first[0].startswith("r1.json:") and _keys(instance) == first
        assert len(tick_sensor("optout_inbox_sensor", instance)) == 1
        assert request_status(config, "r1")[0]["status"] == "applied"  # it matched nothing
        assert inbox.names() == []

        inbox.write_bytes("r1.json", json.dumps(REQUEST).encode())  # the same bytes put back
        assert _keys(instance) == first
        assert tick_sensor("optout_inbox_sensor", instance) == []  # never run twice

        inbox.write_bytes("r1.json", json.dumps({**REQUEST, "reason": "again"}).encode())  # re-uploaded, changed
        second = _keys(instance)
        assert len(second) == 1 and second[0].startswith("r1.json:") and second != first
        assert len(tick_sensor("optout_inbox_sensor", instance)) == 1
        assert "already used (applied)" in rejected_dir(config).read_bytes("r1.json.reason.txt").decode()
        assert inbox.names() == []


def test_a_failed_request_run_is_retried_under_a_new_key_then_given_up(config):
    inbox_dir(config).write_bytes("r1.json", json.dumps(REQUEST).encode())
    with dg.instance_for_test() as instance:
        first = _keys(instance)
        assert len(first) == 1 and first[0].startswith("r1.json:")
        for attempt in range(1, MAX_ATTEMPTS + 1):
            key = _keys(instance)[0]
            assert key == first[0] + ("" if attempt == 1 else f":attempt-{attempt}")
            _failed_run(instance, key)
        assert _keys(instance) == []  # every attempt failed: left for a person
