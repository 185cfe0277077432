"""Keeping a LanceDB table in step with the live documents, for any embedding model.

The search index (the model that serves) and a candidate index (a fine-tuned model being
evaluated) are built the same way. Each document's chunk vectors are kept in the document
store per model, recorded with the fingerprint of the chunks they were made from, so a
chunk is embedded once per model. A table receives the rows of the documents that changed
as one atomic merge per batch (their old chunks leave in the same commit), loses the rows
of deleted documents, and leaves unchanged documents alone. No Dagster here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from qpbot_assets.documents.store import (
    DocumentStore,
    Quarantined,
    StageResult,
    fingerprint,
    output_of,
)
from qpbot_assets.documents.versions import INDEX_ROWS_VERSION
from qpbot_serving import index as contract
from qpbot_serving.document_store import EMBEDDINGS_PREFIX, indexed_stage
from qpbot_serving.embedding import Embedder
from qpbot_serving.state import IndexSnapshot

MERGE_BATCH_DOCUMENTS = 500


def embedding_stage(model: str) -> str:
    """The store stage that records a document's vectors for `model`."""
    return f"{EMBEDDINGS_PREFIX}{contract.model_slug(model)}"


def embedding_fingerprint(
    store: DocumentStore, document_id: str, model: str, chunks_record: dict | None = None
) -> str:
    """`chunks_record` is the document's chunks record when the caller has read it."""
    return fingerprint(model, store.output_digest(document_id, "chunks", record=chunks_record))


def embed_documents(
    store: DocumentStore,
    embedder: Embedder,
    document_ids: Iterable[str],
    batch_size: int = 32,
    on_encoded: Callable[[int, float], None] | None = None,
) -> dict[str, StageResult]:
    """Makes sure every document has vectors from `embedder` for its current chunks.

    Only chunks without a vector from this model are encoded, all documents in one sorted
    batch (the model is loaded once); vectors of unchanged chunks are reused by chunk id.
    Returns each document's stage result (output None when its chunks are quarantined).
    `on_encoded(count, seconds)` hears how much was encoded.
    """
    import time

    model = embedder.vectors_key
    stage = embedding_stage(model)
    records = store.read_stages(document_ids, ["chunks", stage])
    # A document whose chunks stage has not run yet has nothing to embed.
    document_ids = [d for d in document_ids if (d, "chunks") in records]
    fingerprints = {
        d: embedding_fingerprint(store, d, model, records[(d, "chunks")]) for d in document_ids
    }
    pending: dict[str, tuple[list[dict], dict[str, np.ndarray]]] = {}
    for document_id in document_ids:
        record = records.get((document_id, stage))
        if record and record["fingerprint"] == fingerprints[document_id]:
            continue
        try:
            doc_chunks = output_of(records[(document_id, "chunks")], document_id, "chunks")
        except Quarantined:
            continue
        pending[document_id] = (doc_chunks, store.read_vectors(document_id, model))
    texts = {
        chunk["chunk_id"]: chunk["text"]
        for doc_chunks, known in pending.values()
        for chunk in doc_chunks
        if chunk["chunk_id"] not in known
    }
    started = time.perf_counter()
    vectors = embedder.encode(
        list(texts.values()), batch_size=batch_size, show_progress_bar=len(texts) > 64
    )
    encoded = dict(zip(texts, vectors, strict=True))
    if on_encoded:
        on_encoded(len(texts), time.perf_counter() - started)

    def embed(document_id: str) -> dict:
        if document_id not in pending:  # its chunks are quarantined: record that here too
            store.stage_output(document_id, "chunks")
        doc_chunks, known = pending[document_id]
        ids = [chunk["chunk_id"] for chunk in doc_chunks]
        matrix = np.array([known[i] if i in known else encoded[i] for i in ids], np.float32)
        store.write_vectors(document_id, model, ids, matrix.reshape(len(ids), -1))
        new = sum(i not in known for i in ids)
        return {"model": model, "chunks": len(ids), "embedded": new, "reused": len(ids) - new}

    return {
        document_id: store.run_stage(
            document_id,
            stage,
            fingerprints[document_id],
            lambda document_id=document_id: embed(document_id),
        )
        for document_id in document_ids
    }


def document_rows(store: DocumentStore, document_id: str, model: str) -> list[dict]:
    """The index rows of one document with `model`'s vectors (none when it is quarantined)."""
    try:
        doc_chunks = store.stage_output(document_id, "chunks")
        meta = store.stage_output(document_id, "metadata")
        store.stage_output(document_id, embedding_stage(model))
    except Quarantined:
        return []
    vectors = store.read_vectors(document_id, model)
    # Word and text files have no pages of their own: a citation must not say "page 1".
    paged = meta["format"] in contract.PAGED_FORMATS
    return [
        {
            "chunk_id": chunk["chunk_id"],
            "document_id": document_id,
            "chunk_index": chunk["chunk_index"],
            "text": chunk["text"],
            "title": meta["title"],
            "section": chunk["section"],
            "page_start": chunk["page_start"] if paged else None,
            "page_end": chunk["page_end"] if paged else None,
            "source_uri": meta["source_uri"],
            "format": meta["format"],
            "author": meta["author"],
            "language": meta["language"],
            "vector": vectors[chunk["chunk_id"]],
        }
        for chunk in doc_chunks
    ]


def open_or_create_table(db, embedder: Embedder):
    """The table of `embedder`'s vectors, created empty (with its IndexInfo) if missing."""
    name = contract.table_name_for(embedder.vectors_key)
    if name in db.list_tables().tables:
        table = db.open_table(name)
        info = contract.IndexInfo.from_schema(table.schema)
        if info.vectors_key != embedder.vectors_key:
            raise ValueError(
                f"table {name} holds vectors of {info.vectors_key}, not "
                f"{embedder.vectors_key}; remove the index folder or pick another model"
            )
        return table
    info = contract.IndexInfo(
        embedding_model=embedder.model_name,
        dimension=embedder.dimension,
        embedding_backend=embedder.backend,
    )
    return db.create_table(name, schema=contract.chunk_schema(info))


def scan(table, columns: list[str], where: str | None = None) -> pa.Table:
    """Some columns of all (or the matching) rows, without reading the vectors."""
    query = table.search().select(columns).limit(None)
    return (query.where(where) if where else query).to_arrow()


def in_filter(document_ids: list[str]) -> str:
    quoted = ", ".join("'" + d.replace("'", "''") + "'" for d in document_ids)
    return f"document_id IN ({quoted})"


def indexed_fingerprint(
    store: DocumentStore, document_id: str, model: str, table: str, records: dict | None = None
) -> str:
    """Changes whenever a document's rows would: its vectors or its metadata. `records`
    holds the document's embedding and metadata records when the caller read them in bulk
    (`DocumentStore.read_stages`)."""
    if records is None:
        stages = [embedding_stage(model), "metadata"]
        records = store.read_stages([document_id], stages)
    return fingerprint(
        table,
        records.get((document_id, embedding_stage(model))),
        store.output_digest(
            document_id, "metadata", record=records.get((document_id, "metadata"), {})
        ),
        INDEX_ROWS_VERSION,
    )


def sync_table(
    store: DocumentStore,
    table,
    embedder: Embedder,
    live: list[str],
    record: Callable[[str], dict],
    batch_size: int = 32,
) -> dict:
    """Brings `table` (of `embedder`'s model) in step with the `live` documents.

    Documents whose rows would change are embedded where needed and written as an atomic
    merge per batch; rows of documents not in `live` are deleted; the full-text index is
    created or refreshed, and the vector index once the table is large enough
    (`contract.ensure_vector_index`). `record(document_id)` is stored with each written
    document. Returns counts, what happened to the vector index and the table's snapshot
    (table, version, model, dimension, chunks, documents).
    """
    from lancedb.index import FTS

    model = embedder.vectors_key
    stage = indexed_stage(table.name)
    # Every live document's records in a few queries: at a million documents, one read
    # per document and stage would take minutes on each run.
    records = store.read_stages(live, ["chunks", "metadata", embedding_stage(model), stage])
    changed = [
        document_id
        for document_id in live
        if (document_id, "chunks") in records  # else nothing to write yet
        and (records.get((document_id, stage)) or {}).get("fingerprint")
        != indexed_fingerprint(store, document_id, model, table.name, records)
    ]
    embed_documents(store, embedder, changed, batch_size)  # usually all there already

    written_rows = 0
    batches = range(0, len(changed), MERGE_BATCH_DOCUMENTS)
    for start in tqdm(batches, desc=table.name, unit="batch", disable=len(batches) < 2):
        batch = changed[start : start + MERGE_BATCH_DOCUMENTS]
        rows = [row for document_id in batch for row in document_rows(store, document_id, model)]
        (
            table.merge_insert("chunk_id")
            .when_matched_update_all()
            .when_not_matched_insert_all()
            .when_not_matched_by_source_delete(in_filter(batch))
            .execute(pa.Table.from_pylist(rows, schema=table.schema))
        )
        written_rows += len(rows)
        for document_id in batch:  # recorded after the commit: a crash in between redoes it
            fp = indexed_fingerprint(store, document_id, model, table.name)
            store.run_stage(document_id, stage, fp, lambda d=document_id: record(d))

    indexed = set(scan(table, ["document_id"]).column("document_id").unique().to_pylist())
    orphans = sorted(indexed - set(live))
    if orphans:
        table.delete(in_filter(orphans))

    if table.count_rows() and not any(i.index_type == "FTS" for i in table.list_indices()):
        table.create_index("text", config=FTS())
    if changed or orphans:
        table.optimize()  # folds new rows into both indexes and compacts small files
    return {
        "written_documents": len(changed),
        "written_rows": written_rows,
        "removed_documents": orphans,
        "vector_index": contract.ensure_vector_index(table),
        "snapshot": snapshot(table, len(indexed & set(live))),
    }


def snapshot(table, documents: int) -> IndexSnapshot:
    """What a pointer to this table's current version records."""
    info = contract.IndexInfo.from_schema(table.schema)
    return IndexSnapshot(
        table=table.name,
        version=table.version,
        embedding_model=info.embedding_model,
        embedding_backend=info.embedding_backend,
        dimension=info.dimension,
        chunks=table.count_rows(),
        documents=documents,
    )


def reembed_table(source, db, embedder: Embedder, batch_size: int = 32, rows_per_write: int = 2048):
    """A new table for `embedder`'s model with every row of `source` (a table at a fixed
    version) and its text embedded again: a candidate index built beside the live one.
    Returns the new table, with its full-text index (and vector index, when large enough)."""
    from lancedb.index import FTS

    name = contract.table_name_for(embedder.vectors_key)
    if name in db.list_tables().tables:
        db.drop_table(name)  # a half-built candidate from an interrupted run
    table = open_or_create_table(db, embedder)
    columns = [field.name for field in contract.CHUNK_COLUMNS]
    rows = scan(source, columns)
    progress = tqdm(total=rows.num_rows, desc=f"re-embed into {name}", unit="chunk")
    for start in range(0, rows.num_rows, rows_per_write):
        part = rows.slice(start, rows_per_write)
        vectors = embedder.encode(part.column("text").to_pylist(), batch_size=batch_size)
        vector_type = table.schema.field("vector").type
        part = part.append_column("vector", pa.array(list(vectors), type=vector_type))
        table.add(part.cast(table.schema))
        progress.update(part.num_rows)
    progress.close()
    if table.count_rows():
        table.create_index("text", config=FTS())
    table.optimize()
    contract.ensure_vector_index(table)
    return table


def adopt_table_vectors(store: DocumentStore, table, record: Callable[[str], dict]) -> int:
    """Records in the document store the vectors a re-embedded table holds, for documents
    the store knows, as if `embed_documents` and `sync_table` had made them: after the
    table is promoted, ingestion finds them current and embeds nothing again. Returns
    the number of documents adopted."""
    info = contract.IndexInfo.from_schema(table.schema)
    model = info.vectors_key
    rows = table.search().select(["document_id", "chunk_id", "vector"]).limit(None).to_arrow()
    by_document: dict[str, list[int]] = {}
    for position, document_id in enumerate(rows.column("document_id").to_pylist()):
        by_document.setdefault(document_id, []).append(position)
    chunk_ids = rows.column("chunk_id").to_pylist()
    vectors = rows.column("vector").to_numpy(zero_copy_only=False)
    adopted = 0
    for document_id, positions in by_document.items():
        record_of_chunks = store.read_stage(document_id, "chunks")
        if not record_of_chunks or "output" not in record_of_chunks:
            continue  # not a document of this store (an index built outside the graph)
        ids = [chunk_ids[p] for p in positions]
        if sorted(ids) != sorted(c["chunk_id"] for c in record_of_chunks["output"]):
            continue  # its chunks changed since: the next sync embeds it
        matrix = np.stack([np.asarray(vectors[p], dtype=np.float32) for p in positions])
        store.write_vectors(document_id, model, ids, matrix)
        output = {"model": model, "chunks": len(ids), "embedded": len(ids), "reused": 0}
        store.run_stage(
            document_id,
            embedding_stage(model),
            embedding_fingerprint(store, document_id, model),
            lambda output=output: output,
        )
        fp = indexed_fingerprint(store, document_id, model, table.name)
        store.run_stage(document_id, indexed_stage(table.name), fp, lambda d=document_id: record(d))
        adopted += 1
    return adopted
