"""Index a BEIR corpus (one row per document) for retrieval evaluation.

The rows follow `qpbot_serving.index.chunk_schema` exactly and go into the table the service
would open for the model, so the evaluated retriever is the one that serves. No Dagster
here: evaluating a retriever needs no instance and no per-document partitions.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa

from qpbot_assets.documents.store import fingerprint
from qpbot_assets.indexing.promotion import promote_snapshot
from qpbot_assets.indexing.sync import snapshot
from qpbot_serving import index as contract
from qpbot_serving.embedding import Embedder
from qpbot_serving.state import (
    CORPUS_MARKER,
    PROMOTED_INDEX,
    CorpusMarker,
    PromotedIndex,
    StateStore,
)


def read_beir_corpus(corpus_path: Path) -> Iterator[dict]:
    """Yields {"_id", "title", "text"} per line of a BEIR corpus.jsonl."""
    with open(corpus_path, encoding="utf-8") as lines:
        for line in lines:
            if line.strip():
                yield json.loads(line)


def indexed_text(title: str, text: str, include_title: bool = True) -> str:
    """The text stored, embedded and full-text indexed for a document.

    The title goes first by default: on SciFact it raises nDCG@10 (BENCHMARKS.md,
    "Retrieval quality"), as it does in BEIR's own runs.
    """
    return f"{title}\n\n{text}" if title and include_title else text


def corpus_digest(corpus_path: Path, model_name: str, include_title: bool = True) -> str:
    """Identifies a corpus file's content and how it was indexed."""
    sha = hashlib.sha256(Path(corpus_path).read_bytes()).hexdigest()
    return fingerprint(sha, model_name, indexed_text("t", "x", include_title))


def index_beir_corpus(
    corpus_path: Path,
    home: Path,
    model_name: str,
    embedder: Embedder | None = None,
    include_title: bool = True,
) -> PromotedIndex:
    """Writes one row per corpus document into the index of `home` (a local evaluation
    home: its `StateStore.index_uri`), table
    `table_name_for(model_name)` (replaced if it exists), builds the full-text index on
    `text` (and the vector index, above `contract.VECTOR_INDEX_MIN_ROWS` rows) and moves the
    promoted pointer to the new version. Returns that pointer.

    `embedder` lets a caller reuse a loaded model; its `model_name` must be `model_name`.
    `include_title=False` indexes the abstract alone (kept to measure the difference).
    """
    from lancedb.index import FTS

    embedder = embedder or Embedder(model_name)
    if embedder.model_name != model_name:
        raise ValueError(f"embedder is {embedder.model_name}, not {model_name}")
    state = StateStore(home)
    docs = list(read_beir_corpus(corpus_path))
    texts = [indexed_text(d.get("title") or "", d["text"], include_title) for d in docs]
    vectors = embedder.encode(texts, show_progress_bar=len(texts) > 64)
    info = contract.IndexInfo(
        embedding_model=model_name,
        dimension=int(vectors.shape[1]),
        embedding_backend=embedder.backend,
    )
    schema = contract.chunk_schema(info)
    rows = []
    for doc, text, vector in zip(docs, texts, vectors, strict=True):
        row = {
            "chunk_id": f"{doc['_id']}#0",
            "document_id": str(doc["_id"]),
            "chunk_index": 0,
            "text": text,
            "title": doc.get("title") or "",
            "section": None,
            "page_start": None,
            "page_end": None,
            "source_uri": f"beir:{Path(corpus_path).name}#{doc['_id']}",
            "format": "beir",
            "author": None,
            "language": "en",
        }
        row["vector"] = vector
        rows.append(row)

    db = contract.connect(state)
    table = db.create_table(
        contract.table_name_for(info.vectors_key),
        data=pa.Table.from_pylist(rows, schema=schema),
        schema=schema,
        mode="overwrite",
    )
    table.create_index("text", config=FTS())
    contract.ensure_vector_index(table)  # as `search_index` does: none below the threshold
    promoted = promote_snapshot(state, snapshot(table, documents=len(rows)), model_name)
    state.write(
        CORPUS_MARKER,
        CorpusMarker(
            digest=corpus_digest(corpus_path, info.vectors_key, include_title),
            index=promoted.label,
        ),
    )
    return promoted


def indexed_corpus(
    corpus_path: Path,
    home: Path,
    model_name: str,
    include_title: bool = True,
    backend: str = "torch",
) -> PromotedIndex | None:
    """The promoted index in `home` if it already holds this corpus for this model and
    backend's vectors, else None."""
    state = StateStore(home)
    promoted = state.read(PROMOTED_INDEX)
    recorded = state.read(CORPUS_MARKER)
    if promoted is None or recorded is None:
        return None
    if recorded.index != promoted.label or recorded.digest != corpus_digest(
        corpus_path, contract.vectors_key(model_name, backend), include_title
    ):
        return None
    return promoted
