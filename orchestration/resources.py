"""Dagster resources: the pairlake config, its lake and Spark, and lineage for every commit."""

from __future__ import annotations

import hashlib
import importlib.util
import os
from functools import lru_cache
from pathlib import Path

import dagster as dg
import pyarrow as pa
from pyspark.sql import SparkSession

from infra.config import CONFIG_ENV, KEY_ENV_PREFIX, PROFILE_ENV, PairlakeConfig, load_config
from infra.delta_store import Lake, Lineage
from infra.removal_fence import pinned_version
from infra.spark import shared_spark_session
from infra.tables import STAGE_STATS, TableSpec


@lru_cache(maxsize=8)
def _load_config(path: str, profile: str, environment: tuple[tuple[str, str], ...]) -> PairlakeConfig:
    return load_config(path or None, profile=profile or None)  # environment: part of the cache key


def code_version(*modules: str) -> str:
    """A code version derived from the named stage modules' source: changes whenever their code does.
    The files are read, not imported: loading the definitions (every Dagster and CLI process) must
    not import torch and open_clip, which cost ~20 CPU-s per process, for a hash."""
    digest = hashlib.sha256()
    for name in modules:
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.origin:
            raise ModuleNotFoundError(f"code_version: no module {name}")
        digest.update(Path(spec.origin).read_bytes())
    return digest.hexdigest()[:12]


class PairlakeResource(dg.ConfigurableResource):
    """The whole pairlake configuration: the embedded defaults, $PAIRLAKE_PROFILE, the file
    ``config_path`` or $PAIRLAKE_CONFIG, and PAIRLAKE__SECTION__KEY variables."""

    config_path: str = ""

    @property
    def settings(self) -> PairlakeConfig:
        environment = tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith(KEY_ENV_PREFIX)))
        return _load_config(self.config_path or os.environ.get(CONFIG_ENV, ""), os.environ.get(PROFILE_ENV, ""),
                            environment)

    @property
    def lake(self) -> Lake:
        return Lake.of(self.settings.lake)

    def spark(self) -> SparkSession:
        return shared_spark_session(self.settings.spark)

    def lineage(
        self, context: dg.AssetExecutionContext, upstream: tuple[TableSpec, ...] = (), version: str = ""
    ) -> Lineage:
        """Lineage of a commit made by this asset step: run, asset, partitions, upstream versions."""
        keys = tuple(context.partition_keys) if context.has_partition_key_range or context.has_partition_key else ()
        return Lineage(
            run_id=context.run.run_id,
            asset_key=context.asset_key.to_user_string(),
            partition_keys=keys,
            code_version=version,
            upstream={spec.name: v for spec in upstream if (v := self.lake.version(spec)) is not None},
            removals_version=pinned_version(self.lake),  # before the step reads anything
        )

    def record_stats(self, stage: str, counts: dict[str, dict[str, int]], lineage: Lineage) -> None:
        """Replace ``stage``'s counters for the given partitions in ``stage_stats``."""
        rows = [
            {"stage": stage, "partition": part, "metric": metric, "value": int(value)}
            for part, metrics in counts.items()
            for metric, value in sorted(metrics.items())
        ]
        self.lake.replace_partitions(
            STAGE_STATS, pa.Table.from_pylist(rows, schema=STAGE_STATS.schema), counts.keys(), lineage,
            also_match={"stage": stage},
        )


def summed(counts: dict[str, dict[str, int]]) -> dict[str, int]:
    """Counters summed over partitions, for asset metadata."""
    total: dict[str, int] = {}
    for metrics in counts.values():
        for metric, value in metrics.items():
            total[metric] = total.get(metric, 0) + int(value)
    return dict(sorted(total.items()))
