"""Dagster's PostgreSQL storage, writing each batch of asset events in one transaction.

A run over many document partitions first records an ASSET_MATERIALIZATION_PLANNED event
per (asset, partition), which Dagster hands to the storage in batches when
DAGSTER_EVENT_BATCH_SIZE is set (`instance.configure_environment` sets it). Dagster's
PostgreSQL event log writes a batch of materializations (or of observations) with one insert,
but any other batch, the planned events among them, event by event through `store_event`: the
row and its NOTIFY on one new connection, the asset's row on another (the engine keeps no
pool): a run costs 10.8 ms per (asset, partition) in bench/bench_dagster_overhead.py. This
storage writes the same rows, with the same ids, on one connection in one transaction per
batch (0.74 ms). Selected in dagster_home/postgres/dagster.yaml as `storage: custom`; the
tables are those of `storage: postgres`, so a database written by either reads with the other.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import groupby
from typing import Self

import sqlalchemy as db
from dagster._core.events import ASSET_EVENTS, BATCH_WRITABLE_EVENTS, DagsterEventType
from dagster._core.events.log import EventLogEntry
from dagster._core.storage.event_log import SqlEventLogStorageTable
from dagster._serdes import ConfigurableClassData
from dagster_postgres import DagsterPostgresStorage
from dagster_postgres.auth import PgTokenProvider
from dagster_postgres.event_log.event_log import CHANNEL_NAME, PostgresEventLogStorage
from dagster_postgres.utils import get_token_provider_from_config, pg_url_from_config

# Batches that Dagster's PostgreSQL event log already writes with one insert.
WRITTEN_AT_ONCE = [
    {DagsterEventType.ASSET_MATERIALIZATION},
    {DagsterEventType.ASSET_OBSERVATION},
]
# The NOTIFY that store_event sends per event ("<run id>_<event id>"), all in one statement;
# PostgreSQL delivers them at commit, in this order.
NOTIFY_EACH = db.text(
    "SELECT pg_notify(:channel, notify_id) FROM unnest(CAST(:notify_ids AS text[])) AS notify_id"
)


class BatchingPostgresEventLogStorage(PostgresEventLogStorage):
    def store_event_batch(self, events: Sequence[EventLogEntry]) -> None:
        event_types = {event.get_dagster_event().event_type for event in events}
        if not event_types <= BATCH_WRITABLE_EVENTS or event_types in WRITTEN_AT_ONCE:
            super().store_event_batch(events)  # refused there, or written at once already
            return
        # Left out of a batch there too (Dagster 1.13 never puts one in a batch).
        events = [
            event
            for event in events
            if not event.get_dagster_event().is_asset_failed_to_materialize
        ]
        # Consecutive asset events go together; asset check events, with their own
        # bookkeeping, are written one by one as before. The order is kept.
        for is_asset_event, group in groupby(events, key=_is_asset_event):
            if is_asset_event:
                self._store_asset_events(list(group))
            else:
                super().store_event_batch(list(group))

    def _store_asset_events(self, events: list[EventLogEntry]) -> None:
        """What store_event does per asset event: its row, its NOTIFY, its tags and the
        asset's latest-event row. If any write fails nothing is written, and Dagster writes
        the batch again event by event."""
        insert = SqlEventLogStorageTable.insert().returning(
            SqlEventLogStorageTable.c.run_id,
            SqlEventLogStorageTable.c.id,
            # Ids in the order of the events: SQLAlchemy inserts the rows in that order and
            # matches the returned ids to them.
            sort_by_parameter_order=True,
        )
        with self.index_transaction() as conn:
            inserted = conn.execute(insert, [self._event_to_row(event) for event in events]).all()
            notify_ids = [f"{run_id}_{event_id}" for run_id, event_id in inserted]
            conn.execute(NOTIFY_EACH, {"channel": CHANNEL_NAME, "notify_ids": notify_ids})
            event_ids = [int(event_id) for _, event_id in inserted]
            self._store_asset_event_tags(conn, events, event_ids)
            # An event of an asset overwrites every column its asset's row got from an earlier
            # event of the same type, so only the last of each (asset, type) is written.
            last = {
                (e.dagster_event.asset_key, e.dagster_event_type): i for i, e in enumerate(events)
            }
            for i in sorted(last.values()):
                self._store_asset_event(conn, events[i], event_ids[i])


def _is_asset_event(event: EventLogEntry) -> bool:
    # As store_event tells them: an asset event has an asset key.
    return (
        event.is_dagster_event
        and event.dagster_event_type in ASSET_EVENTS
        and event.dagster_event.asset_key is not None
    )


class BatchingPostgresStorage(DagsterPostgresStorage):
    """`storage: postgres` with the batching event log above; the same configuration."""

    def __init__(
        self,
        postgres_url: str,
        should_autocreate_tables: bool = True,
        inst_data: ConfigurableClassData | None = None,
        token_provider: PgTokenProvider | None = None,
    ):
        super().__init__(
            postgres_url, should_autocreate_tables, inst_data, token_provider=token_provider
        )
        self._event_log_storage = BatchingPostgresEventLogStorage(
            postgres_url, should_autocreate_tables, token_provider=token_provider
        )

    @classmethod
    def from_config_value(cls, inst_data: ConfigurableClassData | None, config_value) -> Self:
        return cls(
            postgres_url=pg_url_from_config(config_value),
            should_autocreate_tables=config_value.get("should_autocreate_tables", True),
            inst_data=inst_data,
            token_provider=get_token_provider_from_config(config_value),
        )
