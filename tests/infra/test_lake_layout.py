"""One lake layout: stages name locations through infra/lake_layout.py and reach them through the
Lake, so an s3:// root never turns into a local path such as ``s3:/bucket/x``."""

import re
from pathlib import Path

import pytest

from infra import lake_layout
from infra.delta_store import Lake, LakeError

ROOT = Path(__file__).resolve().parent.parent.parent
STAGE_PACKAGES = ("assets", "orchestration", "spark_jobs", "gpu_jobs", "infra")
# The modules that turn a root into a filesystem and a base path: the only ones that may.
_LAKE_MODULES = {"infra/delta_store.py", "infra/lake_storage.py"}
# A path built from a lake root by hand: Path(lake.root), os.path.join(config.lake.root, ...), root) / "x".
_BY_HAND = re.compile(r"Path\([\w.]*root\b|os\.path\.join\([\w.]*root\b|\broot\)\s*/")


def test_no_stage_builds_a_path_from_the_lake_root():
    offenders = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for package in STAGE_PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
        if str(path.relative_to(ROOT)) not in _LAKE_MODULES
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if _BY_HAND.search(line)
    ]
    assert offenders == []


def test_the_layout_places_keys_under_a_folder_and_a_bucket_alike(tmp_path):
    key = lake_layout.release_version("en", 3)
    assert key == "releases/en/v3"
    assert Lake(str(tmp_path)).location(key) == f"{tmp_path}/releases/en/v3"
    assert Lake("s3://bucket/pre/").location(key) == "bucket/pre/releases/en/v3"
    assert Lake("s3://bucket/pre").uri(lake_layout.report("funnel.html")) == "s3://bucket/pre/reports/funnel.html"
    assert lake_layout.optout_beside_inbox("optout/inbox", "held") == "optout/held"
    assert lake_layout.optout_beside_inbox("/srv/inbox", "rejected") == "/srv/rejected"


def test_a_local_only_artefact_on_an_object_store_is_one_line():
    with pytest.raises(LakeError, match=r"^indexes/research on an object-store lake \(s3://b/l\) is not supported yet"):
        Lake("s3://b/l").path(lake_layout.index("research"))
