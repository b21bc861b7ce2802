"""The crawl-discovery schedule: new WARC files become partitions and exactly one run covers them."""

import shutil
from datetime import datetime, timezone

import dagster as dg

from infra.delta_store import Lake
from infra.sample_crawl import generate_sample_crawl
from infra.tables import WARC_FILES
from orchestration.resources import PairlakeResource
from orchestration.schedules import crawl_discovery_schedule


def test_schedule_registers_new_files_and_requests_one_run_over_them(tmp_path):
    crawl = generate_sample_crawl(tmp_path / "crawl", "http://127.0.0.1:9", pages=40, seed=1, warc_files=3)
    source = tmp_path / "source"
    source.mkdir()
    for path in crawl.warcs[:2]:
        shutil.copy(path, source / path.name)
    config = tmp_path / "pairlake.toml"
    config.write_text(f'[lake]\nroot = "{tmp_path / "lake"}"\n[crawl]\nsource = "{source}"\n')
    pairlake = PairlakeResource(config_path=str(config))
    names = sorted(p.name for p in crawl.warcs)

    with dg.instance_for_test() as instance:
        def evaluate():
            context = dg.build_schedule_context(
                instance=instance, resources={"pairlake": pairlake},
                scheduled_execution_time=datetime(2026, 11, 22, tzinfo=timezone.utc),
            )
            return crawl_discovery_schedule.evaluate_tick(context)

        first = evaluate().run_requests
        assert len(first) == 1
        assert first[0].tags["dagster/asset_partition_range_start"] == names[0]
        assert first[0].tags["dagster/asset_partition_range_end"] == names[1]
        assert instance.get_dynamic_partitions("warc_files") == names[:2]

        assert not evaluate().run_requests  # nothing new: a skip, not a second run

        shutil.copy(crawl.warcs[2], source / crawl.warcs[2].name)
        third = evaluate().run_requests
        assert [(r.tags["dagster/asset_partition_range_start"], r.tags["dagster/asset_partition_range_end"])
                for r in third] == [(names[2], names[2])]
        assert instance.get_dynamic_partitions("warc_files") == names

    registry = Lake(str(tmp_path / "lake")).read(WARC_FILES)
    assert sorted(registry.column("warc_file").to_pylist()) == names
