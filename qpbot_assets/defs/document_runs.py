"""Runs one store stage over the documents of a Dagster run and reports per document.

A run covers a range of document partitions (backfills run as one run), so each asset loops
over `context.partition_keys`, reuses unchanged outputs, and attaches metadata to each
partition's materialization.
"""

import time
from collections.abc import Callable

import dagster as dg
from tqdm import tqdm

from qpbot_assets.documents.store import StageResult

# Dagster checks each per-partition metadata call against every partition of the run, so
# for large backfills no document gets metadata of its own (the details stay in the store).
MAX_DOCUMENTS_WITH_OWN_METADATA = 100


def run_for_each_document(
    context: dg.AssetExecutionContext,
    step: Callable[[str], tuple[StageResult, dict]],
) -> dg.MaterializeResult:
    """Calls `step(document_id)` for every partition in the run.

    `step` returns the stage result and metadata for that document, attached to its
    materialization in runs of up to MAX_DOCUMENTS_WITH_OWN_METADATA documents; the run's
    summary (documents, recomputed, reused, quarantined, seconds) goes to the run's log.
    """
    computed = reused = quarantined = 0
    started = time.perf_counter()
    name = context.asset_key.to_user_string()
    own_metadata = len(context.partition_keys) <= MAX_DOCUMENTS_WITH_OWN_METADATA
    for document_id in tqdm(context.partition_keys, desc=name, unit="doc", mininterval=1.0):
        step_started = time.perf_counter()
        result, metadata = step(document_id)
        computed += result.computed
        reused += not result.computed
        quarantined += result.output is None
        if own_metadata:
            context.add_asset_metadata(
                {
                    **metadata,
                    "recomputed": result.computed,
                    "seconds": round(time.perf_counter() - step_started, 4),
                },
                partition_key=document_id,
            )
    summary = {
        "run_documents": len(context.partition_keys),
        "run_recomputed": computed,
        "run_unchanged": reused,
        "run_quarantined": quarantined,
        "run_seconds": round(time.perf_counter() - started, 2),
    }
    context.log.info(f"{name}: {summary}")
    # Not as metadata: Dagster copies a result's metadata into every partition's
    # materialization, 755 bytes per document and asset, twice on SQLite (BENCHMARKS.md).
    return dg.MaterializeResult()
