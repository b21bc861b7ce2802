"""Compaction on a real lake: many small commits become one file per partition, no row changes,
one commit with lineage, history still readable; from the CLI and as the Dagster job."""

import datetime as dt

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from infra.compaction import compact
from infra.delta_store import Lake, Lineage
from infra.tables import IMAGES
from orchestration.cli import main
from orchestration.resources import PairlakeResource
from orchestration.upkeep import optimize_lake_job

NOW = dt.datetime(2026, 11, 30, tzinfo=dt.timezone.utc)


def _rows(start: int, n: int, warc_file: str) -> pa.Table:
    rows = [{"uid": f"u{i:05d}", "url": f"http://h.example/{i}.jpg", "warc_file": warc_file, "status": "ok",
             "retryable": False, "attempts": 1, "fetched_at": NOW, "image": b"jpeg" * (i % 50 + 1)}
            for i in range(start, start + n)]
    return pa.Table.from_pylist(rows, schema=IMAGES.schema)


def _small_files(root) -> Lake:
    lake = Lake(str(root))
    for k in range(6):  # six runs' commits over two partitions: twelve small files
        lake.append(IMAGES, pa.concat_tables([_rows(100 * k, 30, "a.warc.gz"), _rows(100 * k + 50, 20, "b.warc.gz")]),
                    Lineage(run_id=f"run{k}"))
    return lake


def _sorted(table: pa.Table) -> pa.Table:
    return table.sort_by("uid")


def test_small_files_become_one_per_partition_and_no_row_changes(tmp_path):
    lake = _small_files(tmp_path / "lake")
    before, version = _sorted(lake.read(IMAGES)), lake.version(IMAGES)
    assert len(lake.table(IMAGES).file_uris()) == 12
    done = compact(lake, IMAGES, 256, Lineage(run_id="compaction-1"))
    assert (done.files_before, done.files_after, done.version) == (12, 2, version + 1)
    assert len(lake.table(IMAGES).file_uris()) == 2
    assert _sorted(lake.read(IMAGES)).equals(before)
    assert lake.lineage(IMAGES).run_id == "compaction-1"
    assert _sorted(lake.read(IMAGES, version=version)).equals(before)  # time travel still reads
    by_file = lake.read(IMAGES, columns=["warc_file"], filter=pc.field("warc_file") == "b.warc.gz")
    assert by_file.num_rows == 120
    assert compact(lake, IMAGES, 256, Lineage()).version is None  # nothing left to pack: no commit


def test_cli_compacts_and_names_an_unknown_table_in_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PAIRLAKE_CONFIG", "")
    _small_files(tmp_path / "lake")
    config = tmp_path / "pairlake.toml"
    config.write_text(f'[lake]\nroot = "{tmp_path / "lake"}"\n')
    assert main(["--config", str(config), "optimize", "--table", "nope"]) != 0
    err = capsys.readouterr().err.strip()
    assert "unknown table(s) nope" in err and "\n" not in err
    assert main(["--config", str(config), "optimize", "--table", "images"]) == 0
    out = capsys.readouterr().out
    assert "images" in out and "12 files ->      2" in out


def test_the_dagster_job_compacts_every_table(tmp_path, monkeypatch):
    lake = _small_files(tmp_path / "lake")
    config = tmp_path / "pairlake.toml"
    config.write_text(f'[lake]\nroot = "{tmp_path / "lake"}"\n')
    monkeypatch.setenv("PAIRLAKE_CONFIG", str(config))
    with dg.instance_for_test() as instance:
        result = optimize_lake_job.execute_in_process(instance=instance,
                                                      resources={"pairlake": PairlakeResource()})
    assert result.success
    assert len(lake.table(IMAGES).file_uris()) == 2
    (event,) = [e for e in result.all_events if e.event_type_value == "STEP_OUTPUT"]
    assert event.event_specific_data.metadata["files_removed"].value == 10


@pytest.fixture(autouse=True)
def _no_leftover_config(monkeypatch):
    monkeypatch.delenv("PAIRLAKE_PROFILE", raising=False)
