"""qpbot's Dagster storage records exactly what Dagster's own SQLite storage records.

The same partitioned run (two assets, metadata per partition, an asset check) goes to an
instance on `storage: sqlite` writing event by event and to one on the storage that
dagster_home/dagster.yaml ships, with Dagster's event batching on; every query the UI and
the sensors make must answer alike.
"""

import copy
from pathlib import Path

import dagster as dg
import sqlalchemy.exc
import yaml

from qpbot_assets.runtime.dagster_storage import BatchingSqliteEventLogStorage

documents = dg.DynamicPartitionsDefinition(name="documents")
KEYS = [f"doc-{i:03d}" for i in range(40)]
SHIPPED_STORAGE = yaml.safe_load(
    (Path(__file__).resolve().parents[1] / "dagster_home" / "dagster.yaml").read_text()
)["storage"]


def sqlite_storage(home: Path) -> dict:
    return {"sqlite": {"base_dir": str(home)}}


def qpbot_storage(home: Path) -> dict:
    storage = copy.deepcopy(SHIPPED_STORAGE)
    storage["custom"]["config"]["base_dir"] = str(home)
    return storage


@dg.asset(partitions_def=documents, backfill_policy=dg.BackfillPolicy.single_run())
def first(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    # One output, materialized for every partition of the run (a batch of events).
    return dg.MaterializeResult()


@dg.asset(partitions_def=documents, backfill_policy=dg.BackfillPolicy.single_run(), deps=[first])
def second(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    # Metadata of its own for each partition, as qpbot's document stages attach it.
    for key in context.partition_keys:
        context.add_asset_metadata({"length": len(key) + 1}, partition_key=key)
    return dg.MaterializeResult()


@dg.asset_check(asset=second)
def second_is_sane() -> dg.AssetCheckResult:
    return dg.AssetCheckResult(passed=True)


def run_twice(home: Path, storage, monkeypatch, batch_size: str) -> dg.DagsterInstance:
    """Both ranges of KEYS, the second overlapping the first, on `storage(home)`."""
    monkeypatch.setenv("DAGSTER_EVENT_BATCH_SIZE", batch_size)
    home.mkdir()
    (home / "dagster.yaml").write_text(yaml.safe_dump({"storage": storage(home)}))
    instance = dg.DagsterInstance.from_config(str(home))
    instance.add_dynamic_partitions(documents.name, KEYS)
    job = dg.Definitions(
        assets=[first, second],
        asset_checks=[second_is_sane],
        jobs=[dg.define_asset_job("all", partitions_def=documents)],
    ).resolve_job_def("all")
    for start, end in [(KEYS[0], KEYS[-1]), (KEYS[5], KEYS[9])]:
        result = job.execute_in_process(
            instance=instance,
            tags={
                "dagster/asset_partition_range_start": start,
                "dagster/asset_partition_range_end": end,
            },
        )
        assert result.success
    return instance


def recorded(instance: dg.DagsterInstance) -> dict:
    """What the UI, sensors and qpbot read back, without ids and timestamps."""
    answer: dict = {}
    for name in ["first", "second"]:
        key = dg.AssetKey(name)
        records = instance.fetch_materializations(key, limit=1000).records
        entry = instance.get_asset_records([key])[0].asset_entry
        answer[name] = {
            "materialized": sorted(instance.get_materialized_partitions(key)),
            "materializations": sorted(
                (r.partition_key, repr(r.asset_materialization.metadata)) for r in records
            ),
            "planned": len(
                instance.get_event_records(
                    dg.EventRecordsFilter(
                        dg.DagsterEventType.ASSET_MATERIALIZATION_PLANNED, asset_key=key
                    )
                )
            ),
            "latest_partition": entry.last_materialization_record.partition_key,
            "last_run_is_latest": entry.last_run_id == instance.get_runs(limit=1)[0].run_id,
        }
    answer["check"] = [
        e.status.value
        for e in instance.event_log_storage.get_asset_check_execution_history(
            dg.AssetCheckKey(dg.AssetKey("second"), "second_is_sane"), limit=10
        )
    ]
    answer["runs"] = [
        [
            e.dagster_event.event_type_value
            for e in instance.all_logs(run.run_id)
            if e.is_dagster_event and e.dagster_event.event_type_value.startswith("ASSET")
        ]
        for run in reversed(instance.get_runs())
    ]
    return answer


def test_batching_storage_records_what_sqlite_storage_records(tmp_path, monkeypatch):
    sqlite = run_twice(tmp_path / "sqlite", sqlite_storage, monkeypatch, batch_size="0")
    batching = run_twice(tmp_path / "batching", qpbot_storage, monkeypatch, batch_size="1000")
    assert isinstance(batching.event_log_storage, BatchingSqliteEventLogStorage)

    expected = recorded(sqlite)
    assert expected["second"]["materialized"] == KEYS
    assert expected["second"]["planned"] == len(KEYS) + 5
    assert expected["second"]["latest_partition"] in KEYS[5:10]
    assert expected["second"]["last_run_is_latest"]
    assert recorded(batching) == expected


def test_a_locked_index_falls_back_to_single_events(tmp_path, monkeypatch):
    """When the cross-run index is locked (the daemon writes it too), the batch fails with
    nothing written and Dagster writes its events one by one: none lost, none twice."""
    real = BatchingSqliteEventLogStorage.index_transaction
    failed = []

    def locked_once(self):
        if not failed:
            failed.append(True)
            raise sqlalchemy.exc.OperationalError("INSERT", {}, Exception("database is locked"))
        return real(self)

    monkeypatch.setattr(BatchingSqliteEventLogStorage, "index_transaction", locked_once)
    instance = run_twice(tmp_path / "home", qpbot_storage, monkeypatch, batch_size="1000")
    assert failed
    assert sorted(instance.get_materialized_partitions(dg.AssetKey("second"))) == KEYS
    first_run = instance.get_runs()[-1]
    planned = [
        e
        for e in instance.all_logs(first_run.run_id)
        if e.dagster_event_type == dg.DagsterEventType.ASSET_MATERIALIZATION_PLANNED
    ]
    assert len(planned) == 2 * len(KEYS)  # the failed batch (planned events) written once
