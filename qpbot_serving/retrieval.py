"""Search over the promoted index: dense, keyword (LanceDB full-text) and their fusion.

A `Retriever` opens the table and version that the promoted pointer names, once, and embeds
queries with the model recorded in that table's own metadata, so a query is always embedded
the way its chunks were. Filters are LanceDB prefilters built as expressions, not pasted
SQL, so no value can break out of its quotes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from qpbot_serving import index as contract
from qpbot_serving.embedding import Embedder

MODES = ("dense", "keyword", "hybrid")
MAX_K = 1000
# Equality filters a caller may set; `document_ids` (a list) is the one membership filter.
FILTER_FIELDS = ("document_id", "format", "language", "author", "title")

# Hybrid fusion (see `fuse`), chosen on SciFact train (BENCHMARKS.md, "Retrieval quality"):
# the top 100 of each list, combined convexly. The weight is one global number, not tuned
# per query or per corpus; 0.4-0.6 score within 0.005 nDCG@10 of each other.
HYBRID_CANDIDATES = 100
HYBRID_DENSE_WEIGHT = 0.5

_RESULT_COLUMNS = [
    "chunk_id",
    "document_id",
    "title",
    "section",
    "page_start",
    "page_end",
    "text",
    "source_uri",
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


class Reranker(Protocol):
    """Reorders (and may cut) the hits of a query; scores are the reranker's own."""

    def rerank(self, query: str, hits: list[SearchHit]) -> list[SearchHit]: ...


class Retriever:
    """Searches one table at one version with the embedder that made its vectors."""

    def __init__(
        self,
        table,
        promoted: contract.PromotedIndex,
        embedder: Embedder,
        reranker: Reranker | None = None,
        rerank_depth: int = 50,
    ):
        self.table = table
        self.promoted = promoted
        self.info = contract.IndexInfo.from_schema(table.schema)
        if embedder.model_name != self.info.embedding_model:
            raise ValueError(
                f"index {promoted.label} was embedded with {self.info.embedding_model}, "
                f"not {embedder.model_name}"
            )
        self.embedder = embedder
        self.reranker = reranker
        self.rerank_depth = rerank_depth

    @classmethod
    def open(
        cls,
        index_dir: Path,
        embedder: Embedder | None = None,
        reranker: Reranker | None = None,
    ) -> Retriever:
        """Opens the promoted index under `index_dir` (`$QPBOT_HOME/index`).

        The query embedder is built from the index's own metadata; a loaded `embedder` may
        be passed to share it, but it must be that same model. Raises IndexNotReady when
        nothing has been promoted yet.
        """
        index_dir = Path(index_dir)
        promoted = contract.read_promoted(index_dir)
        if promoted is None:
            raise IndexNotReady(
                f"no promoted index in {index_dir}: run `qpbot ingest PATH...` first"
            )
        return cls.at(index_dir, promoted, embedder, reranker)

    @classmethod
    def at(
        cls,
        index_dir: Path,
        promoted: contract.PromotedIndex,
        embedder: Embedder | None = None,
        reranker: Reranker | None = None,
    ) -> Retriever:
        """Opens the table and version that `promoted` names, promoted or not (a candidate
        index being evaluated, say)."""
        db = contract.connect(Path(index_dir))
        try:
            table = db.open_table(promoted.table)
        except (FileNotFoundError, ValueError) as error:
            raise IndexNotReady(
                f"the promoted table {promoted.label} is missing from {index_dir}: "
                "run `qpbot ingest PATH...` again"
            ) from error
        table.checkout(promoted.version)  # exactly the version the checks passed
        info = contract.IndexInfo.from_schema(table.schema)
        return cls(table, promoted, embedder or Embedder(info.embedding_model), reranker)

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
        depth = max(k, self.rerank_depth) if self.reranker else k
        if mode == "dense":
            hits = self.dense(query, depth, where)
        elif mode == "keyword":
            hits = self.keyword(query, depth, where)
        else:
            hits = self.hybrid(query, max(depth, HYBRID_CANDIDATES), where)[:depth]
        if self.reranker:
            hits = self.reranker.rerank(query, hits)
        return hits[:k]

    def dense(self, query: str, limit: int, where=None) -> list[SearchHit]:
        """Nearest chunks by cosine similarity (score = cosine similarity)."""
        return self._dense(self.embedder.encode([query])[0], limit, where)

    def keyword(self, query: str, limit: int, where=None) -> list[SearchHit]:
        """Chunks by BM25 score over the full-text index of `text`."""
        return [_hit(row, float(row["_score"])) for row in self._keyword_rows(query, limit, where)]

    def hybrid(self, query: str, candidates: int, where=None) -> list[SearchHit]:
        """The fused dense and keyword lists (`candidates` from each), best first."""
        vector = self.embedder.encode([query])[0]
        dense_hits = self._dense(vector, candidates, where)
        rows = self._keyword_rows(query, candidates, where, with_vectors=True)
        keyword_hits = [_hit(row, float(row["_score"])) for row in rows]
        # Vectors are unit length, so a dot product is the cosine the dense list would give.
        cosines = {row["chunk_id"]: float(np.dot(row["vector"], vector)) for row in rows}
        return fuse(dense_hits, keyword_hits, HYBRID_DENSE_WEIGHT, cosines)

    def _dense(self, vector: np.ndarray, limit: int, where) -> list[SearchHit]:
        builder = (
            self.table.search(vector, query_type="vector", vector_column_name="vector")
            .distance_type("cosine")
            .select([*_RESULT_COLUMNS, "_distance"])
            .limit(limit)
        )
        if where is not None:
            builder = builder.where(where, prefilter=True)
        return [_hit(row, 1.0 - float(row["_distance"])) for row in builder.to_list()]

    def _keyword_rows(self, query: str, limit: int, where, with_vectors: bool = False) -> list:
        columns = [*_RESULT_COLUMNS, "_score", *(["vector"] if with_vectors else [])]
        builder = (
            self.table.search(query, query_type="fts", fts_columns="text")
            .select(columns)
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


def _with_score(hit: SearchHit, score: float) -> SearchHit:
    return SearchHit(**{**hit.__dict__, "score": score})
