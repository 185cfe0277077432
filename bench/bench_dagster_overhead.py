"""What Dagster itself costs per document partition, with no work in the assets.

    .venv/bin/python bench/bench_dagster_overhead.py [--partitions 1000] [--assets 1]
        [--postgres postgresql://postgres@127.0.0.1:5432/postgres]

Materializes a chain of no-op dynamically partitioned assets over a range of partitions in
one in-process run, on Dagster's own SQLite storage (events written one at a time), on
qpbot's storage (dagster_home/dagster.yaml: the same SQLite files, Dagster's event batches
written one transaction each) and on an in-memory instance; with --postgres also on
Dagster's PostgreSQL storage and on qpbot's (postgres/dagster.yaml), each in a fresh
database on that server. The differences are the cost of recording planned and
materialization events per (asset, partition), which bounds how fast per-document assets
can ingest small documents.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import dagster as dg

from qpbot_assets.runtime.instance import DAGSTER_EVENT_BATCH_SIZE

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_scale import create_postgres_database, drop_postgres_database  # noqa: E402

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


STORAGES = {
    "dagster_sqlite": "storage:\n  sqlite:\n    base_dir: {home}\n",
    "qpbot_batching_sqlite": (
        "storage:\n  custom:\n    module: qpbot_assets.runtime.dagster_storage\n"
        "    class: BatchingSqliteStorage\n    config:\n      base_dir: {home}\n"
    ),
}
POSTGRES_STORAGES = {
    "dagster_postgres": "storage:\n  postgres:\n    postgres_url: {url}\n",
    "qpbot_batching_postgres": (
        "storage:\n  custom:\n    module: qpbot_assets.runtime.dagster_postgres_storage\n"
        "    class: BatchingPostgresStorage\n    config:\n      postgres_url: {url}\n"
    ),
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--partitions", type=int, default=1000)
    parser.add_argument("--assets", type=int, default=1)
    parser.add_argument(
        "--postgres", metavar="URL", help="also on PostgreSQL: fresh databases on this server"
    )
    args = parser.parse_args()
    # As `qpbot` sets it: Dagster hands per-partition events over in batches.
    os.environ["DAGSTER_EVENT_BATCH_SIZE"] = str(DAGSTER_EVENT_BATCH_SIZE)
    seconds = {}
    for name, config in STORAGES.items():
        with tempfile.TemporaryDirectory() as home:
            (Path(home) / "dagster.yaml").write_text(config.format(home=home))
            instance = dg.DagsterInstance.from_config(home)
            seconds[name] = run_once(instance, args.partitions, args.assets)
    for name, config in (POSTGRES_STORAGES if args.postgres else {}).items():
        database, url = create_postgres_database(args.postgres)
        try:
            with tempfile.TemporaryDirectory() as home:
                (Path(home) / "dagster.yaml").write_text(config.format(url=url))
                instance = dg.DagsterInstance.from_config(home)
                seconds[name] = run_once(instance, args.partitions, args.assets)
        finally:
            drop_postgres_database(args.postgres, database)
    seconds["in_memory"] = run_once(dg.DagsterInstance.ephemeral(), args.partitions, args.assets)
    pairs = args.partitions * args.assets
    result = {"partitions": args.partitions, "assets": args.assets}
    for name, value in seconds.items():
        result[f"{name}_s"] = round(value, 2)
        result[f"{name}_ms_per_asset_partition"] = round(1000 * value / pairs, 2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
