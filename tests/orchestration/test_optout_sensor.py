"""The inbox sensor retries a request whose run failed (another removal held the lake too long, a
killed process) under a new run key, a bounded number of times."""

import json

import dagster as dg

from infra.config import load_config
from orchestration.optout_requests import inbox_dir
from orchestration.resources import PairlakeResource
from orchestration.sensors import MAX_ATTEMPTS, optout_inbox_sensor


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


def test_a_failed_request_run_is_retried_under_a_new_key_then_given_up(tmp_path, monkeypatch):
    monkeypatch.setenv("PAIRLAKE__LAKE__ROOT", str(tmp_path / "lake"))
    monkeypatch.setenv("PAIRLAKE_CONFIG", "")
    inbox = inbox_dir(load_config())
    inbox.mkdir(parents=True)
    (inbox / "r1.json").write_text(json.dumps({"kind": "md5", "value": "0" * 32, "requester": "a", "reason": "b"}))
    with dg.instance_for_test() as instance:
        first = _keys(instance)
        assert len(first) == 1 and first[0].startswith("r1.json:")
        for attempt in range(1, MAX_ATTEMPTS + 1):
            key = _keys(instance)[0]
            assert key == first[0] + ("" if attempt == 1 else f":attempt-{attempt}")
            _failed_run(instance, key)
        assert _keys(instance) == []  # every attempt failed: left for a person
