"""Embeddings, the LanceDB search index, its checked snapshot and the promoted pointer."""

import json
import time

import dagster as dg
import numpy as np
import pyarrow as pa
from tqdm import tqdm

from qpbot_assets.defs.ingestion.assets import (
    PER_DOCUMENT,
    PIPELINE_VERSION,
    chunks,
    document_metadata,
)
from qpbot_assets.document_stages import run_for_each_document
from qpbot_assets.documents.store import DocumentStore, Quarantined, fingerprint
from qpbot_assets.partitions import documents_partitions
from qpbot_assets.resources import (
    DocumentStoreResource,
    EmbeddingModelResource,
    SearchIndexResource,
)
from qpbot_serving import index as contract

INDEXING = {**PER_DOCUMENT, "group_name": "indexing"}
SNAPSHOT_FILE = "SNAPSHOT.json"  # the checked candidate; promoted_index copies it to PROMOTED.json


@dg.asset(**INDEXING, deps=[chunks], kinds={"pytorch"})
def chunk_embeddings(
    context: dg.AssetExecutionContext,
    documents: DocumentStoreResource,
    embedding_model: EmbeddingModelResource,
) -> dg.MaterializeResult:
    """Unit vectors of each chunk from the sentence-transformers model. Only chunks not yet
    embedded by this model are encoded, all documents of the run in one sorted batch, so an
    edit re-embeds only the chunks that changed and a metadata change re-embeds nothing."""
    store = documents.store
    model = embedding_model.model_name

    def input_fp(document_id: str) -> str:
        return fingerprint(model, store.output_digest(document_id, "chunks"))

    # Gather the chunks that need a vector across all documents of the run, then encode once.
    pending: dict[str, tuple[list[dict], dict[str, np.ndarray]]] = {}
    for document_id in context.partition_keys:
        record = store.read_stage(document_id, "embeddings")
        if record and record["fingerprint"] == input_fp(document_id):
            continue
        try:
            doc_chunks = store.stage_output(document_id, "chunks")
        except Quarantined:
            continue
        known = (
            store.read_vectors(document_id) if record and record["output"]["model"] == model else {}
        )
        pending[document_id] = (doc_chunks, known)
    texts = {
        chunk["chunk_id"]: chunk["text"]
        for doc_chunks, known in pending.values()
        for chunk in doc_chunks
        if chunk["chunk_id"] not in known
    }
    started = time.perf_counter()
    encoded = dict(
        zip(
            texts,
            embedding_model.embedder.encode(
                list(texts.values()),
                batch_size=embedding_model.batch_size,
                show_progress_bar=len(texts) > 64,
            ),
            strict=True,
        )
    )
    encode_seconds = time.perf_counter() - started

    def step(document_id: str):
        def embed() -> dict:
            if document_id not in pending:  # its chunks are quarantined: record that here too
                store.stage_output(document_id, "chunks")
            doc_chunks, known = pending[document_id]
            ids = [chunk["chunk_id"] for chunk in doc_chunks]
            vectors = [known[i] if i in known else encoded[i] for i in ids]
            dimension = embedding_model.embedder.dimension
            store.write_vectors(
                document_id, ids, np.array(vectors, dtype=np.float32).reshape(-1, dimension)
            )
            new = sum(i not in known for i in ids)
            return {"model": model, "chunks": len(ids), "embedded": new, "reused": len(ids) - new}

        result = store.run_stage(document_id, "embeddings", input_fp(document_id), embed)
        out = result.output or {}
        return result, {key: out.get(key, 0) for key in ("chunks", "embedded", "reused")}

    context.log.info(f"encoded {len(texts)} chunks in {encode_seconds:.1f}s")
    return run_for_each_document(context, step)


def document_rows(store: DocumentStore, document_id: str) -> list[dict]:
    """The index rows of one document (none when it is quarantined)."""
    try:
        doc_chunks = store.stage_output(document_id, "chunks")
        meta = store.stage_output(document_id, "metadata")
        store.stage_output(document_id, "embeddings")
    except Quarantined:
        return []
    vectors = store.read_vectors(document_id)
    rows = []
    for chunk in doc_chunks:
        row = {
            "chunk_id": chunk["chunk_id"],
            "document_id": document_id,
            "chunk_index": chunk["chunk_index"],
            "text": chunk["text"],
            "title": meta["title"],
            "section": chunk["section"],
            "page_start": chunk["page_start"],
            "page_end": chunk["page_end"],
            "source_uri": meta["source_uri"],
            "format": meta["format"],
            "author": meta["author"],
            "language": meta["language"],
        }
        vector = vectors[chunk["chunk_id"]]
        row["vector"] = vector
        rows.append(row)
    return rows


def open_or_create_table(index: SearchIndexResource, embedding_model: EmbeddingModelResource):
    db = index.connect()
    name = contract.table_name_for(embedding_model.model_name)
    if name in db.list_tables().tables:
        table = db.open_table(name)
        info = contract.IndexInfo.from_schema(table.schema)
        if info.embedding_model != embedding_model.model_name:
            raise ValueError(
                f"table {name} holds vectors of {info.embedding_model}, not "
                f"{embedding_model.model_name}; remove {index.index_dir} or pick another model"
            )
        return table
    info = contract.IndexInfo(
        embedding_model=embedding_model.model_name,
        dimension=embedding_model.embedder.dimension,
    )
    return db.create_table(name, schema=contract.chunk_schema(info))


def scan(table, columns: list[str], where: str | None = None) -> pa.Table:
    """Some columns of all (or the matching) rows, without reading the vectors."""
    query = table.search().select(columns).limit(None)
    return (query.where(where) if where else query).to_arrow()


def _in_filter(document_ids: list[str]) -> str:
    quoted = ", ".join("'" + d.replace("'", "''") + "'" for d in document_ids)
    return f"document_id IN ({quoted})"


def live_document_ids(context) -> list[str]:
    return context.instance.get_dynamic_partitions(documents_partitions.name)


def indexed_fingerprint(store: DocumentStore, document_id: str, table_name: str) -> str:
    """Changes whenever a document's rows would: its embeddings or its metadata."""
    return fingerprint(
        table_name,
        store.read_stage(document_id, "embeddings"),
        store.output_digest(document_id, "metadata"),
    )


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
    from lancedb.index import FTS

    store = documents.store
    table = open_or_create_table(index, embedding_model)
    live = live_document_ids(context)
    changed = [
        document_id
        for document_id in live
        if (store.read_stage(document_id, "indexed") or {}).get("fingerprint")
        != indexed_fingerprint(store, document_id, table.name)
    ]

    written_rows = 0
    batches = range(0, len(changed), 500)
    for start in tqdm(batches, desc="search_index", unit="batch", disable=len(batches) < 2):
        batch = changed[start : start + 500]
        rows = [row for document_id in batch for row in document_rows(store, document_id)]
        (
            table.merge_insert("chunk_id")
            .when_matched_update_all()
            .when_not_matched_insert_all()
            .when_not_matched_by_source_delete(_in_filter(batch))
            .execute(pa.Table.from_pylist(rows, schema=table.schema))
        )
        written_rows += len(rows)
        for document_id in batch:  # recorded after the commit: a crash in between redoes it
            record = {
                "table": table.name,
                "raw_fingerprint": (store.read_stage(document_id, "raw") or {}).get("fingerprint"),
                "pipeline_version": PIPELINE_VERSION,
            }
            fp = indexed_fingerprint(store, document_id, table.name)
            store.run_stage(document_id, "indexed", fp, lambda record=record: record)

    indexed = set(scan(table, ["document_id"]).column("document_id").unique().to_pylist())
    orphans = sorted(indexed - set(live))
    if orphans:
        table.delete(_in_filter(orphans))
    for document_id in orphans:
        store.forget(document_id)

    if table.count_rows() and not any(i.index_type == "FTS" for i in table.list_indices()):
        table.create_index("text", config=FTS())
    if changed or orphans:
        table.optimize()  # folds new rows into the full-text index and compacts small files

    snapshot = {
        "table": table.name,
        "version": table.version,
        "embedding_model": embedding_model.model_name,
        "dimension": contract.IndexInfo.from_schema(table.schema).dimension,
        "chunks": table.count_rows(),
        "documents": len(indexed & set(live)),
    }
    index.index_dir.mkdir(parents=True, exist_ok=True)
    contract.atomic_write_json(index.index_dir / SNAPSHOT_FILE, snapshot)
    sample = table.search().limit(5).select(["title", "page_start", "text"]).to_list()
    preview = "\n".join(
        f"| {r['title'][:40]} | {r['page_start']} | {r['text'][:80].replace('|', ' ')} |"
        for r in sample
    )
    context.log.info(f"search_index: {len(changed)} documents written, {len(orphans)} removed")
    return dg.MaterializeResult(
        metadata={
            **snapshot,
            "written_documents": len(changed),
            "written_rows": written_rows,
            "removed_documents": len(orphans),
            "sample": dg.MetadataValue.md("| title | page | text |\n|---|---|---|\n" + preview),
        }
    )


@dg.asset(
    deps=[search_index],
    group_name="indexing",
    kinds={"lancedb"},
    automation_condition=dg.AutomationCondition.eager()
    & dg.AutomationCondition.all_deps_blocking_checks_passed(),
)
def promoted_index(index: SearchIndexResource) -> dg.MaterializeResult:
    """The pointer the answer service reads: the last index version whose blocking checks passed."""
    snapshot = json.loads((index.index_dir / SNAPSHOT_FILE).read_text())
    promoted = contract.write_promoted(index.index_dir, **snapshot)
    return dg.MaterializeResult(
        metadata={
            "index_version": promoted.label,
            "chunks": promoted.chunks,
            "documents": promoted.documents,
            "promoted_at": promoted.promoted_at,
        }
    )
