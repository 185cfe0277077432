"""Retrieval quality on SciFact train: dense, keyword, LanceDB's hybrid (RRF), fusions.

    .venv/bin/python bench/bench_retrieval.py --home /tmp/scifact_home [--json]
    .venv/bin/python bench/bench_retrieval.py --home /tmp/scifact_home --vector-index [--json]
    .venv/bin/python bench/bench_retrieval.py --home /tmp/scifact_home_notitle --no-title

Indexes the corpus into --home once (one row per abstract, ~4-5 min of encoding on two
cores) and reuses it afterwards. Dense and keyword candidate lists (top 100 each) are
fetched once per query; the fusion variants are computed from those same lists, so they
differ only in how they fuse. `default hybrid` runs `Retriever.search(mode="hybrid")`, the
code that serves. `weight 2-fold` picks qpbot's dense weight on one half of the queries and
scores it on the other (both ways), to show the chosen weight is not fitted to the queries.
`--vector-index` runs it all on a copy of the index with the vector index built (SciFact's
5,183 rows are under `VECTOR_INDEX_MIN_ROWS`, so the served index has none) and adds the
recall of the indexed dense top 100 against the flat one.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from qpbot_assets.evaluation.beir import index_beir_corpus, indexed_corpus  # noqa: E402
from qpbot_assets.indexing.promotion import promote_snapshot  # noqa: E402
from qpbot_serving import index as contract  # noqa: E402
from qpbot_serving.evaluation import (  # noqa: E402
    evaluate_rankings,
    evaluate_retriever,
    read_qrels,
    read_queries,
)
from qpbot_serving.retrieval import (  # noqa: E402
    HYBRID_DENSE_WEIGHT,
    Retriever,
    SearchHit,
    fuse,
)
from qpbot_serving.state import PROMOTED_INDEX, StateStore  # noqa: E402

SCIFACT = REPO.parent / "shared" / "data" / "scifact"
MODEL = "all-MiniLM-L6-v2"
DEPTH = 100
HIT_FIELDS = [f for f in SearchHit.__dataclass_fields__ if f != "score"]


def lancedb_hybrid_rrf(retriever: Retriever, text: str, limit: int) -> list[str]:
    """LanceDB's own hybrid search with its RRF reranker (K=60)."""
    from lancedb.rerankers import RRFReranker

    vector = retriever.embedder.encode([text])[0]
    rows = (
        retriever.table.search(query_type="hybrid", vector_column_name="vector", fts_columns="text")
        .vector(vector)
        .text(text)
        .distance_type("cosine")
        .rerank(RRFReranker())
        .select(["document_id"])
        .limit(limit)
        .to_list()
    )
    return [row["document_id"] for row in rows]


def rrf(dense: list, keyword: list, k: int = 60) -> list[str]:
    scores: dict[str, float] = {}
    for hits in (dense, keyword):
        for rank, hit in enumerate(hits, start=1):
            scores[hit.document_id] = scores.get(hit.document_id, 0.0) + 1.0 / (k + rank)
    return sorted(scores, key=lambda d: -scores[d])


def minmax_convex(dense: list, keyword: list, weight: float) -> list[str]:
    """The untuned baseline: each list min-max normalized, a missing document counts 0."""

    def normalized(hits):
        scores = {h.document_id: h.score for h in hits}
        low, high = min(scores.values(), default=0), max(scores.values(), default=0)
        return {d: (s - low) / (high - low) if high > low else 1.0 for d, s in scores.items()}

    dense_n, keyword_n = normalized(dense), normalized(keyword)
    scores = {
        d: weight * dense_n.get(d, 0.0) + (1 - weight) * keyword_n.get(d, 0.0)
        for d in set(dense_n) | set(keyword_n)
    }
    return sorted(scores, key=lambda d: (-scores[d], d))


def zscore_fusion(dense: list, keyword: list, weight: float) -> list[str]:
    def z(hits):
        values = np.array([h.score for h in hits], dtype=float)
        if len(values) < 2 or values.std() == 0:
            return {h.document_id: 0.0 for h in hits}, 0.0
        normalized = (values - values.mean()) / values.std()
        return dict(zip([h.document_id for h in hits], normalized, strict=True)), normalized.min()

    dense_z, dense_floor = z(dense)
    keyword_z, keyword_floor = z(keyword)
    ids = set(dense_z) | set(keyword_z)
    scores = {
        d: weight * dense_z.get(d, dense_floor) + (1 - weight) * keyword_z.get(d, keyword_floor)
        for d in ids
    }
    return sorted(scores, key=lambda d: -scores[d])


def indexed_copy(home: Path, target: Path) -> tuple[Path, dict]:
    """A copy of `home`'s index with the vector index built whatever the table's size, and
    the pointer moved to that version; returns it and what `ensure_vector_index` did."""
    shutil.copytree(home / "index", target / "index")
    promoted = StateStore(target).read(PROMOTED_INDEX)
    table = contract.connect(StateStore(target)).open_table(promoted.table)
    result = contract.ensure_vector_index(table, min_rows=0)
    moved = promoted.snapshot.model_copy(update={"version": table.version})
    promote_snapshot(StateStore(target), moved, promoted.embedding_model)
    return target, result


def dense_recall_vs_flat(retriever: Retriever, texts: list[str], depth: int = DEPTH) -> float:
    """Mean share of the flat (exact) dense top `depth` that the indexed search returns."""
    flat = Retriever(retriever.table, retriever.promoted, retriever.embedder)
    flat.vector_index = None
    shares = []
    for text in texts:
        vector = retriever.query_encoder(text)
        got = set(retriever._dense_candidates(vector, depth, None)["chunk_id"])
        truth = flat._dense_candidates(vector, depth, None)["chunk_id"]
        shares.append(len(got & set(truth)) / max(1, len(truth)))
    return float(np.mean(shares))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--home", type=Path, default=Path("/tmp/scifact_home"))
    parser.add_argument("--no-title", action="store_true", help="index abstracts without titles")
    parser.add_argument(
        "--vector-index",
        action="store_true",
        help="evaluate on a copy of the index with the vector index built",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run(args, Path(tmp))


def run(args, tmp: Path) -> None:
    corpus, queries_path, qrels_path = (
        SCIFACT / "corpus.jsonl",
        SCIFACT / "queries-train.jsonl",
        SCIFACT / "qrels-train.tsv",
    )
    include_title = not args.no_title
    if indexed_corpus(corpus, args.home, MODEL, include_title) is None:
        started = time.perf_counter()
        index_beir_corpus(corpus, args.home, MODEL, include_title=include_title)
        print(f"indexed in {time.perf_counter() - started:.0f}s", file=sys.stderr)
    home, vector_index = args.home, None
    if args.vector_index:
        home, vector_index = indexed_copy(args.home, tmp)
    retriever = Retriever.open(home)
    queries, qrels = read_queries(queries_path), read_qrels(qrels_path)
    judged = [q for q in queries if any(g > 0 for g in qrels.get(q, {}).values())]

    started = time.perf_counter()
    lists, cosines = {}, {}
    for q in judged:
        vector = retriever.embedder.encode([queries[q]])[0]
        # The keyword query the hybrid search makes: hits with their vectors.
        found = retriever._keyword_candidates(queries[q], DEPTH, None)
        keyword = [
            SearchHit(**{f: row[f] for f in HIT_FIELDS}, score=score)
            for row, score in zip(found["rows"].to_pylist(), found["scores"], strict=True)
        ]
        lists[q] = (retriever._dense(vector, DEPTH, None), keyword)
        cosines[q] = dict(zip(found["chunk_id"], (found["vectors"] @ vector).tolist(), strict=True))
    seconds_per_query = (time.perf_counter() - started) / len(judged)

    def score(rank_fn, subset=judged) -> dict:
        return evaluate_rankings({q: rank_fn(*lists[q]) for q in subset}, qrels)

    def convex(weight):
        """qpbot's fusion (`retrieval.fuse`) at another dense weight."""
        return {q: [h.document_id for h in fuse(*lists[q], weight, cosines[q])] for q in judged}

    def score_convex(weight, subset=judged) -> dict:
        rankings = convex(weight)
        return evaluate_rankings({q: rankings[q] for q in subset}, qrels)

    results = {
        "dense": score(lambda d, k: [h.document_id for h in d]),
        "keyword": score(lambda d, k: [h.document_id for h in k]),
        "lancedb hybrid RRF": evaluate_rankings(
            {q: lancedb_hybrid_rrf(retriever, queries[q], DEPTH) for q in judged}, qrels
        ),
        "convex 50/50 min-max (baseline)": score(lambda d, k: minmax_convex(d, k, 0.5)),
        "own RRF k=60": score(rrf),
    }
    weights = [round(w, 2) for w in np.arange(0.1, 0.95, 0.1)]
    results["baseline min-max convex, weight sweep (nDCG@10)"] = {
        w: round(score(lambda d, k, w=w: minmax_convex(d, k, w))["ndcg@10"], 4) for w in weights
    }
    results["qpbot fusion, weight sweep (nDCG@10)"] = {
        w: round(score_convex(w)["ndcg@10"], 4) for w in weights
    }
    results["z-score fusion sweep (nDCG@10)"] = {
        w: round(score(lambda d, k, w=w: zscore_fusion(d, k, w))["ndcg@10"], 4) for w in weights
    }

    # 2-fold check of the weight: chosen on one half, scored on the other.
    halves = (judged[0::2], judged[1::2])
    held_out = []
    for fit, test in (halves, halves[::-1]):
        best = max(weights, key=lambda w: score_convex(w, fit)["ndcg@10"])
        held_out.append({"chosen_weight": best, **score_convex(best, test)})
    results["weight 2-fold (held-out halves)"] = held_out

    started = time.perf_counter()
    results[f"default hybrid (weight {HYBRID_DENSE_WEIGHT})"] = evaluate_retriever(
        retriever, queries_path, qrels_path, mode="hybrid"
    )
    hybrid_seconds = (time.perf_counter() - started) / len(judged)
    results["timing"] = {
        "dense+keyword top-100 lists, ms/query": round(1000 * seconds_per_query, 1),
        "default hybrid search k=100, ms/query": round(1000 * hybrid_seconds, 1),
    }
    results["index"] = {
        "home": str(args.home),
        "label": retriever.promoted.label,
        "title_included": include_title,
        "vector_index": retriever.vector_index,
    }
    if vector_index is not None:
        results["index"]["ensure_vector_index"] = vector_index
        texts = [queries[q] for q in judged]
        results["index"]["dense top-100 recall vs flat"] = round(
            dense_recall_vs_flat(retriever, texts), 4
        )
    if args.json:
        print(json.dumps(results, indent=1))
    else:
        for name, value in results.items():
            print(f"{name}: {json.dumps(value)}")


if __name__ == "__main__":
    main()
