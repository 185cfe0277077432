"""Source sensors: a watched folder, an S3 prefix and database tables.

Each lists its source, compares the listing with the last one (an object its cursor names,
`state.SourceListings`), registers new and changed documents as live and marks deleted
ones, adds the partitions of shards that get their first document, and asks for the runs
that bring the index up to date: one per contiguous range of the shards that changed.
"""

import hashlib
import json

import dagster as dg
from dagster_aws.s3 import S3Resource

from qpbot_assets.defs.ingestion.jobs import ingest_documents_job, refresh_index_job
from qpbot_assets.defs.partitions import document_shards, partition_range_tags, shard_runs
from qpbot_assets.defs.resources import DocumentStoreResource, S3SourceResource, SqlSourcesResource
from qpbot_assets.documents.sources import SourceObject, diff_listing, list_s3, scan_folder
from qpbot_assets.documents.sql_source import SqlTable
from qpbot_serving.object_store import split_s3_url
from qpbot_serving.state import SourceListings

# Rows whose documents one tick fetches: a large table's first listing is taken in over
# several ticks, each well within the sensor's time limit; the rest wait for the next.
SQL_ROWS_PER_TICK = 2000


def range_run_request(first: str, last: str, run_key: str) -> dg.RunRequest:
    """One run over the shards first..last of the ingest job."""
    return dg.RunRequest(
        run_key=run_key,
        job_name=ingest_documents_job.name,
        tags=partition_range_tags(first, last),
    )


def sync_source(
    context: dg.SensorEvaluationContext,
    documents: DocumentStoreResource,
    source_name: str,
    listing: list[SourceObject],
    previous: dict[str, str] | None = None,
) -> dg.SensorResult | dg.SkipReason:
    """Turns the difference between a listing and the last one (`previous`, else the one
    the cursor names) into records, partitions and runs. The records change first: a tick
    that fails after them repeats them harmlessly."""
    listings = SourceListings(documents.state, context.sensor_name)
    if previous is None:
        previous = listings.read(context.cursor)
    store = documents.store
    changes = diff_listing(previous, listing)
    if changes.is_empty():
        return dg.SkipReason(f"{source_name}: {len(listing)} documents, nothing changed")

    touched = changes.added + changes.changed
    store.register_sources((obj.document_id, obj.uri) for obj in touched)
    removed_ids = [SourceObject(uri, "").document_id for uri in changes.removed]
    store.remove_sources(removed_ids)

    known = context.instance.get_dynamic_partitions(document_shards.name)
    new_shards, ranges = shard_runs(known, (obj.document_id for obj in touched))
    run_requests = [
        range_run_request(first, last, _run_key("ingest", [first, last], listing))
        for first, last in ranges
    ]
    # An ingest run's search_index removes deleted documents too; alone, they need a refresh.
    if removed_ids and not run_requests:
        run_requests.append(
            dg.RunRequest(
                run_key=_run_key("removed", removed_ids, listing), job_name=refresh_index_job.name
            )
        )
    context.log.info(
        f"{source_name}: {len(changes.added)} new, {len(changes.changed)} changed, "
        f"{len(changes.removed)} removed, {len(ranges)} ingest run(s)"
    )
    return dg.SensorResult(
        run_requests=run_requests,
        dynamic_partitions_requests=(
            [document_shards.build_add_request(new_shards)] if new_shards else []
        ),
        cursor=listings.write({obj.uri: obj.version for obj in listing}, context.cursor),
    )


def _run_key(kind: str, keys: list[str], listing: list[SourceObject]) -> str:
    """Stable for the same change, so a sensor tick that repeats never runs it twice."""
    state = hashlib.sha256(json.dumps(sorted((o.uri, o.version) for o in listing)).encode())
    return f"{kind}:{keys[0]}..{keys[-1]}:{len(keys)}:{state.hexdigest()[:16]}"


@dg.sensor(
    jobs=[ingest_documents_job, refresh_index_job],
    minimum_interval_seconds=15,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Watches the inbox where uploads land ($QPBOT_HOME/inbox, or "
    "$QPBOT_STORAGE_URL/inbox/ on S3) for new, edited and deleted files.",
)
def inbox_sensor(
    context: dg.SensorEvaluationContext, documents: DocumentStoreResource, s3: S3Resource
) -> dg.SensorResult | dg.SkipReason:
    if documents.inbox_url:
        bucket, prefix = split_s3_url(documents.inbox_url)
        listing = list_s3(s3.get_client(), bucket, prefix)
        return sync_source(context, documents, documents.inbox_url, listing)
    documents.inbox_dir.mkdir(parents=True, exist_ok=True)
    return sync_source(context, documents, "inbox", scan_folder(documents.inbox_dir))


@dg.sensor(
    jobs=[ingest_documents_job, refresh_index_job],
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Watches s3://$QPBOT_S3_BUCKET/$QPBOT_S3_PREFIX for new, changed and deleted objects.",
)
def s3_sensor(
    context: dg.SensorEvaluationContext,
    documents: DocumentStoreResource,
    s3: S3Resource,
    s3_source: S3SourceResource,
) -> dg.SensorResult | dg.SkipReason:
    if not s3_source.bucket:
        return dg.SkipReason("no bucket configured: set QPBOT_S3_BUCKET (and QPBOT_S3_PREFIX)")
    listing = list_s3(s3.get_client(), s3_source.bucket, s3_source.prefix)
    return sync_source(context, documents, f"s3://{s3_source.bucket}/{s3_source.prefix}", listing)


@dg.sensor(
    jobs=[ingest_documents_job, refresh_index_job],
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Watches the tables of $QPBOT_SQL_SOURCES for new, changed and deleted rows.",
)
def sql_sensor(
    context: dg.SensorEvaluationContext,
    documents: DocumentStoreResource,
    sql_sources: SqlSourcesResource,
) -> dg.SensorResult | dg.SkipReason:
    """Lists each table's ids and versions, fetches the documents of new and changed rows
    (SQL_ROWS_PER_TICK at most) into the store, then syncs them like any source. A
    table that cannot be read fails the tick, naming its setting: the cursor stays as it
    was and no document is removed."""
    sources = sql_sources.sources
    if not sources:
        return dg.SkipReason("no tables configured: set QPBOT_SQL_SOURCES")
    previous = SourceListings(documents.state, context.sensor_name).read(context.cursor)
    store = documents.store
    listing: list[SourceObject] = []
    budget = SQL_ROWS_PER_TICK
    for position, source in enumerate(sources):

        def setting(field: str, position=position) -> str:
            return f"QPBOT_SQL_SOURCES[{position}].{field}"

        with SqlTable(source, setting) as table:
            rows = table.list_rows()
            seen = {uri: v for uri, v in previous.items() if uri.startswith(table.uri_prefix)}
            changes = diff_listing(seen, rows)
            pending = changes.added + changes.changed
            fetched = table.stage(store, pending[:budget])
            deferred = {obj.uri for obj in pending[budget:]}
        budget = max(0, budget - len(pending))
        context.log.info(
            f"{table.uri_prefix}: {len(rows)} rows, {fetched} fetched, "
            f"{len(deferred)} left for the next tick"
        )
        # Deferred rows stay as the cursor knew them: absent when new, at their old version.
        listing += [
            obj if obj.uri not in deferred else SourceObject(obj.uri, previous[obj.uri])
            for obj in rows
            if obj.uri not in deferred or obj.uri in previous
        ]
    return sync_source(context, documents, f"{len(sources)} table(s)", listing, previous)
