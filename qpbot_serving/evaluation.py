"""Retrieval metrics and a BEIR evaluation of the serving retriever.

Metrics take the ranked document ids of one query and its qrels (document id -> grade;
grade > 0 is relevant) and follow trec_eval/BEIR: nDCG with linear gain and log2 discount,
recall over all relevant documents, reciprocal rank of the first relevant one.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path


def ndcg_at_k(ranked: Sequence[str], qrels: dict[str, int], k: int) -> float:
    """DCG of the top k over the DCG of the ideal ranking; 0.0 when nothing is relevant."""
    ideal = sorted((g for g in qrels.values() if g > 0), reverse=True)[:k]
    ideal_dcg = sum(g / math.log2(rank + 2) for rank, g in enumerate(ideal))
    if ideal_dcg == 0:
        return 0.0
    dcg = sum(
        max(qrels.get(doc, 0), 0) / math.log2(rank + 2)
        for rank, doc in enumerate(_unique(ranked)[:k])
    )
    return dcg / ideal_dcg


def recall_at_k(ranked: Sequence[str], qrels: dict[str, int], k: int) -> float:
    """Share of the relevant documents found in the top k; 0.0 when nothing is relevant."""
    relevant = {doc for doc, g in qrels.items() if g > 0}
    if not relevant:
        return 0.0
    return len(relevant & set(_unique(ranked)[:k])) / len(relevant)


def mrr_at_k(ranked: Sequence[str], qrels: dict[str, int], k: int) -> float:
    """1 / rank of the first relevant document in the top k, else 0.0."""
    for rank, doc in enumerate(_unique(ranked)[:k], start=1):
        if qrels.get(doc, 0) > 0:
            return 1.0 / rank
    return 0.0


def _unique(ranked: Sequence[str]) -> list[str]:
    """Document ids in first-seen order: several chunks of a document count once."""
    return list(dict.fromkeys(ranked))


def read_queries(path: Path) -> dict[str, str]:
    """BEIR queries.jsonl: {"_id", "text"} per line -> {query id: text}."""
    with open(path, encoding="utf-8") as lines:
        rows = [json.loads(line) for line in lines if line.strip()]
    return {str(row["_id"]): row["text"] for row in rows}


def read_qrels(path: Path) -> dict[str, dict[str, int]]:
    """BEIR qrels TSV with header `query-id corpus-id score` -> {query id: {doc id: grade}}."""
    qrels: dict[str, dict[str, int]] = {}
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle, delimiter="\t")
        header = next(reader, None)
        if header is None or [h.strip() for h in header[:3]] != ["query-id", "corpus-id", "score"]:
            raise ValueError(f"{path}: expected a header `query-id corpus-id score`")
        for row in reader:
            if row:
                qrels.setdefault(row[0], {})[row[1]] = int(row[2])
    return qrels


def evaluate_rankings(
    rankings: dict[str, Sequence[str]], qrels: dict[str, dict[str, int]]
) -> dict[str, float | int]:
    """Macro-averaged nDCG@10, recall@100 and MRR@10 over the queries that have relevant
    documents in `qrels` and a ranking in `rankings`."""
    judged = [q for q in rankings if any(g > 0 for g in qrels.get(q, {}).values())]
    if not judged:
        raise ValueError("no query has both a ranking and a relevant document in the qrels")

    def mean(metric, k: int) -> float:
        return sum(metric(rankings[q], qrels[q], k) for q in judged) / len(judged)

    return {
        "ndcg@10": mean(ndcg_at_k, 10),
        "recall@100": mean(recall_at_k, 100),
        "mrr@10": mean(mrr_at_k, 10),
        "queries": len(judged),
    }


def evaluate_retriever(
    retriever, queries_path: Path, qrels_path: Path, mode: str = "hybrid"
) -> dict[str, float | int]:
    """Runs every BEIR query that has qrels through `retriever.search(k=100, mode=mode)` and
    returns {"ndcg@10", "recall@100", "mrr@10", "queries"}, macro-averaged."""
    return evaluate_queries(retriever, read_queries(queries_path), read_qrels(qrels_path), mode)


def evaluate_queries(
    retriever, queries: dict[str, str], qrels: dict[str, dict[str, int]], mode: str = "hybrid"
) -> dict[str, float | int]:
    """`evaluate_retriever` on queries and qrels already in memory (a golden set built from
    feedback, say)."""
    rankings = {
        query_id: [hit.document_id for hit in retriever.search(text, k=100, mode=mode)]
        for query_id, text in queries.items()
        if any(g > 0 for g in qrels.get(query_id, {}).values())
    }
    return evaluate_rankings(rankings, qrels)
