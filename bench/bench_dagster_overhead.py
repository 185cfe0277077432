"""What Dagster itself costs per document partition, with no work in the assets.

    .venv/bin/python bench/bench_dagster_overhead.py [--partitions 1000] [--assets 1]

Materializes a chain of no-op dynamically partitioned assets over a range of partitions in
one in-process run, on the SQLite instance qpbot uses by default and on an in-memory one.
The difference is the cost of recording planned and materialization events per
(asset, partition), which bounds how fast per-document assets can ingest small documents.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import dagster as dg

documents = dg.DynamicPartitionsDefinition(name="documents")


def chain_of_noop_assets(count: int) -> list[dg.AssetsDefinition]:
    assets: list[dg.AssetsDefinition] = []
    for position in range(count):

        @dg.asset(
            name=f"stage_{position}",
            partitions_def=documents,
            backfill_policy=dg.BackfillPolicy.single_run(),
            deps=assets[-1:],
        )
        def stage() -> dg.MaterializeResult:
            return dg.MaterializeResult()

        assets.append(stage)
    return assets


def run_once(instance: dg.DagsterInstance, partitions: int, asset_count: int) -> float:
    keys = [f"doc-{i:06d}" for i in range(partitions)]
    instance.add_dynamic_partitions(documents.name, keys)
    job = dg.Definitions(
        assets=chain_of_noop_assets(asset_count),
        jobs=[dg.define_asset_job("all", partitions_def=documents)],
    ).resolve_job_def("all")
    started = time.perf_counter()
    result = job.execute_in_process(
        instance=instance,
        tags={
            "dagster/asset_partition_range_start": keys[0],
            "dagster/asset_partition_range_end": keys[-1],
        },
    )
    assert result.success
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--partitions", type=int, default=1000)
    parser.add_argument("--assets", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as home:
        (Path(home) / "dagster.yaml").write_text(f"storage:\n  sqlite:\n    base_dir: {home}\n")
        sqlite_seconds = run_once(
            dg.DagsterInstance.from_config(home), args.partitions, args.assets
        )
    memory_seconds = run_once(dg.DagsterInstance.ephemeral(), args.partitions, args.assets)
    pairs = args.partitions * args.assets
    print(
        json.dumps(
            {
                "partitions": args.partitions,
                "assets": args.assets,
                "sqlite_s": round(sqlite_seconds, 2),
                "sqlite_ms_per_asset_partition": round(1000 * sqlite_seconds / pairs, 2),
                "in_memory_s": round(memory_seconds, 2),
                "in_memory_ms_per_asset_partition": round(1000 * memory_seconds / pairs, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
