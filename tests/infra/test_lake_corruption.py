"""A corrupt Delta log is one clear LakeError naming the table and the entry, never stale rows."""

from pathlib import Path

import pyarrow as pa
import pytest

from infra.delta_store import Lake, LakeError, Lineage
from infra.tables import STAGE_STATS
from orchestration.cli import main


def stats(stage: str, value: int) -> pa.Table:
    return pa.table({"stage": [stage], "partition": ["w1"], "metric": ["kept"], "value": [value]})


def three_commits(root: Path) -> Lake:
    lake = Lake(str(root))
    for version, stage in enumerate(["candidates", "images", "kept_pairs"]):
        lake.replace_partitions(STAGE_STATS, stats(stage, 140 + version), ["w1"], Lineage(), also_match={"stage": stage})
    assert lake.version(STAGE_STATS) == 2 and lake.read(STAGE_STATS).num_rows == 3  # read once: the entries are cached
    return lake


def entry(lake: Lake, version: int) -> Path:
    return Path(lake.uri(STAGE_STATS)) / "_delta_log" / f"{version:020d}.json"


def cut_mid_line(data: bytes) -> bytes:
    lines = data.split(b"\n")
    return b"\n".join(lines[:-1] + [lines[-1][: len(lines[-1]) // 2]])


@pytest.mark.parametrize(
    "corrupt, problem",
    [
        (lambda data: b"", "is empty (0 bytes)"),
        (cut_mid_line, "line 2 is not JSON"),
        (lambda data: data[: len(data) // 2], "is not JSON"),
        (lambda data: b"\x00\x17garbage\xff\n" + data, "line 1 is not JSON"),
        (lambda data: b'{"unknownAction": {}}\n' + data, "line 1 is not a Delta action"),
    ],
    ids=["empty", "cut-mid-line", "cut-in-half", "garbage", "unknown-action"],
)
def test_a_corrupt_last_entry_is_one_line_naming_table_and_entry(tmp_path, corrupt, problem):
    lake = three_commits(tmp_path)
    last = entry(lake, 2)
    last.write_bytes(corrupt(last.read_bytes()))
    for call in (lambda: lake.read(STAGE_STATS), lambda: lake.version(STAGE_STATS), lambda: lake.history(STAGE_STATS)):
        with pytest.raises(LakeError) as info:
            call()
        message = str(info.value)
        assert "\n" not in message
        assert f"table stage_stats is corrupt: Delta log entry {last} " in message and problem in message
        assert "restore that file from a backup, or delete it to roll back to version 1" in message
    # Writes refuse it too: nothing lands on top of a commit that was lost.
    with pytest.raises(LakeError, match="stage_stats is corrupt"):
        lake.replace_partitions(STAGE_STATS, stats("images", 1), ["w1"], Lineage(), also_match={"stage": "images"})
    # Time travel to a version before the corrupt entry still works.
    assert lake.read(STAGE_STATS, version=1).num_rows == 2


def test_the_advised_roll_back_works(tmp_path):
    lake = three_commits(tmp_path)
    entry(lake, 2).write_bytes(b"")
    with pytest.raises(LakeError, match="or delete it to roll back to version 1"):
        lake.read(STAGE_STATS)
    entry(lake, 2).unlink()
    assert lake.version(STAGE_STATS) == 1
    assert sorted(lake.read(STAGE_STATS).column("stage").to_pylist()) == ["candidates", "images"]
    lake.replace_partitions(STAGE_STATS, stats("kept_pairs", 7), ["w1"], Lineage(), also_match={"stage": "kept_pairs"})
    assert lake.version(STAGE_STATS) == 2 and lake.read(STAGE_STATS).num_rows == 3


def test_a_corrupt_or_missing_earlier_entry_names_the_later_ones(tmp_path):
    lake = three_commits(tmp_path)
    entry(lake, 1).write_bytes(b"")
    with pytest.raises(LakeError, match=r"00000000000000000001\.json is empty .* delete it and the 1 entry after it "
                                        r"to roll back to version 0"):
        lake.read(STAGE_STATS)
    entry(lake, 1).unlink()
    with pytest.raises(LakeError, match=r"00000000000000000001\.json is missing; restore it from a backup, or delete "
                                        r"the 1 entry after it to roll back to version 0"):
        lake.version(STAGE_STATS)


def test_entries_before_a_checkpoint_are_not_read_and_a_bad_checkpoint_is_one_line(tmp_path):
    lake = three_commits(tmp_path)
    lake.table(STAGE_STATS).create_checkpoint()
    entry(lake, 1).write_bytes(b"")  # replaced by the checkpoint: delta-rs never reads it
    assert lake.read(STAGE_STATS).num_rows == 3
    checkpoint = entry(lake, 2).with_name(f"{2:020d}.checkpoint.parquet")
    checkpoint.write_bytes(b"not parquet")
    with pytest.raises(LakeError) as info:
        lake.read(STAGE_STATS)
    assert str(info.value).startswith(f"table stage_stats at {lake.uri(STAGE_STATS)} cannot be loaded: ")
    assert "\n" not in str(info.value)


def test_report_on_a_corrupt_stage_stats_is_one_line_and_rc_1(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PAIRLAKE_CONFIG", "")  # `pairlake --config` exports the file; undone after the test
    monkeypatch.delenv("PAIRLAKE_PROFILE", raising=False)
    lake = three_commits(tmp_path / "lake")
    entry(lake, 2).write_bytes(b"")
    config = tmp_path / "pairlake.toml"
    config.write_text(f'[lake]\nroot = "{lake.root}"\n[clip]\nmodel = "ViT-B-32"\n[clip.thresholds]\n"ViT-B-32" = 0.28\n')
    assert main(["--config", str(config), "report"]) == 1
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and "stage_stats is corrupt" in err and "00000000000000000002.json" in err
    assert "kept" not in captured.out  # no funnel printed from the stale version
