"""Ingestion from the command line: register files or table rows as live documents, run the
ingest job in-process over the shards whose documents changed."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from qpbot_assets.defs.partitions import document_shards, partition_range_tags, shard_runs
from qpbot_assets.documents.sources import SourceObject, scan_folder, source_version
from qpbot_assets.documents.store import DocumentStore
from qpbot_assets.documents.versions import PIPELINE_VERSION, raw_fingerprint
from qpbot_assets.indexing.embedding_process import child_embedder
from qpbot_assets.runtime.instance import fail_runs_of_dead_processes, get_instance, process_tags
from qpbot_serving import index as contract
from qpbot_serving.document_store import indexed_stage
from qpbot_serving.embedding import resolve_backend
from qpbot_serving.settings import QpbotSettings, SqlSource
from qpbot_serving.state import (
    INDEX_SNAPSHOT,
    PROMOTED_INDEX,
    StateStore,
    serving_embedding_model,
)


def load_definitions():
    from qpbot_assets.definitions import defs

    return defs()


def ingest_paths(settings: QpbotSettings, paths: list[Path], quiet: bool = False) -> dict:
    """Makes the index hold exactly the given files, and for folders exactly their current
    files: new and edited files are ingested, files gone from a folder are removed.

    Runs the ingest job in this process over as few ranges of shards as possible.
    """
    store = DocumentStore(settings)
    objects: list[SourceObject] = []
    folders: list[Path] = []
    for path in (p.resolve() for p in paths):
        if path.is_dir():
            folders.append(path)
            objects.extend(scan_folder(path))
        else:
            objects.append(SourceObject(path.as_uri(), ""))
    wanted = list(dict.fromkeys(obj.document_id for obj in objects))
    store.register_sources((obj.document_id, obj.uri) for obj in objects)
    return _ingest_documents(settings, store, wanted, lambda uri: _is_under(uri, folders), quiet)


def ingest_sql(
    settings: QpbotSettings,
    source: SqlSource,
    quiet: bool = False,
    setting: Callable[[str], str] = str,
) -> dict:
    """Makes the index hold exactly the rows of a table: new and changed rows are fetched
    (only those) and ingested, rows gone from it are removed. `setting` names the flag or
    setting behind a field of `source` in errors (SqlSourceError)."""
    from qpbot_assets.documents.sql_source import SqlTable  # SQLAlchemy only when asked for

    store = DocumentStore(settings)
    with SqlTable(source, setting) as table:
        rows = table.list_rows()
        table.stage(store, rows)
    store.register_sources((row.document_id, row.uri) for row in rows)
    return _ingest_documents(
        settings,
        store,
        [row.document_id for row in rows],
        lambda uri: uri.startswith(table.uri_prefix),
        quiet,
    )


def _ingest_documents(
    settings: QpbotSettings,
    store: DocumentStore,
    wanted: list[str],
    owned: Callable[[str], bool],
    quiet: bool,
) -> dict:
    """Makes the `wanted` documents (registered already) live, marks as removed the live
    documents that `owned(source_uri)` claims for this source but are no longer wanted, and
    runs the ingest job over the shards of documents not indexed from their current version."""
    instance = get_instance(settings)
    live = store.live_documents()
    wanted_set = set(wanted)
    uris = store.source_uris(set(live) | wanted_set)  # one query per 500, not one per document
    removed = [d for d in live if d not in wanted_set and d in uris and owned(uris[d])]
    store.remove_sources(removed)

    # Only documents whose source or pipeline changed since they were indexed need a run.
    state = StateStore.from_settings(settings)
    model = serving_embedding_model(state, settings.embedding_model)
    backend = resolve_backend(settings.embedding_backend)
    table_name = contract.table_name_for(contract.vectors_key(model, backend))
    stage = indexed_stage(table_name)
    indexed = store.read_stages(wanted, [stage])
    stale = [d for d in wanted if not is_up_to_date(store, uris[d], indexed.get((d, stage)))]
    new = [d for d in stale if (d, stage) not in indexed]  # never in this index
    known = instance.get_dynamic_partitions(document_shards.name)
    new_shards, ranges = shard_runs(known, stale)
    if new_shards:
        instance.add_dynamic_partitions(document_shards.name, new_shards)
    # A run killed after writing the index but before promoting it left nothing stale.
    unpromoted = not ranges and bool(wanted) and _promotion_pending(state)
    if ranges:  # the run's model starts loading now, beside the definitions and first stages
        child_embedder(model, backend, settings.embedding_exports_dir, settings.cache_dir)
    # Loading the asset definitions imports every extractor: only when there is work.
    defs = load_definitions() if ranges or removed or unpromoted else None
    # Progress bars show the work; the run's event log is in the Dagster UI.
    log_level = "WARNING" if quiet else "INFO"
    run_config = {"loggers": {"console": {"config": {"log_level": log_level}}}}
    logging.getLogger("dagster").setLevel(log_level)
    success = True
    for first, last in ranges:
        result = execute_job(
            defs, "ingest_documents", instance, run_config, partition_range_tags(first, last)
        )
        success &= result.success
    if (removed or unpromoted) and not ranges:
        success &= execute_job(defs, "refresh_index", instance, run_config).success
    return {
        "documents": len(wanted),
        "new": len(new),
        "changed": len(stale) - len(new),
        "removed": len(removed),
        "runs": len(ranges) + bool((removed or unpromoted) and not ranges),
        "success": success,
    }


def execute_job(defs, job_name: str, instance, run_config=None, tags=None):
    """Runs a job in this process, after failing the runs of killed processes (whose held
    pool slot would block this run forever), tagged with this process for the next one."""
    fail_runs_of_dead_processes(instance)
    return defs.resolve_job_def(job_name).execute_in_process(
        run_config=run_config,
        instance=instance,
        tags={**(tags or {}), **process_tags()},
        raise_on_error=False,
    )


def _promotion_pending(state: StateStore) -> bool:
    """True when the index may hold writes the promoted pointer does not point at: the
    snapshot search_index writes after its writes is missing or is not the promoted one."""
    snapshot = state.read(INDEX_SNAPSHOT)
    promoted = state.read(PROMOTED_INDEX)
    if snapshot is None or promoted is None:
        return True
    return snapshot.label != promoted.label


def is_up_to_date(store: DocumentStore, uri: str, indexed_record: dict | None) -> bool:
    """True when a document (from `uri`, with this indexed record of the serving table) was
    indexed from its current source version by this pipeline."""
    indexed = (indexed_record or {}).get("output")
    if not indexed or indexed["pipeline_version"] != PIPELINE_VERSION:
        return False
    if uri.startswith("s3://"):
        return False  # checking an S3 object needs a client; the run itself skips unchanged ones
    return indexed["raw_fingerprint"] == raw_fingerprint(uri, source_version(uri, store=store))


def _is_under(uri: str, folders: list[Path]) -> bool:
    if not uri.startswith("file://"):
        return False
    path = Path(uri.removeprefix("file://"))
    return any(path.is_relative_to(folder) for folder in folders)


def index_status(settings: QpbotSettings) -> dict:
    """{"documents", "chunks", "quarantined": [{"source", "stage", "reason", ...}], "index_version"}"""
    store = DocumentStore(settings)
    promoted = StateStore.from_settings(settings).read(PROMOTED_INDEX)
    quarantined = [
        {
            "source": record["source"],
            "stage": record["stage"],
            "kind": record["kind"],
            "reason": record["reason"],
            "document_id": record["document_id"],
        }
        for record in store.quarantined()
    ]
    return {
        "documents": store.live_count(),
        "chunks": promoted.chunks if promoted else 0,
        "quarantined": quarantined,
        "index_version": promoted.label if promoted else None,
    }


def refresh_index(settings: QpbotSettings) -> str | None:
    """Syncs the index of the serving embedder with the live documents and promotes it (the
    refresh_index job, in-process); returns the promoted index version. An index with no
    live documents (one built outside the asset graph, like `qpbot eval retrieval`'s) is
    left as it is."""
    if DocumentStore(settings).live_count():
        result = execute_job(load_definitions(), "refresh_index", get_instance(settings))
        if not result.success:
            raise RuntimeError("the refresh_index run failed: see it in the Dagster UI")
    promoted = StateStore.from_settings(settings).read(PROMOTED_INDEX)
    return promoted.label if promoted else None
