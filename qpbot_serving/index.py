"""The index contract shared by the write side (assets) and the read side (service).

One LanceDB table per embedding model holds every chunk with its vector and a native
full-text index. The table's schema metadata records how its vectors were made, so a query
is always embedded with the same model. The service reads only the promoted pointer
(`state.PROMOTED_INDEX`): a table name and a LanceDB version, written after the checks pass.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa

if TYPE_CHECKING:
    from qpbot_serving.state import StateStore

PAGED_FORMATS = frozenset({"pdf"})  # formats whose chunks carry page numbers

# Columns besides the vector.
CHUNK_COLUMNS: list[pa.Field] = [
    pa.field("chunk_id", pa.string(), nullable=False),
    pa.field("document_id", pa.string(), nullable=False),
    pa.field("chunk_index", pa.int32()),
    pa.field("text", pa.string()),
    pa.field("title", pa.string()),
    pa.field("section", pa.string()),
    pa.field("page_start", pa.int32()),
    pa.field("page_end", pa.int32()),
    pa.field("source_uri", pa.string()),
    pa.field("format", pa.string()),
    pa.field("author", pa.string()),
    pa.field("language", pa.string()),
]


# How vectors are computed (qpbot_serving.embedding); backends of one family make
# interchangeable vectors, so an index is searched with any backend of its own family.
EMBEDDING_BACKENDS = ("torch", "onnx", "onnx-int8")
_VECTOR_FAMILY = {"torch": "float32", "onnx": "float32", "onnx-int8": "int8"}


def vector_family(backend: str) -> str:
    """ "float32" or "int8"."""
    if backend not in _VECTOR_FAMILY:
        raise ValueError(
            f"unknown embedding backend {backend!r}: use one of {', '.join(EMBEDDING_BACKENDS)}"
        )
    return _VECTOR_FAMILY[backend]


def same_vectors(backend: str, other: str) -> bool:
    """Whether two backends make interchangeable vectors."""
    return vector_family(backend) == vector_family(other)


def vectors_key(embedding_model: str, backend: str) -> str:
    """Names the vectors a model makes with a backend: the model's name for float32 (as
    before backends existed), `<model>@int8` for int8. Tables, stored vectors and store
    stages are per key, so int8 vectors never mix with float32 ones."""
    family = vector_family(backend)
    return embedding_model if family == "float32" else f"{embedding_model}@{family}"


@dataclass(frozen=True)
class IndexInfo:
    """How the vectors of a table were made; stored in the table's schema metadata."""

    embedding_model: str
    dimension: int
    embedding_backend: str = "torch"  # tables written before backends existed: torch

    @property
    def vectors_key(self) -> str:
        return vectors_key(self.embedding_model, self.embedding_backend)

    def to_metadata(self) -> dict[bytes, bytes]:
        return {b"qpbot.index": json.dumps(asdict(self)).encode()}

    @classmethod
    def from_schema(cls, schema: pa.Schema) -> IndexInfo:
        raw = (schema.metadata or {}).get(b"qpbot.index")
        if raw is None:
            raise ValueError(
                "this LanceDB table was not written by qpbot (no qpbot.index metadata)"
            )
        return cls(**json.loads(raw))


def chunk_schema(info: IndexInfo) -> pa.Schema:
    vector = pa.field("vector", pa.list_(pa.float32(), info.dimension))
    return pa.schema([*CHUNK_COLUMNS, vector], metadata=info.to_metadata())


def model_slug(embedding_model: str) -> str:
    """A short, file-safe name for a model (the last part of its name or path)."""
    slug = re.sub(r"[^a-z0-9]+", "-", Path(embedding_model).name.lower()).strip("-")
    return slug or "model"


def table_name_for(vectors: str) -> str:
    """A table per embedding model (a `vectors_key`), so a new model builds beside the live
    one."""
    return f"chunks__{model_slug(vectors)}"


def connect(state: StateStore):
    """The LanceDB database of a state store: under QPBOT_HOME, or on object storage with
    QPBOT_STORAGE_URL (`StateStore.index_uri`); every side opens the index through here."""
    import lancedb

    return lancedb.connect(state.index_uri, storage_options=state.storage_options or None)


# --- the vector index ------------------------------------------------------------------
# Below this many rows the flat scan (exact, about 1 ms per 1,000 rows on two cores) costs
# no more than the index: both take ~4.5 ms at SciFact's 5,183 rows, and the scan 40-100 ms
# at 100k. Above it, `ensure_vector_index` builds one (BENCHMARKS.md, "Serving latency").
VECTOR_INDEX_MIN_ROWS = 10_000
VECTOR_INDEX_NAME = "vector_idx"
VECTOR_INDEX_TYPE = "IVF_HNSW_FLAT"
# One HNSW graph per IVF partition; a query searches all of them (retrieval.py sets nprobes
# to their number), so partitions only bound the memory of building one graph.
VECTOR_INDEX_ROWS_PER_GRAPH = 1_000_000
# Each `table.optimize()` indexes the rows added since into a new delta segment, which every
# query also searches; past this many segments the index is rebuilt as one.
VECTOR_INDEX_MAX_SEGMENTS = 4


def vector_index_partitions(rows: int) -> int:
    return max(1, -(-rows // VECTOR_INDEX_ROWS_PER_GRAPH))


def vector_index_of(table):
    """The index on the `vector` column (its `IndexConfig`), or None."""
    return next((i for i in table.list_indices() if list(i.columns) == ["vector"]), None)


def ensure_vector_index(table, min_rows: int | None = None) -> dict:
    """Gives `table` an approximate nearest-neighbour index on `vector` once it holds at
    least `min_rows` (default VECTOR_INDEX_MIN_ROWS) rows; call it after `table.optimize()`, which has already added new rows
    to an existing index.

    The index is HNSW over the full float32 vectors (cosine), one graph per IVF partition,
    so its distances are the exact ones and need no re-scoring; it holds a copy of the
    vectors (about 1.6 KB a row in memory for 384 dimensions). It is (re)built when
    missing, when it is of another kind or distance, when it has collected more than
    VECTOR_INDEX_MAX_SEGMENTS delta segments or when over a tenth of the rows are not in it
    (queries scan those flat); otherwise left alone. An index is kept when the table shrinks
    below `min_rows` (it stays correct, just not needed). A failure to build leaves the
    table as it was (searches stay right, only slower) and is reported, not raised.

    Returns what it did, for the asset's metadata: {"vector_index": "created" | "rebuilt" |
    "kept" | "none" | "failed", "rows", "segments", "seconds", "reason"}.
    """
    from lancedb.index import HnswFlat

    min_rows = VECTOR_INDEX_MIN_ROWS if min_rows is None else min_rows
    rows = table.count_rows()
    existing = vector_index_of(table)
    if existing is None and rows < min_rows:
        return {
            "vector_index": "none",
            "rows": rows,
            "segments": 0,
            "seconds": 0.0,
            "reason": f"{rows} rows, under {min_rows}: flat search",
        }
    reason = None
    if existing is None:
        reason = "no vector index yet"
    else:
        stats = table.index_stats(existing.name)
        if stats.index_type != VECTOR_INDEX_TYPE or (stats.distance_type or "") != "cosine":
            reason = f"replacing a {stats.index_type} ({stats.distance_type}) index"
        elif stats.num_indices > VECTOR_INDEX_MAX_SEGMENTS:
            reason = f"merging {stats.num_indices} segments"
        elif stats.num_unindexed_rows * 10 > rows:
            reason = f"{stats.num_unindexed_rows} rows not indexed"
        if reason is None:
            return {
                "vector_index": "kept",
                "rows": rows,
                "segments": stats.num_indices,
                "seconds": 0.0,
                "reason": "up to date",
            }
    started = time.perf_counter()
    try:
        table.create_index(
            "vector",
            config=HnswFlat(distance_type="cosine", num_partitions=vector_index_partitions(rows)),
            replace=True,
            name=existing.name if existing is not None else VECTOR_INDEX_NAME,
        )
    except Exception as problem:  # the table is unchanged and its search still exact
        return {
            "vector_index": "failed",
            "rows": rows,
            "segments": 0 if existing is None else table.index_stats(existing.name).num_indices,
            "seconds": round(time.perf_counter() - started, 1),
            "reason": f"{reason}; building failed: {type(problem).__name__}: {problem}",
        }
    return {
        "vector_index": "created" if existing is None else "rebuilt",
        "rows": rows,
        "segments": 1,
        "seconds": round(time.perf_counter() - started, 1),
        "reason": reason,
    }
