"""Blocking checks on the search index version just written: the pointer moves only when they pass."""

from collections import Counter

import dagster as dg

from qpbot_assets.defs.indexing.assets import search_index
from qpbot_assets.defs.resources import (
    DocumentStoreResource,
    EmbeddingModelResource,
    SearchIndexResource,
)
from qpbot_assets.indexing.sync import (
    embedding_fingerprint,
    embedding_stage,
    indexed_fingerprint,
    scan,
)
from qpbot_serving import index as contract
from qpbot_serving.document_store import indexed_stage
from qpbot_serving.state import INDEX_SNAPSHOT


def snapshot_table(index: SearchIndexResource):
    """The table at exactly the version the snapshot recorded."""
    snapshot = index.state.read(INDEX_SNAPSHOT)
    table = index.connect().open_table(snapshot.table)
    table.checkout(snapshot.version)
    return table


@dg.asset_check(asset=search_index, blocking=True)
def index_rows_match_live_chunks(
    documents: DocumentStoreResource,
    index: SearchIndexResource,
) -> dg.AssetCheckResult:
    """Every live document the index records as current has exactly its chunks in the
    index, none twice. A document changed since (another run is bringing it up to date, or
    not processed yet) is counted as pending, not checked: its rows are that run's to write."""
    table = snapshot_table(index)
    model = contract.IndexInfo.from_schema(table.schema).vectors_key
    rows = scan(table, ["document_id", "chunk_id"]).to_pylist()
    in_index: dict[str, list[str]] = {}
    for row in rows:
        in_index.setdefault(row["document_id"], []).append(row["chunk_id"])
    duplicates = [cid for cid, n in Counter(r["chunk_id"] for r in rows).items() if n > 1]
    store = documents.store
    live = store.live_documents()
    indexed = indexed_stage(table.name)
    records = store.read_stages(live, ["chunks", "metadata", embedding_stage(model), indexed])
    mismatched, pending = [], []
    expected_total = 0
    for document_id in live:
        # Current: its rows were written from its vectors, its vectors from its chunks.
        record = records.get((document_id, indexed))
        vectors = records.get((document_id, embedding_stage(model)))
        chunks_record = records.get((document_id, "chunks"))
        if (
            record is None
            or vectors is None
            or record["fingerprint"]
            != indexed_fingerprint(store, document_id, model, table.name, records)
            or vectors["fingerprint"]
            != embedding_fingerprint(store, document_id, model, chunks_record)
        ):
            pending.append(document_id)
            continue
        # Quarantined: it has no rows.
        chunks = records.get((document_id, "chunks"), {}).get("output") or []
        expected = [c["chunk_id"] for c in chunks]
        expected_total += len(expected)
        if sorted(expected) != sorted(in_index.get(document_id, [])):
            mismatched.append(document_id)
    return dg.AssetCheckResult(
        passed=not duplicates and not mismatched,
        metadata={
            "index_rows": len(rows),
            "expected_rows": expected_total,
            "duplicate_chunk_ids": len(duplicates),
            "mismatched_documents": dg.MetadataValue.json(mismatched[:20]),
            "pending_documents": len(pending),
        },
    )


@dg.asset_check(asset=search_index, blocking=True)
def no_chunks_of_deleted_documents(
    documents: DocumentStoreResource, index: SearchIndexResource
) -> dg.AssetCheckResult:
    indexed = set(scan(snapshot_table(index), ["document_id"]).column("document_id").to_pylist())
    orphans = sorted(indexed - set(documents.store.live_documents()))
    return dg.AssetCheckResult(
        passed=not orphans,
        metadata={"orphan_documents": dg.MetadataValue.json(orphans[:20])},
    )


@dg.asset_check(asset=search_index, blocking=True)
def embedding_dimension_matches_model(
    index: SearchIndexResource, embedding_model: EmbeddingModelResource
) -> dg.AssetCheckResult:
    table = snapshot_table(index)
    info = contract.IndexInfo.from_schema(table.schema)
    vector_width = table.schema.field("vector").type.list_size
    model_width = embedding_model.embedder.dimension
    return dg.AssetCheckResult(
        passed=vector_width == info.dimension == model_width
        and info.vectors_key == embedding_model.embedder.vectors_key,
        metadata={
            "vector_width": vector_width,
            "model_dimension": model_width,
            "index_model": info.embedding_model,
            "index_backend": info.embedding_backend,
            "configured_model": embedding_model.model_name,
            "configured_backend": embedding_model.backend,
        },
    )
