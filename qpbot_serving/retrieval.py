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

from qpbot_serving import index as contract
from qpbot_serving.embedding import Embedder

MODES = ("dense", "keyword", "hybrid")
MAX_K = 1000
# Equality filters a caller may set; `document_ids` (a list) is the one membership filter.
FILTER_FIELDS = ("document_id", "format", "language", "author", "title")

# Hybrid fusion, chosen on SciFact train (BENCHMARKS.md, "Retrieval quality"): each list's
# scores are min-max normalized over its own candidates, then combined convexly. The weight
# is one global number, not tuned per query or per corpus.
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
        db = contract.connect(index_dir)
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
        depth = max(k, self.rerank_depth) if self.reranker else k
        if mode == "dense":
            hits = self.dense(query, depth, where)
        elif mode == "keyword":
            hits = self.keyword(query, depth, where)
        else:
            candidates = max(depth, HYBRID_CANDIDATES)
            hits = fuse(
                self.dense(query, candidates, where),
                self.keyword(query, candidates, where),
                HYBRID_DENSE_WEIGHT,
            )[:depth]
        if self.reranker:
            hits = self.reranker.rerank(query, hits)
        return hits[:k]

    def dense(self, query: str, limit: int, where=None) -> list[SearchHit]:
        """Nearest chunks by cosine similarity (score = 1 - cosine distance)."""
        vector = self.embedder.encode([query])[0]
        builder = (
            self.table.search(vector, query_type="vector", vector_column_name="vector")
            .distance_type("cosine")
            .select([*_RESULT_COLUMNS, "_distance"])
            .limit(limit)
        )
        if where is not None:
            builder = builder.where(where, prefilter=True)
        rows = builder.to_list()
        return [_hit(row, 1.0 - float(row["_distance"])) for row in rows]

    def keyword(self, query: str, limit: int, where=None) -> list[SearchHit]:
        """Chunks by BM25 score over the full-text index of `text`."""
        builder = (
            self.table.search(query, query_type="fts", fts_columns="text")
            .select([*_RESULT_COLUMNS, "_score"])
            .limit(limit)
        )
        if where is not None:
            builder = builder.where(where)
        rows = builder.to_list()
        hits = [_hit(row, float(row["_score"])) for row in rows]
        return sorted(hits, key=lambda hit: -hit.score)


def fuse(
    dense: Sequence[SearchHit], keyword: Sequence[SearchHit], dense_weight: float
) -> list[SearchHit]:
    """Convex combination of min-max normalized scores; a chunk missing from one list scores
    0 there (it was below that list's last candidate). Best first; ties by chunk_id."""
    dense_scores = _min_max({hit.chunk_id: hit.score for hit in dense})
    keyword_scores = _min_max({hit.chunk_id: hit.score for hit in keyword})
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
    if document_ids is not None:
        if isinstance(document_ids, str) or not all(isinstance(d, str) for d in document_ids):
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
