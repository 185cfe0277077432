"""qpbot's Dagster storages record exactly what Dagster's own SQLite and PostgreSQL
storages record.

The same partitioned runs (two assets, metadata per partition, an asset check, a run that
fails) go to an instance on Dagster's storage and to one on the storage that
dagster_home/dagster.yaml (postgres/dagster.yaml) ships, with Dagster's event batching on;
every query the UI and the sensors make must answer alike. Both storages lean on private
Dagster names: when one changes, a batch fails and Dagster writes it event by event, so the
tests also check that no batch fell back.
"""

import copy
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import dagster as dg
import psycopg2
import sqlalchemy.exc
import yaml
from dagster_postgres.event_log.event_log import CHANNEL_NAME

from qpbot_assets.runtime.dagster_postgres_storage import BatchingPostgresEventLogStorage
from qpbot_assets.runtime.dagster_storage import BatchingSqliteEventLogStorage

documents = dg.DynamicPartitionsDefinition(name="documents")
KEYS = [f"doc-{i:03d}" for i in range(40)]
DAGSTER_HOME = Path(__file__).resolve().parents[1] / "dagster_home"
SHIPPED_STORAGE = yaml.safe_load((DAGSTER_HOME / "dagster.yaml").read_text())["storage"]
SHIPPED_POSTGRES_STORAGE = yaml.safe_load((DAGSTER_HOME / "postgres" / "dagster.yaml").read_text())[
    "storage"
]
FELL_BACK = "Exception while storing event batch"  # what Dagster prints before it does
FAIL_TAG = "qpbot-test/fail"


def sqlite_storage(home: Path) -> dict:
    return {"sqlite": {"base_dir": str(home)}}


def qpbot_storage(home: Path) -> dict:
    storage = copy.deepcopy(SHIPPED_STORAGE)
    storage["custom"]["config"]["base_dir"] = str(home)
    return storage


def qpbot_postgres_storage(url: str) -> dict:
    storage = copy.deepcopy(SHIPPED_POSTGRES_STORAGE)
    storage["custom"]["config"]["postgres_url"] = url
    return storage


@dg.asset(partitions_def=documents, backfill_policy=dg.BackfillPolicy.single_run())
def first(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    # One output, materialized for every partition of the run (a batch of events).
    return dg.MaterializeResult()


@dg.asset(partitions_def=documents, backfill_policy=dg.BackfillPolicy.single_run(), deps=[first])
def second(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    if context.run.tags.get(FAIL_TAG):
        raise RuntimeError("a failed run: its planned partitions are marked failed")
    # Metadata of its own for each partition, as qpbot's document stages attach it.
    for key in context.partition_keys:
        context.add_asset_metadata({"length": len(key) + 1}, partition_key=key)
    return dg.MaterializeResult()


@dg.asset_check(asset=second)
def second_is_sane() -> dg.AssetCheckResult:
    return dg.AssetCheckResult(passed=True)


def run_ranges(home: Path, storage, monkeypatch, batch_size: str) -> dg.DagsterInstance:
    """Two ranges of KEYS, the second overlapping the first, on `storage(home)`; then a
    third range in a run that fails in `second`."""
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
    failed = job.execute_in_process(
        instance=instance,
        tags={
            "dagster/asset_partition_range_start": KEYS[10],
            "dagster/asset_partition_range_end": KEYS[14],
            FAIL_TAG: "yes",
        },
        raise_on_error=False,
    )
    assert not failed.success
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
            "statuses": instance.get_status_by_partition(key, KEYS, documents),
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


def assert_plausible(expected: dict) -> None:
    """What the runs of run_ranges must have recorded, whichever storage."""
    assert expected["second"]["materialized"] == KEYS
    assert expected["second"]["planned"] == len(KEYS) + 5 + 5
    assert expected["second"]["latest_partition"] in KEYS[5:10]
    assert expected["second"]["last_run_is_latest"]
    statuses = expected["second"]["statuses"]
    assert {statuses[key].value for key in KEYS[10:15]} == {"FAILED"}
    assert {statuses[key].value for key in KEYS[:10] + KEYS[15:]} == {"MATERIALIZED"}


def test_batching_storage_records_what_sqlite_storage_records(tmp_path, monkeypatch, capfd):
    sqlite = run_ranges(tmp_path / "sqlite", sqlite_storage, monkeypatch, batch_size="0")
    batching = run_ranges(tmp_path / "batching", qpbot_storage, monkeypatch, batch_size="1000")
    assert isinstance(batching.event_log_storage, BatchingSqliteEventLogStorage)

    expected = recorded(sqlite)
    assert_plausible(expected)
    assert recorded(batching) == expected
    assert FELL_BACK not in capfd.readouterr().err


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
    instance = run_ranges(tmp_path / "home", qpbot_storage, monkeypatch, batch_size="1000")
    assert failed
    assert_batch_written_once(instance)


def assert_batch_written_once(instance) -> None:
    """After a batch that failed and was written again event by event: every partition
    materialized, each planned event there once."""
    assert sorted(instance.get_materialized_partitions(dg.AssetKey("second"))) == KEYS
    first_run = instance.get_runs()[-1]
    planned = [
        e
        for e in instance.all_logs(first_run.run_id)
        if e.dagster_event_type == dg.DagsterEventType.ASSET_MATERIALIZATION_PLANNED
    ]
    assert len(planned) == 2 * len(KEYS)


def connect(url: str):
    return closing(psycopg2.connect(url.replace("postgresql+psycopg2", "postgresql")))


def run_numbers(cursor) -> dict[str, int]:
    cursor.execute("SELECT run_id FROM runs ORDER BY id")
    return {run_id: number for number, (run_id,) in enumerate(cursor.fetchall())}


def database_rows(url: str) -> dict:
    """The rows of the tables that event writes touch, in id order, run ids numbered by run,
    without timestamps."""
    with connect(url) as conn:
        cursor = conn.cursor()
        run = run_numbers(cursor)
        queries = {
            "event_logs": "SELECT id, run_id, dagster_event_type, step_key, asset_key, partition"
            " FROM event_logs ORDER BY id",
            "asset_keys": "SELECT asset_key, last_run_id, last_materialization IS NOT NULL,"
            " last_materialization_timestamp IS NOT NULL FROM asset_keys ORDER BY asset_key",
            # Without the values: data versions are derived from the run.
            "asset_event_tags": "SELECT event_id, asset_key, key FROM asset_event_tags ORDER BY id",
            "asset_check_executions": "SELECT run_id, partition, execution_status,"
            " evaluation_event_storage_id FROM asset_check_executions ORDER BY id",
        }
        rows = {}
        for table, query in queries.items():
            cursor.execute(query)
            rows[table] = [
                tuple(run.get(value, value) if isinstance(value, str) else value for value in row)
                for row in cursor.fetchall()
            ]
        return rows


def empty_database(url: str) -> None:
    with connect(url) as conn:
        conn.autocommit = True
        conn.cursor().execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public")


@contextmanager
def notifications(url: str) -> Iterator[list[str]]:
    """What NOTIFY sends on Dagster's channel while the block runs ("<run number>_<event
    id>"), for the watchers of Dagster versions that listen."""
    payloads: list[str] = []
    with connect(url) as conn:
        conn.autocommit = True
        cursor = conn.cursor()
        cursor.execute(f"LISTEN {CHANNEL_NAME}")
        yield payloads
        run = run_numbers(cursor)  # a query: what was sent before it has arrived
        for notification in conn.notifies:
            run_id, event_id = notification.payload.rsplit("_", 1)
            payloads.append(f"{run[run_id]}_{event_id}")


def test_batching_postgres_storage_records_what_postgres_storage_records(
    postgres_database, tmp_path, monkeypatch, capfd
):
    """Dagster's PostgreSQL storage and qpbot's, one after the other in the same emptied
    database: the same answers, the same rows with the same ids, the same NOTIFYs."""
    with notifications(postgres_database) as expected_notifications:
        stock = run_ranges(
            tmp_path / "stock",
            lambda home: {"postgres": {"postgres_url": postgres_database}},
            monkeypatch,
            batch_size="1000",
        )
    expected, expected_rows = recorded(stock), database_rows(postgres_database)
    assert_plausible(expected)
    assert len(expected_notifications) > 2 * len(KEYS)  # among them every planned event's
    empty_database(postgres_database)

    with notifications(postgres_database) as batching_notifications:
        batching = run_ranges(
            tmp_path / "batching",
            lambda home: qpbot_postgres_storage(postgres_database),
            monkeypatch,
            batch_size="1000",
        )
    assert isinstance(batching.event_log_storage, BatchingPostgresEventLogStorage)
    assert recorded(batching) == expected
    assert database_rows(postgres_database) == expected_rows
    assert batching_notifications == expected_notifications
    assert FELL_BACK not in capfd.readouterr().err


def test_a_failed_postgres_batch_writes_nothing(postgres_database, tmp_path, monkeypatch, capfd):
    """A batch that fails after its event rows went in leaves none of them, and Dagster
    writes its events one by one: none lost, none twice."""
    real = BatchingPostgresEventLogStorage._store_asset_event
    failed = []

    def fails_once(self, conn, event, event_id):
        if not failed:
            failed.append(True)
            raise sqlalchemy.exc.OperationalError("INSERT", {}, Exception("connection lost"))
        return real(self, conn, event, event_id)

    monkeypatch.setattr(BatchingPostgresEventLogStorage, "_store_asset_event", fails_once)
    instance = run_ranges(
        tmp_path / "home",
        lambda home: qpbot_postgres_storage(postgres_database),
        monkeypatch,
        batch_size="1000",
    )
    assert failed
    assert FELL_BACK in capfd.readouterr().err
    assert_batch_written_once(instance)
