"""Embeddings, the LanceDB search index, its checked snapshot and the promoted pointer."""

import dagster as dg

from qpbot_assets.defs.document_runs import documents_of_run, run_for_each_document
from qpbot_assets.defs.ingestion.assets import PER_DOCUMENT, chunks, document_metadata
from qpbot_assets.defs.resources import (
    DocumentStoreResource,
    EmbeddingModelResource,
    SearchIndexResource,
)
from qpbot_assets.documents.store import DocumentStore
from qpbot_assets.documents.versions import PIPELINE_VERSION
from qpbot_assets.indexing.promotion import StaleSnapshot, promote_snapshot
from qpbot_assets.indexing.sync import embed_documents, open_or_create_table, sync_table
from qpbot_serving.state import INDEX_SNAPSHOT

INDEXING = {**PER_DOCUMENT, "group_name": "indexing"}


@dg.asset(**INDEXING, deps=[chunks], kinds={"pytorch"})
def chunk_embeddings(
    context: dg.AssetExecutionContext,
    documents: DocumentStoreResource,
    embedding_model: EmbeddingModelResource,
) -> dg.MaterializeResult:
    """Unit vectors of each chunk from the sentence-transformers model that serves. Only
    chunks not yet embedded by this model are encoded, all documents of the run in one
    sorted batch, so an edit re-embeds only the chunks that changed and a metadata change
    re-embeds nothing."""
    store = documents.store
    results = embed_documents(
        store,
        embedding_model.embedder,
        documents_of_run(context, store),
        embedding_model.batch_size,
        on_encoded=lambda n, s: context.log.info(f"encoded {n} chunks in {s:.1f}s"),
    )
    return run_for_each_document(context, store, results.__getitem__)


def index_record(store: DocumentStore, document_id: str) -> dict:
    """What `qpbot ingest` reads to skip a document indexed from its current source."""
    return {
        "raw_fingerprint": (store.read_stage(document_id, "raw") or {}).get("fingerprint"),
        "pipeline_version": PIPELINE_VERSION,
    }


@dg.asset(
    deps=[chunk_embeddings, document_metadata],
    group_name="indexing",
    kinds={"lancedb"},
    pool="search_index",
    # Also after a backfill launched from the UI; documents not processed yet have no rows.
    automation_condition=dg.AutomationCondition.eager().without(
        ~dg.AutomationCondition.any_deps_missing()
    ),
)
def search_index(
    context: dg.AssetExecutionContext,
    documents: DocumentStoreResource,
    index: SearchIndexResource,
    embedding_model: EmbeddingModelResource,
) -> dg.MaterializeResult:
    """One LanceDB table with every live document's chunks, vectors and a native full-text
    index. Changed documents are written as one atomic replace per batch (their old chunks
    leave in the same commit), chunks of deleted documents are removed, unchanged documents
    are not touched. The version it ends at is the candidate that the checks examine."""
    store = documents.store
    embedder = embedding_model.embedder
    table = open_or_create_table(index.connect(), embedder)
    live = store.live_documents()
    # Until the new snapshot is written, the table may hold writes nobody checked: a run
    # killed in between leaves no snapshot, and `qpbot ingest` then refreshes the index.
    index.state.clear(INDEX_SNAPSHOT)
    synced = sync_table(
        store, table, embedder, live, lambda d: index_record(store, d), embedding_model.batch_size
    )
    for document_id in synced["removed_documents"]:
        store.forget(document_id)
    snapshot = index.state.write(INDEX_SNAPSHOT, synced["snapshot"])
    context.log.info(
        f"search_index: {synced['written_documents']} documents written, "
        f"{len(synced['removed_documents'])} removed"
    )
    return dg.MaterializeResult(
        metadata={
            **snapshot.model_dump(),
            "written_documents": synced["written_documents"],
            "written_rows": synced["written_rows"],
            "removed_documents": len(synced["removed_documents"]),
            "vector_index": synced["vector_index"]["vector_index"],
            "vector_index_reason": synced["vector_index"]["reason"],
            "sample": sample_preview(table),
        }
    )


def sample_preview(table) -> dg.MetadataValue:
    """A few rows as a markdown table, for the asset's page in the UI."""
    sample = table.search().limit(5).select(["title", "page_start", "text"]).to_list()
    rows = "\n".join(
        f"| {r['title'][:40]} | {r['page_start']} | {r['text'][:80].replace('|', ' ')} |"
        for r in sample
    )
    return dg.MetadataValue.md("| title | page | text |\n|---|---|---|\n" + rows)


@dg.asset(
    deps=[search_index],
    group_name="indexing",
    kinds={"lancedb"},
    automation_condition=dg.AutomationCondition.eager()
    & dg.AutomationCondition.all_deps_blocking_checks_passed(),
)
def promoted_index(
    index: SearchIndexResource, embedding_model: EmbeddingModelResource
) -> dg.MaterializeResult:
    """The pointer the answer service reads: the last index version whose blocking checks passed."""
    snapshot = index.state.read(INDEX_SNAPSHOT)
    try:
        promoted = promote_snapshot(index.state, snapshot, embedding_model.configured_model)
    except StaleSnapshot as stale:  # from a run that started before a fine-tune's promotion
        return dg.MaterializeResult(metadata={"pointer_unchanged": str(stale)})
    return dg.MaterializeResult(
        metadata={
            "index_version": promoted.label,
            "chunks": promoted.chunks,
            "documents": promoted.documents,
            "promoted_at": promoted.promoted_at,
        }
    )
