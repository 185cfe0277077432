"""Judged queries from feedback, split once and for all into training and validation.

A query's split is a hash of its normalized text, so it never moves between versions of
the training pairs and the gate never scores a candidate on a query it was trained on.
"""

from __future__ import annotations

import hashlib
import re

import pandas as pd

VALIDATION_SHARE = 5  # one query in five is held out for validation


def normalize_query(query: str) -> str:
    return re.sub(r"\s+", " ", query.strip().lower())


def query_id(query: str) -> str:
    return hashlib.sha1(normalize_query(query).encode()).hexdigest()[:16]


def split_of(query: str) -> str:
    """ "validation" for about one query in VALIDATION_SHARE, else "train"."""
    return "validation" if int(query_id(query), 16) % VALIDATION_SHARE == 0 else "train"


def judged_chunks(answer: pd.Series) -> dict[str, bool]:
    """chunk_id -> relevant? for one rated answer: explicit source judgments, else (thumbs
    up without judgments) the first retrieved chunk counts as relevant."""
    judgments = answer.get("source_judgments") or {}
    if judgments:
        return {chunk_id: verdict == "relevant" for chunk_id, verdict in judgments.items()}
    if answer.get("rating") == "up" and answer.get("retrieved"):
        return {answer["retrieved"][0]["chunk_id"]: True}
    return {}


def feedback_golden_set(
    rated: pd.DataFrame, split: str | None = "validation"
) -> tuple[dict[str, str], dict[str, dict[str, int]]]:
    """BEIR-style (queries, qrels) from rated answers (`feedback.rated_answers`): a query's
    relevant documents are those of its chunks judged relevant. Document-level, like the
    retrieval metrics. `split=None` keeps every query."""
    queries: dict[str, str] = {}
    qrels: dict[str, dict[str, int]] = {}
    for _, answer in rated.iterrows():
        if split is not None and split_of(answer["query"]) != split:
            continue
        documents = {hit["chunk_id"]: hit["document_id"] for hit in answer["retrieved"] or []}
        relevant = [
            documents[chunk_id]
            for chunk_id, is_relevant in judged_chunks(answer).items()
            if is_relevant and chunk_id in documents
        ]
        if relevant:
            qid = query_id(answer["query"])
            queries[qid] = answer["query"]
            qrels.setdefault(qid, {}).update(dict.fromkeys(relevant, 1))
    return queries, qrels
