"""Retrieval metrics on hand-computed examples, and reading BEIR files."""

from __future__ import annotations

import math

import pytest

from qpbot_serving.evaluation import (
    evaluate_rankings,
    mrr_at_k,
    ndcg_at_k,
    read_qrels,
    read_queries,
    recall_at_k,
)


def test_ndcg_binary_grades():
    # relevant at ranks 2 and 4; ideal puts them at 1 and 2
    dcg = 1 / math.log2(3) + 1 / math.log2(5)
    ideal = 1 / math.log2(2) + 1 / math.log2(3)
    assert ndcg_at_k(["a", "b", "c", "d"], {"b": 1, "d": 1}, 10) == pytest.approx(dcg / ideal)


def test_ndcg_graded_and_cut_at_k():
    qrels = {"a": 2, "b": 1, "z": 1}
    # top 2: b (1) then a (2); ideal top 2: a (2), then b or z (1)
    dcg = 1 / math.log2(2) + 2 / math.log2(3)
    ideal = 2 / math.log2(2) + 1 / math.log2(3)
    assert ndcg_at_k(["b", "a", "z"], qrels, 2) == pytest.approx(dcg / ideal)
    assert ndcg_at_k(["a", "b", "z"], qrels, 3) == pytest.approx(1.0)


def test_ndcg_ignores_non_relevant_grades_and_duplicates():
    assert ndcg_at_k(["x", "y"], {"a": 1}, 10) == 0.0
    assert ndcg_at_k(["a"], {"a": 0}, 10) == 0.0  # no relevant document: 0, not a division error
    # a document ranked twice (two chunks) counts once, at its first rank
    assert ndcg_at_k(["a", "a", "b"], {"a": 1, "b": 1}, 10) == pytest.approx(1.0)


def test_recall_at_k():
    qrels = {"a": 1, "b": 1, "c": 1, "d": 0}
    assert recall_at_k(["a", "x", "b", "c"], qrels, 3) == pytest.approx(2 / 3)
    assert recall_at_k(["d"], qrels, 10) == 0.0
    assert recall_at_k(["a"], {}, 10) == 0.0


def test_mrr_at_k():
    assert mrr_at_k(["x", "y", "a"], {"a": 1}, 10) == pytest.approx(1 / 3)
    assert mrr_at_k(["x", "y", "a"], {"a": 1}, 2) == 0.0
    assert mrr_at_k(["x", "x", "a"], {"a": 1}, 10) == pytest.approx(1 / 2)


def test_evaluate_rankings_macro_averages_judged_queries():
    qrels = {"q1": {"a": 1}, "q2": {"b": 1, "c": 1}, "q3": {"d": 0}}
    rankings = {"q1": ["a"], "q2": ["x", "b"], "q3": ["d"], "q4": ["a"]}
    result = evaluate_rankings(rankings, qrels)
    assert result["queries"] == 2  # q3 has no relevant document, q4 no qrels
    assert result["mrr@10"] == pytest.approx((1 + 1 / 2) / 2)
    assert result["recall@100"] == pytest.approx((1 + 1 / 2) / 2)
    q2_ndcg = (1 / math.log2(3)) / (1 + 1 / math.log2(3))
    assert result["ndcg@10"] == pytest.approx((1 + q2_ndcg) / 2)
    with pytest.raises(ValueError, match="no query"):
        evaluate_rankings({"q3": ["d"]}, qrels)


def test_read_beir_files(tmp_path):
    queries = tmp_path / "queries.jsonl"
    queries.write_text(
        '{"_id": "1", "text": "first?", "metadata": {}}\n\n{"_id": 2, "text": "b"}\n'
    )
    qrels = tmp_path / "qrels.tsv"
    qrels.write_text("query-id\tcorpus-id\tscore\n1\t10\t1\n1\t11\t2\n2\t10\t0\n")
    assert read_queries(queries) == {"1": "first?", "2": "b"}
    assert read_qrels(qrels) == {"1": {"10": 1, "11": 2}, "2": {"10": 0}}
    qrels.write_text("1\t10\t1\n")
    with pytest.raises(ValueError, match="header"):
        read_qrels(qrels)


def test_real_scifact_files_parse(shared_data):
    queries = read_queries(shared_data / "scifact" / "queries-train.jsonl")
    qrels = read_qrels(shared_data / "scifact" / "qrels-train.tsv")
    assert len(queries) == 809
    assert set(qrels) <= set(queries)
    assert sum(len(docs) for docs in qrels.values()) == 919
