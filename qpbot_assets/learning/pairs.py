"""Training pairs for the embedder from what users judged.

A positive is a chunk judged relevant to a query (a source marked relevant, or the top
source of a thumbs-up answer that carries no judgments). A hard negative is a chunk judged
irrelevant, or one of the top sources of a thumbs-down answer: the retriever ranked it high
and the user said it did not help. Judgments of the same query (normalized) are pooled,
and a chunk judged relevant is never used as its negative.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import pandas as pd

from qpbot_assets.learning.golden import judged_chunks, normalize_query, query_id, split_of

NEGATIVES_FROM_THUMBS_DOWN = 3
PAIR_COLUMNS = [
    "query_id",
    "query",
    "split",
    "positive_chunk_id",
    "positive",
    "negative_chunk_id",
    "negative",
]


def build_training_pairs(
    rated: pd.DataFrame, chunk_texts: Callable[[list[str]], dict[str, str]]
) -> pd.DataFrame:
    """One row per (query, positive chunk) with a hard negative where one is known.

    `rated` is `feedback.rated_answers(...)`; `chunk_texts(ids)` returns the text of the
    chunks still in the index (a chunk whose document is gone is left out). Rows are
    sorted, so the same feedback always gives the same pairs.
    """
    positives: dict[str, set[str]] = {}
    negatives: dict[str, set[str]] = {}
    texts: dict[str, str] = {}
    for _, answer in rated.iterrows():
        key = normalize_query(answer["query"])
        texts.setdefault(key, answer["query"].strip())
        judged = judged_chunks(answer)
        positives.setdefault(key, set()).update(c for c, relevant in judged.items() if relevant)
        negatives.setdefault(key, set()).update(c for c, relevant in judged.items() if not relevant)
        if answer["rating"] == "down" and not answer.get("source_judgments"):
            top = [hit["chunk_id"] for hit in (answer["retrieved"] or [])]
            negatives[key].update(top[:NEGATIVES_FROM_THUMBS_DOWN])

    wanted = sorted({c for ids in [*positives.values(), *negatives.values()] for c in ids})
    chunk_text = chunk_texts(wanted)
    rows = []
    for key in sorted(positives):
        good = sorted(c for c in positives[key] if c in chunk_text)
        bad = sorted(c for c in negatives.get(key, set()) - positives[key] if c in chunk_text)
        query = texts[key]
        for number, positive in enumerate(good):
            negative = bad[number % len(bad)] if bad else None
            rows.append(
                {
                    "query_id": query_id(query),
                    "query": query,
                    "split": split_of(query),
                    "positive_chunk_id": positive,
                    "positive": chunk_text[positive],
                    "negative_chunk_id": negative,
                    "negative": chunk_text.get(negative) if negative else None,
                }
            )
    return pd.DataFrame(rows, columns=PAIR_COLUMNS)


def pairs_version(pairs: pd.DataFrame) -> str:
    """A content hash: the same pairs always have the same version."""
    digest = hashlib.sha256()
    for row in pairs[["query_id", "positive_chunk_id", "negative_chunk_id"]].itertuples(False):
        digest.update("\x1f".join(str(v) for v in row).encode() + b"\x1e")
    return digest.hexdigest()[:12]
