"""The opt-out inbox on a lake in a local folder and in a bucket alike (the local S3 server):
submitting a request and its example image, listing what waits with the version of its bytes,
rejecting a malformed request with its reason, holding an over-broad one and applying it once
confirmed, applying one that removes samples; an inbox outside a lake in a bucket is refused in one
line."""

import hashlib
import json

import pyarrow.fs as pafs
import pytest
from PIL import Image

from infra.config import ConfigError, load_config
from infra.delta_store import Lake, Lineage
from infra.tables import CANDIDATES, IMAGES
from orchestration.cli import main
from orchestration.optout_requests import (
    apply_request_file, held_dir, inbox_dir, pending_requests, preview_request, rejected_dir, request_folder,
    request_status, submit_request,
)
from spark_jobs.optout import RequestError
from tests.optout_lake import fill_samples

REQUEST = {"kind": "md5", "value": "0" * 32, "requester": "a", "reason": "b"}


def _config_file(path, root, storage=None):
    text = f'[lake]\nroot = "{root}"\n'
    if storage is not None:
        text += (f'[lake.storage_options]\nendpoint = "{storage.endpoint}"\nregion = "{storage.region}"\n'
                 f'allow_http = {str(storage.allow_http).lower()}\naddressing_style = "{storage.addressing_style}"\n')
    path.write_text(text)
    return path


@pytest.fixture(params=["folder", "bucket"])
def config_path(request, tmp_path, monkeypatch):
    monkeypatch.setenv("PAIRLAKE_CONFIG", "")
    if request.param == "folder":
        return _config_file(tmp_path / "pairlake.toml", tmp_path / "lake")
    lake = request.getfixturevalue("s3_lake")
    return _config_file(tmp_path / "pairlake.toml", lake.root, lake.storage)


def test_a_submitted_request_waits_in_the_inbox_with_the_version_of_its_bytes(config_path, tmp_path, capsys):
    config = load_config(config_path)
    example = tmp_path / "Example.JPG"
    Image.new("RGB", (64, 48), (200, 30, 30)).save(example, format="JPEG")
    assert submit_request(config, {"request_id": "by-md5", **REQUEST}) == "by-md5.json"
    assert main(["--config", str(config_path), "optout", "submit", "--image", str(example), "--id", "by-image",
                 "--requester", "a", "--reason", "b"]) == 0
    assert f"written to {inbox_dir(config).file('by-image.json')}" in capsys.readouterr().out
    inbox = inbox_dir(config)
    assert inbox.names() == ["by-image.jpg", "by-image.json", "by-md5.json"]
    fs, base = Lake.of(config.lake).filesystem  # files of a local folder, or objects of the bucket
    stored = fs.get_file_info(pafs.FileSelector(base, recursive=True))
    assert {i.path for i in stored if i.type == pafs.FileType.File} >= {
        f"{base}/optout/inbox/{name}" for name in ("by-image.jpg", "by-image.json", "by-md5.json")}
    assert inbox.read_bytes("by-image.jpg") == example.read_bytes()
    assert json.loads(inbox.read_bytes("by-image.json"))["image"] == "by-image.jpg"
    assert [(p.name, p.version) for p in pending_requests(config)] == [
        (name, hashlib.sha256(inbox.read_bytes(name)).hexdigest()[:16]) for name in ("by-image.json", "by-md5.json")]
    with pytest.raises(RequestError, match=r"already used \(a request file in "):
        submit_request(config, {"request_id": "by-md5", **REQUEST})


def test_a_malformed_request_moves_aside_with_its_example_and_reason_each_time(config_path):
    config = load_config(config_path)
    inbox, rejected = inbox_dir(config), rejected_dir(config)
    for attempt in ("first", "second"):  # a second rejection under the same name replaces the first
        inbox.write_bytes("bad.png", f"not an image ({attempt})".encode())
        inbox.write_bytes("bad.json", json.dumps({"kind": "image", "image": "bad.png", "requester": attempt,
                                                  "reason": "b"}).encode())
        outcome = apply_request_file(config, inbox, "bad.json", Lineage(run_id=attempt))
        assert outcome.status == "rejected" and "cannot be decoded" in outcome.rejection
        assert inbox.names() == []
        assert rejected.names() == ["bad.json", "bad.json.reason.txt", "bad.png"]
        assert json.loads(rejected.read_bytes("bad.json"))["requester"] == attempt
        assert rejected.read_bytes("bad.png") == f"not an image ({attempt})".encode()
        assert "cannot be decoded" in rejected.read_bytes("bad.json.reason.txt").decode()
    assert [r["status"] for r in request_status(config)] == ["rejected", "rejected"]
    inbox.write_bytes("dots.json", json.dumps({"kind": "image", "image": "..", "requester": "a",
                                               "reason": "b"}).encode())
    outcome = apply_request_file(config, inbox, "dots.json", Lineage(run_id="dots"))
    assert outcome.status == "rejected" and "a file next to the request" in outcome.rejection
    assert inbox.names() == [] and "dots.json" in rejected.names()


def test_an_over_broad_request_is_held_then_applied_once_confirmed(config_path):
    config = load_config(config_path)
    submit_request(config, {"request_id": "suffix", "kind": "domain", "value": "com", "requester": "x",
                            "reason": "typo"})
    outcome = apply_request_file(config, inbox_dir(config), "suffix.json", Lineage(run_id="t"))
    assert outcome.status == "needs_confirmation" and "public suffix 'com'" in outcome.hold_reason
    assert inbox_dir(config).names() == [] and held_dir(config).names() == ["suffix.json"]
    assert "public suffix 'com'" in preview_request(config, "suffix")["would_hold"]  # read among the held
    with pytest.raises(RequestError, match="already used"):
        submit_request(config, {"request_id": "suffix", **REQUEST})
    # Nothing in this lake matches, so applying it needs no release to rewrite.
    held = request_folder(config, "suffix.json", confirm=True)
    outcome = apply_request_file(config, held, "suffix.json", Lineage(run_id="t2"), confirmed_by="ops")
    assert outcome.status == "applied" and outcome.matched == 0
    assert held_dir(config).names() == []
    assert [r["status"] for r in request_status(config, "suffix")] == ["applied"]


def test_a_request_is_applied_and_leaves_the_inbox(config_path):
    config_path.write_text(config_path.read_text() + "[optout]\nmax_auto_fraction = 1.0\n")  # a tiny lake
    config = load_config(config_path)
    lake = Lake.of(config.lake)
    pairs = [("u1", "http://a.example/me.jpg", b"ME"), ("u2", "http://b.example/copy.jpg", b"ME"),
             ("u3", "http://c.example/other.jpg", b"OTHER")]
    fill_samples(lake, pairs)
    name = submit_request(config, {"request_id": "mine", "kind": "md5", "value": hashlib.md5(b"ME").hexdigest(),
                                   "requester": "a", "reason": "b"})
    outcome = apply_request_file(config, inbox_dir(config), name, Lineage(run_id="t"))
    assert outcome.status == "applied" and outcome.matched == 2  # the named image and its copy
    assert lake.read(IMAGES, columns=["uid"])["uid"].to_pylist() == ["u3"]
    assert lake.read(CANDIDATES, columns=["uid"])["uid"].to_pylist() == ["u3"]
    assert inbox_dir(config).names() == []


def test_an_inbox_outside_a_lake_in_a_bucket_is_refused_in_one_line(s3_lake, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PAIRLAKE_CONFIG", "")
    config_path = _config_file(tmp_path / "pairlake.toml", s3_lake.root, s3_lake.storage)
    config_path.write_text(config_path.read_text() + '[optout]\ninbox = "/srv/optout/inbox"\n')
    config = load_config(config_path)
    for folder in (inbox_dir, held_dir, rejected_dir):
        with pytest.raises(ConfigError, match=r"optout\.inbox '/srv/optout/inbox' is a local path, but the lake"):
            folder(config)
    assert main(["--config", str(config_path), "optout", "submit", "--md5", "0" * 32, "--requester", "a",
                 "--reason", "b"]) == 2
    assert "name a key under the lake root" in capsys.readouterr().err
