"""Runs one store stage over the documents of a Dagster run and reports per shard.

A run covers a range of shard partitions (backfills run as one run), so each asset loops
over the live documents of `context.partition_keys`, reuses unchanged outputs, and attaches
counts to each shard's materialization. What happened to one document is in the document
store's records (`qpbot status`, the service's document status), not in Dagster.
"""

import time
from collections import Counter
from collections.abc import Callable

import dagster as dg
from tqdm import tqdm

from qpbot_assets.documents.store import DocumentStore, StageResult
from qpbot_serving.document_store import shard_of

# What each shard's materialization records (see run_for_each_document).
SHARD_COUNTS = ("documents", "recomputed", "unchanged", "quarantined", "recomputed_quarantined")


def documents_of_run(context: dg.AssetExecutionContext, store: DocumentStore) -> list[str]:
    """The live documents of the run's shards, in id order."""
    return store.live_documents(context.partition_keys)


def run_for_each_document(
    context: dg.AssetExecutionContext,
    store: DocumentStore,
    step: Callable[[str], StageResult],
) -> dg.MaterializeResult:
    """Calls `step(document_id)` for every live document of the run's shards.

    Each shard's materialization gets the counts of its documents: documents, recomputed,
    unchanged, quarantined (stopped at or before this stage) and recomputed_quarantined
    (those of them whose new version stopped: what the monitoring counts per run).
    """
    started = time.perf_counter()
    name = context.asset_key.to_user_string()
    counts: dict[str, Counter] = {shard: Counter() for shard in context.partition_keys}
    for document_id in tqdm(
        documents_of_run(context, store), desc=name, unit="doc", mininterval=1.0
    ):
        result = step(document_id)
        shard = counts[shard_of(document_id)]
        shard["documents"] += 1
        shard["recomputed" if result.computed else "unchanged"] += 1
        shard["quarantined"] += result.output is None
        shard["recomputed_quarantined"] += result.computed and result.output is None
    for shard, shard_counts in counts.items():
        metadata = {key: shard_counts[key] for key in SHARD_COUNTS}  # zeros included
        context.add_asset_metadata(metadata, partition_key=shard)
    total = sum(counts.values(), Counter())
    context.log.info(
        f"{name}: {len(counts)} shards, {dict(total)}, {time.perf_counter() - started:.2f}s"
    )
    # Not as metadata: Dagster copies a result's metadata into every partition's
    # materialization.
    return dg.MaterializeResult()
