"""Search over the promoted index: dense, keyword (LanceDB full-text) and their fusion.

A `Retriever` opens the table and version that the promoted pointer names, once, and embeds
queries with the model recorded in that table's own metadata, so a query is always embedded
the way its chunks were. Filters are LanceDB prefilters built as expressions, not pasted
SQL, so no value can break out of its quotes.
"""

from __future__ import annotations

import logging
import os
import threading
import warnings
import weakref
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qpbot_serving import index as contract
from qpbot_serving.embedding import Embedder, index_embedder, mean_pooled, resolve_backend
from qpbot_serving.settings import QpbotSettings
from qpbot_serving.state import PROMOTED_INDEX, PromotedIndex, StateStore

log = logging.getLogger(__name__)
MODES = ("dense", "keyword", "hybrid")
MAX_K = 1000
# Equality filters a caller may set; `document_ids` (a list) is the one membership filter.
FILTER_FIELDS = ("document_id", "format", "language", "author", "title")

# Hybrid fusion (see `fuse`), chosen on SciFact train (BENCHMARKS.md, "Retrieval quality"):
# the top 100 of each list, combined convexly. The weight is one global number, not tuned
# per query or per corpus; 0.4-0.6 score within 0.005 nDCG@10 of each other.
HYBRID_CANDIDATES = 100
HYBRID_DENSE_WEIGHT = 0.5

# Dense search on a table with a vector index (`index.ensure_vector_index`: HNSW over the
# exact vectors, so its distances are the exact cosines a flat search gives). The graph
# search keeps DENSE_EF candidates per 100 wanted: at 100k chunks 0.987 of the flat top 100,
# the hybrid top 10 the same for 99.5 % of queries (BENCHMARKS.md); 500 gave 0.9995 for
# ~1.5 ms more a query. An index over compressed vectors (built by other means) gets
# LanceDB's refine step instead: at least DENSE_EXACT_CANDIDATES re-scored exactly.
DENSE_EF = 200
DENSE_EXACT_CANDIDATES = 100

# The keyword search of a hybrid query runs here while the query is embedded; LanceDB
# releases the GIL while it searches.
_KEYWORD_POOL = ThreadPoolExecutor(max_workers=4, thread_name_prefix="qpbot-keyword")

# Queries are embedded on these threads, each running torch on QUERY_TORCH_THREADS
# threads: one short query gains little from more, and on two cores a second torch thread
# would fight the keyword search (and other requests) for the other core, which made
# hybrid search slower, not faster (BENCHMARKS.md). The rest of the process (ingestion,
# answer generation) keeps torch's own setting.
QUERY_TORCH_THREADS = 1


_torch_threads_set = threading.local()


def _set_query_torch_threads() -> None:
    """Once per query thread, for the torch backend only (an ONNX one never imports torch)."""
    if getattr(_torch_threads_set, "done", False):
        return
    import torch

    process_default = torch.get_num_threads()  # what threads not yet set up will use
    torch.set_num_threads(QUERY_TORCH_THREADS)  # this thread's own OpenMP/MKL setting...
    # ...which also changed the default for threads not set up yet: put that back, from a
    # thread of its own so this one keeps QUERY_TORCH_THREADS.
    restore = threading.Thread(target=torch.set_num_threads, args=(process_default,))
    restore.start()
    restore.join()
    _torch_threads_set.done = True


_QUERY_POOL = ThreadPoolExecutor(
    max_workers=os.cpu_count() or 1, thread_name_prefix="qpbot-query-embedding"
)


class QueryEncoder:
    """Embeds one query into exactly the vector `Embedder.encode([query])[0]` gives, sooner.

    For the usual sentence-transformers layout (a transformer, mean pooling, normalization)
    the model is traced and frozen with TorchScript, which prepacks the weights for the CPU
    (9.4 against 11.7 ms a query on two cores in a side measurement); the result is checked
    against `Embedder.encode` on probe texts once, and any other layout, failure or
    difference over QUERY_ENCODER_TOLERANCE falls back to `Embedder.encode`. One query at a
    time only: its attention mask is all ones, which the trace relies on.
    """

    PROBES = (
        "warm up",
        "  Leading and trailing spaces, MiXeD case and digits 0-9  ",
        "Ünïcödé, punctuation (brackets); and a claim: aspirin lowers the risk of stroke.",
        "a long text that the model must truncate " * 60,
    )

    def __init__(self, embedder: Embedder):
        self.embedder = embedder
        self.traced = None  # the frozen module, once checked
        self.fallback_reason: str | None = None
        self._ready = False
        self._lock = threading.Lock()
        self._recent: dict[str, np.ndarray] = {}  # the last RECENT_QUERIES vectors, by query

    def __call__(self, query: str) -> np.ndarray:
        # An answer embeds its question twice (retrieval, then evidence): the second is free.
        cached = self._recent.get(query)
        if cached is not None:
            return cached
        if self.embedder.backend != "torch":
            vector = self.embedder.encode_query(query)  # ONNX Runtime, one thread
        else:
            _set_query_torch_threads()
            if not self._ready:
                self._prepare()
            if self.traced is None:
                vector = self.embedder.encode_query(query)
            else:
                vector = self._traced_encode(query)
        if len(self._recent) >= RECENT_QUERIES:
            self._recent.pop(next(iter(self._recent)), None)
        self._recent[query] = vector
        return vector

    def _traced_encode(self, query: str) -> np.ndarray:
        import torch

        features = self.embedder.model.preprocess([query])
        with torch.inference_mode():
            vector = self.traced(
                features["input_ids"], features["attention_mask"], features["token_type_ids"]
            )
        return vector[0].numpy()

    def _prepare(self) -> None:
        with self._lock:
            if self._ready:
                return
            try:
                self.traced = self._trace()
                for probe in self.PROBES:
                    expected = self.embedder.encode([probe])[0]
                    for _ in range(2):  # the first runs of a TorchScript module optimize it
                        got = self._traced_encode(probe)
                        difference = float(np.abs(got - expected).max())
                        if not difference <= QUERY_ENCODER_TOLERANCE:
                            raise ValueError(f"traced encoder differs by {difference:.2e}")
            except Exception as problem:  # any surprise: the plain encoder, which is right
                self.traced = None
                self.fallback_reason = f"{type(problem).__name__}: {problem}"
                log.warning("query encoder not traced, using Embedder.encode: %s", problem)
            self._ready = True

    def _trace(self):
        import torch
        from transformers.utils import logging as transformers_logging

        model = self.embedder.model
        if str(model.device) != "cpu":
            raise ValueError(f"device {model.device}")
        module = mean_pooled(model)
        example = model.preprocess([self.PROBES[0]])
        inputs = (example["input_ids"], example["attention_mask"], example["token_type_ids"])
        verbosity = transformers_logging.get_verbosity()
        transformers_logging.set_verbosity_error()  # config notes printed while tracing
        try:
            with torch.inference_mode(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # tracer warnings: the all-ones mask is constant
                traced = torch.jit.trace(module, inputs, check_trace=False)
                return torch.jit.optimize_for_inference(torch.jit.freeze(traced.eval()))
        finally:
            transformers_logging.set_verbosity(verbosity)


QUERY_ENCODER_TOLERANCE = 1e-5
RECENT_QUERIES = 64
_QUERY_ENCODERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_QUERY_ENCODERS_LOCK = threading.Lock()


def query_encoder(embedder: Embedder) -> QueryEncoder:
    """The (shared) query encoder of an embedder."""
    with _QUERY_ENCODERS_LOCK:
        encoder = _QUERY_ENCODERS.get(embedder)
        if encoder is None:
            encoder = _QUERY_ENCODERS[embedder] = QueryEncoder(embedder)
        return encoder


_RESULT_COLUMNS = [
    "chunk_id",
    "document_id",
    "title",
    "section",
    "page_start",
    "page_end",
    "text",
    "source_uri",
    "format",
]


class IndexNotReady(RuntimeError):
    """There is no promoted index to search yet."""


@dataclass(frozen=True)
class SearchHit:
    """One retrieved chunk; `score` is higher for better matches (its scale depends on mode)."""

    chunk_id: str
    document_id: str
    title: str | None
    section: str | None
    page_start: int | None
    page_end: int | None
    text: str
    source_uri: str | None
    score: float
    format: str | None = None  # pdf, docx, markdown, html, text


class Retriever:
    """Searches one table at one version with the embedder that made its vectors."""

    def __init__(
        self,
        table,
        promoted: PromotedIndex,
        embedder: Embedder,
    ):
        self.table = table
        self.promoted = promoted
        self.info = contract.IndexInfo.from_schema(table.schema)
        if embedder.model_name != self.info.embedding_model or not contract.same_vectors(
            embedder.backend, self.info.embedding_backend
        ):
            raise ValueError(
                f"index {promoted.label} was embedded with {self.info.embedding_model} "
                f"({self.info.embedding_backend}), not {embedder.model_name} ({embedder.backend})"
            )
        self.embedder = embedder
        self.query_encoder = query_encoder(embedder)
        # The indexes of this version; loaded into memory now rather than by the first query.
        # With no vector index (a small table; or set to None), dense search is exact (flat).
        vector_index = contract.vector_index_of(table)
        self.vector_index: str | None = vector_index.name if vector_index else None
        self._nprobes = contract.vector_index_partitions(table.count_rows())
        self._refine = bool(vector_index) and (
            table.index_stats(vector_index.name).index_type != contract.VECTOR_INDEX_TYPE
        )
        for index in table.list_indices():
            table.prewarm_index(index.name)

    @classmethod
    def open(
        cls,
        state: StateStore | Path,
        embedder: Embedder | None = None,
        backend: str | None = None,
        exports_dir: Path | None = None,
        cache_dir: Path | None = None,
    ) -> Retriever:
        """Opens the promoted index of a state store (`StateStore.from_settings`; a path is
        the store of that QPBOT_HOME on local disk).

        The query embedder is built from the index's own metadata: its model, computed with
        `backend` when that makes the index's kind of vectors (`index.vector_family`), else
        with the index's own backend; ONNX backends keep their export in `exports_dir`
        (`QpbotSettings.embedding_exports_dir`). A loaded `embedder` may be passed to share
        it, but it must make the same vectors. With the index on object storage and a
        `cache_dir` (QpbotSettings.cache_dir), the promoted table is searched from a local
        copy there: from object storage a hybrid search makes dozens of reads
        (BENCHMARKS.md, "Index on object storage"); a fine-tuned model stored there is
        copied there too. Raises IndexNotReady when nothing has
        been promoted yet.
        """
        state = state if isinstance(state, StateStore) else StateStore(state)
        promoted = state.read(PROMOTED_INDEX)
        if promoted is None:
            raise IndexNotReady(
                f"no promoted index in {state.url}: run `qpbot ingest PATH...` first"
            )
        return cls.at(state, promoted, embedder, backend, exports_dir, cache_dir)

    @classmethod
    def from_settings(cls, settings: QpbotSettings, embedder: Embedder | None = None) -> Retriever:
        """`open` on the settings' promoted index with the configured embedding backend."""
        return cls.open(
            StateStore.from_settings(settings),
            embedder,
            backend=resolve_backend(settings.embedding_backend),
            exports_dir=settings.embedding_exports_dir,
            cache_dir=settings.cache_dir,
        )

    @classmethod
    def at(
        cls,
        state: StateStore | Path,
        promoted: PromotedIndex,
        embedder: Embedder | None = None,
        backend: str | None = None,
        exports_dir: Path | None = None,
        cache_dir: Path | None = None,
    ) -> Retriever:
        """Opens the table and version that `promoted` names, promoted or not (a candidate
        index being evaluated, say); the rest as in `open`."""
        state = state if isinstance(state, StateStore) else StateStore(state)
        try:
            if cache_dir is not None and not state.is_local:
                state = state.cached_index_table(promoted.table, cache_dir)
            table = contract.connect(state).open_table(promoted.table)
        except (FileNotFoundError, ValueError) as error:
            raise IndexNotReady(
                f"the promoted table {promoted.label} is missing from {state.index_uri}: "
                "run `qpbot ingest PATH...` again"
            ) from error
        table.checkout(promoted.version)  # exactly the version the checks passed
        info = contract.IndexInfo.from_schema(table.schema)
        if embedder is None:
            embedder = index_embedder(
                info.embedding_model, info.embedding_backend, backend, exports_dir, cache_dir
            )
        return cls(table, promoted, embedder)

    def chunks_of(self, document_id: str) -> int:
        """How many chunks of `document_id` this index version holds."""
        quoted = document_id.replace("'", "''")
        return self.table.count_rows(f"document_id = '{quoted}'")

    def search(
        self, query: str, k: int = 10, mode: str = "hybrid", filters: dict | None = None
    ) -> list[SearchHit]:
        """The best `k` chunks for `query`, best first.

        mode: "dense" (cosine similarity of the query vector), "keyword" (BM25 over the
        full-text index of `text`) or "hybrid" (both, fused). filters: equality on
        document_id, format, language, author, title, and `document_ids` (a list).
        """
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
            raise ValueError(f"k must be an integer from 1 to {MAX_K}, not {k!r}")
        if not isinstance(query, str) or not query.strip():
            raise ValueError("query must be a non-empty string")
        where = filter_expression(filters)
        if filters and filters.get("document_ids") is not None and not filters["document_ids"]:
            return []  # an empty list of documents matches nothing
        if mode == "dense":
            return self.dense(query, k, where)
        if mode == "keyword":
            return self.keyword(query, k, where)
        return self.hybrid(query, max(k, HYBRID_CANDIDATES), where, limit=k)

    def dense(self, query: str, limit: int, where=None) -> list[SearchHit]:
        """Nearest chunks by cosine similarity (score = cosine similarity)."""
        return self._dense(self._embed(query), limit, where)

    def keyword(self, query: str, limit: int, where=None) -> list[SearchHit]:
        """Chunks by BM25 score over the full-text index of `text`."""
        return [_hit(row, float(row["_score"])) for row in self._keyword_rows(query, limit, where)]

    def hybrid(
        self, query: str, candidates: int, where=None, limit: int | None = None
    ) -> list[SearchHit]:
        """The fused dense and keyword lists (`candidates` from each), best first; only the
        best `limit` of them when given.

        The keyword search runs while the query is embedded and brings its hits' displayed
        columns and vectors (for the exact cosine of those the dense list misses); the dense
        search brings ids and scores only, and the displayed columns of a returned hit that
        only the dense list found are read afterwards.
        """
        keyword_job = _KEYWORD_POOL.submit(self._keyword_candidates, query, candidates, where)
        try:
            vector = self._embed(query)
            dense = self._dense_candidates(vector, candidates, where)
        finally:
            keyword = keyword_job.result()
        keyword_ids = keyword["chunk_id"]
        # Vectors are unit length, so a dot product is the cosine the dense list would give.
        keyword_cosines = (keyword["vectors"] @ vector).tolist() if keyword_ids else []
        fused = fuse(
            _stubs(dense["chunk_id"], dense["scores"]),
            _stubs(keyword_ids, keyword["scores"]),
            HYBRID_DENSE_WEIGHT,
            dict(zip(keyword_ids, keyword_cosines, strict=True)),
        )
        if limit is not None:
            fused = fused[:limit]
        position = {chunk_id: i for i, chunk_id in enumerate(keyword_ids)}
        found = [hit.chunk_id for hit in fused if hit.chunk_id in position]
        positions = np.array([position[chunk_id] for chunk_id in found], dtype=np.int64)
        taken = keyword["rows"].take(positions).to_pylist()
        rows = dict(zip(found, taken, strict=True))
        dense_row_ids = dict(zip(dense["chunk_id"], dense["_rowid"], strict=True))
        rows.update(
            self._rows([dense_row_ids[h.chunk_id] for h in fused if h.chunk_id not in rows])
        )
        return [_hit(rows[hit.chunk_id], hit.score) for hit in fused]

    def _embed(self, query: str) -> np.ndarray:
        return _QUERY_POOL.submit(self.query_encoder, query).result()

    def _vector_search(self, vector: np.ndarray, limit: int, where, columns: list[str]):
        builder = (
            self.table.search(vector, query_type="vector", vector_column_name="vector")
            .distance_type("cosine")
            .select(columns)
            .limit(limit)
        )
        if self.vector_index is None:
            builder = builder.bypass_vector_index()
        else:
            builder = builder.nprobes(self._nprobes).ef(max(DENSE_EF, DENSE_EF * limit // 100))
            if self._refine:  # compressed vectors: re-score the best of them exactly
                builder = builder.refine_factor(-(-DENSE_EXACT_CANDIDATES // limit))
        if where is not None:
            builder = builder.where(where, prefilter=True)
        return builder

    def _dense(self, vector: np.ndarray, limit: int, where) -> list[SearchHit]:
        builder = self._vector_search(vector, limit, where, [*_RESULT_COLUMNS, "_distance"])
        return [_hit(row, 1.0 - float(row["_distance"])) for row in builder.to_list()]

    def _dense_candidates(self, vector: np.ndarray, limit: int, where) -> dict:
        """{"chunk_id", "_rowid", "scores"} of the nearest `limit` chunks, nearest first."""
        builder = self._vector_search(vector, limit, where, ["chunk_id", "_distance"])
        table = builder.with_row_id(True).to_arrow()
        return {
            "chunk_id": table["chunk_id"].to_pylist(),
            "_rowid": table["_rowid"].to_pylist(),
            "scores": (1.0 - table["_distance"].to_numpy()).tolist(),
        }

    def _keyword_candidates(self, query: str, limit: int, where) -> dict:
        """The best `limit` BM25 matches: {"chunk_id", "scores", "vectors" (an array),
        "rows" (their displayed columns, an Arrow table)}."""
        builder = (
            self.table.search(query, query_type="fts", fts_columns="text")
            .select([*_RESULT_COLUMNS, "_score", "vector"])
            .limit(limit)
        )
        if where is not None:
            builder = builder.where(where, prefilter=True)
        table = builder.to_arrow()
        return {
            "chunk_id": table["chunk_id"].to_pylist(),
            "scores": table["_score"].to_numpy().tolist(),
            "vectors": table["vector"]
            .combine_chunks()
            .flatten()
            .to_numpy()
            .reshape(-1, self.info.dimension),
            "rows": table.select(_RESULT_COLUMNS),
        }

    def _rows(self, row_ids: list[int]) -> dict[str, dict]:
        """The displayed columns of some rows (by row id), by chunk_id."""
        if not row_ids:
            return {}
        table = self.table.take_row_ids(row_ids).select(_RESULT_COLUMNS).to_arrow()
        return {row["chunk_id"]: row for row in table.to_pylist()}

    def _keyword_rows(self, query: str, limit: int, where) -> list:
        builder = (
            self.table.search(query, query_type="fts", fts_columns="text")
            .select([*_RESULT_COLUMNS, "_score"])
            .limit(limit)
        )
        if where is not None:
            builder = builder.where(where, prefilter=True)
        return sorted(builder.to_list(), key=lambda row: -row["_score"])


def fuse(
    dense: Sequence[SearchHit],
    keyword: Sequence[SearchHit],
    dense_weight: float,
    keyword_cosines: dict[str, float] | None = None,
) -> list[SearchHit]:
    """Convex combination of a dense and a keyword list; best first, ties by chunk_id.

    Dense scores (cosines) are min-max normalized over all candidates; `keyword_cosines`
    gives the exact cosine of keyword candidates the dense list missed, else they count 0.
    Keyword scores (BM25) are divided by the best one, so a list of weak matches stays weak
    instead of being stretched to 1; a chunk the keyword list missed counts 0.
    """
    cosines = {**(keyword_cosines or {}), **{hit.chunk_id: hit.score for hit in dense}}
    dense_scores = _min_max(cosines)
    best_bm25 = max((hit.score for hit in keyword), default=0.0)
    keyword_scores = {
        hit.chunk_id: hit.score / best_bm25 if best_bm25 > 0 else 0.0 for hit in keyword
    }
    by_id = {hit.chunk_id: hit for hit in [*keyword, *dense]}
    fused = {
        chunk_id: dense_weight * dense_scores.get(chunk_id, 0.0)
        + (1.0 - dense_weight) * keyword_scores.get(chunk_id, 0.0)
        for chunk_id in by_id
    }
    ranked = sorted(fused, key=lambda chunk_id: (-fused[chunk_id], chunk_id))
    return [_with_score(by_id[chunk_id], fused[chunk_id]) for chunk_id in ranked]


def _min_max(scores: dict[str, float]) -> dict[str, float]:
    if not scores:
        return {}
    low, high = min(scores.values()), max(scores.values())
    if high == low:  # one candidate, or all tied: all count as the best of their list
        return dict.fromkeys(scores, 1.0)
    return {key: (value - low) / (high - low) for key, value in scores.items()}


def filter_expression(filters: dict | None):
    """A LanceDB filter expression (AND of the given fields), or None for no filter."""
    from lancedb.expr import col, lit

    if not filters:
        return None
    unknown = set(filters) - {*FILTER_FIELDS, "document_ids"}
    if unknown:
        raise ValueError(
            f"unknown filter(s) {', '.join(sorted(unknown))}; "
            f"use {', '.join([*FILTER_FIELDS, 'document_ids'])}"
        )
    clauses = []
    for field in FILTER_FIELDS:
        if filters.get(field) is not None:
            if not isinstance(filters[field], str):
                raise ValueError(f"filter {field} must be a string")
            clauses.append(col(field) == lit(filters[field]))
    document_ids = filters.get("document_ids")
    if isinstance(document_ids, str):
        raise ValueError("filter document_ids must be a list of strings")
    if document_ids:
        if not all(isinstance(d, str) for d in document_ids):
            raise ValueError("filter document_ids must be a list of strings")
        clauses.append(col("document_id").isin(list(document_ids)))
    if not clauses:
        return None
    expression = clauses[0]
    for clause in clauses[1:]:
        expression = expression & clause
    return expression


def _hit(row: dict, score: float) -> SearchHit:
    return SearchHit(**{name: row[name] for name in _RESULT_COLUMNS}, score=score)


def _stubs(chunk_ids: list[str], scores: list[float]) -> list[SearchHit]:
    """Hits that carry only an id and a score, for fusing before any text is read."""
    return [
        SearchHit(chunk_id, "", None, None, None, None, "", None, score)
        for chunk_id, score in zip(chunk_ids, scores, strict=True)
    ]


def _with_score(hit: SearchHit, score: float) -> SearchHit:
    return SearchHit(**{**hit.__dict__, "score": score})
