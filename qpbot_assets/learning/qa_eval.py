"""Answer evaluation on question/reference-answer sets, with the retriever and the answer
pipeline that serve (`qpbot_serving.answering`).

For each {"question", "answer"} (JSONL, like ARAGOG's qa-dev.jsonl) the question is searched,
the prompt's evidence is selected exactly as the answer service selects it, and:

- **answer coverage**: the share of the reference answer's content words (see
  `content_words`) that occur in the text. The context *holds the answer* when the coverage
  is at least `threshold` (0.5 by default): for a short factual answer ("150 minutes") that
  means every word, for a sentence-long one half of its content words. It is measured
  twice: over the prompt's evidence (what the generator actually sees; counted in the
  generator's tokens, or about four characters a token without one) and over the top-k
  chunks.
- **reference-chunk cosine**: the best cosine between the reference answer and one of the
  top-k chunks (embedding model of the index); a softer signal that does not need the
  same words.
- **answer similarity** (only with a generator): the cosine between the embeddings of the
  answer and the reference, SQuAD-style token F1, and whether the answer contains the
  reference (SQuAD-normalized), with the answer's mode and whether it was grounded.

No Dagster here: the evaluation assets and `qpbot eval qa` both call `evaluate_qa`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from qpbot_serving.answering import Answerer, AnswerPolicy
from qpbot_serving.prompting import NO_ANSWER
from qpbot_serving.text import contains_answer, content_words, token_f1

DEFAULT_THRESHOLD = 0.5


def answer_coverage(reference: str, context: str) -> float:
    """Share of the reference's content words found in `context` (1.0 for a reference
    without content words: there is nothing to miss)."""
    wanted = content_words(reference)
    if not wanted:
        return 1.0
    return len(wanted & content_words(context)) / len(wanted)


def read_qa_set(path: Path, allow_unanswerable: bool = False) -> list[dict]:
    """{"question", "answer"} per JSONL line (other fields are kept); blank lines skipped.
    With `allow_unanswerable`, a question whose answer is null or missing is kept as one the
    documents do not answer (its "answer" None)."""
    items = []
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            item = json.loads(line)
            if allow_unanswerable and item.get("answer") is None:
                item["answer"] = None
            elif not str(item.get("answer", "")).strip():
                raise ValueError(f"{path}:{number}: needs a non-empty answer")
            if not str(item.get("question", "")).strip():
                raise ValueError(f"{path}:{number}: needs a non-empty question")
            items.append(item)
    return items


def answer_is_right(answer: str, reference: str | None) -> bool:
    """How the answer benchmark (bench/bench_answers.py) counts an answer: a question with a
    reference is answered right when the answer contains it (SQuAD-normalized); one the
    documents do not answer (reference None) when the answer declines (NO_ANSWER)."""
    if reference is None:
        return answer == NO_ANSWER
    return contains_answer(answer, reference)


@dataclass(frozen=True)
class QuestionResult:
    question: str
    reference: str
    context_coverage: float  # over the prompt's evidence
    retrieved_coverage: float  # over all top-k chunks
    context_holds_answer: bool
    retrieved_holds_answer: bool
    reference_chunk_cosine: float
    top_document_ids: list[str]
    generated: str | None = None  # the answer the service would give
    answer_mode: str | None = None  # generative | extractive | declined
    grounded: bool | None = None
    contains_reference: bool | None = None
    answer_similarity: float | None = None
    answer_token_f1: float | None = None
    generation_error: str | None = None
    generation_seconds: float | None = None


def evaluate_qa(
    retriever,
    items: Sequence[dict],
    k: int = 5,
    mode: str = "hybrid",
    generator=None,
    policy: AnswerPolicy | None = None,
    threshold: float = DEFAULT_THRESHOLD,
) -> tuple[dict, list[QuestionResult]]:
    """Scores `items` ({"question", "answer"}) against `retriever` (a serving Retriever);
    with a `generator` also the answers the pipeline gives under `policy` (the service's
    defaults when None). Returns (summary, one result per question); see `summarize`."""
    policy = policy or AnswerPolicy()
    if generator is None:
        policy = replace(policy, mode="extractive")
    answerer = Answerer.for_retriever(retriever, generator, policy)
    embedder = retriever.embedder
    results = []
    for item in items:
        question, reference = item["question"], item["answer"]
        hits = retriever.search(question, k=max(k, policy.evidence_chunks), mode=mode)
        prepared = answerer.prepare(question, hits)
        context = "\n".join(unit.prompt_text for unit in prepared.evidence)
        retrieved = "\n".join(hit.text for hit in hits[:k])
        vectors = embedder.encode([reference, *[hit.text for hit in hits[:k]]])
        best_cosine = float(np.max(vectors[1:] @ vectors[0])) if hits else 0.0
        context_coverage = answer_coverage(reference, context)
        retrieved_coverage = answer_coverage(reference, retrieved)
        answered: dict = {}
        if generator is not None:
            started = time.perf_counter()
            finished = answerer.complete(prepared)
            pair = embedder.encode([finished.text or " ", reference])
            answered = {
                "generated": finished.text,
                "answer_mode": finished.mode,
                "grounded": finished.grounded,
                "contains_reference": contains_answer(finished.text, reference),
                "answer_similarity": round(float(pair[0] @ pair[1]), 4),
                "answer_token_f1": round(token_f1(finished.text, reference), 4),
                "generation_error": finished.error,
                "generation_seconds": round(time.perf_counter() - started, 2),
            }
        results.append(
            QuestionResult(
                question=question,
                reference=reference,
                context_coverage=round(context_coverage, 4),
                retrieved_coverage=round(retrieved_coverage, 4),
                context_holds_answer=context_coverage >= threshold,
                retrieved_holds_answer=retrieved_coverage >= threshold,
                reference_chunk_cosine=round(best_cosine, 4),
                top_document_ids=list(dict.fromkeys(hit.document_id for hit in hits[:k])),
                **answered,
            )
        )
    return summarize(results, k=k, mode=mode, threshold=threshold), results


def summarize(results: Sequence[QuestionResult], k: int, mode: str, threshold: float) -> dict:
    """Means over the questions: {"questions", "k", "mode", "threshold",
    "context_holds_answer", "retrieved_holds_answer", "answer_coverage",
    "reference_chunk_cosine", "generated", "generation_errors", "no_answer_replies",
    "grounded", "contains_reference", "answer_similarity", "answer_token_f1"}; the
    generation figures are None when nothing was generated."""

    def mean(values: list[float]) -> float | None:
        return round(float(np.mean(values)), 4) if values else None

    answered = [r for r in results if r.generated is not None]
    return {
        "questions": len(results),
        "k": k,
        "mode": mode,
        "threshold": threshold,
        "context_holds_answer": mean([float(r.context_holds_answer) for r in results]),
        "retrieved_holds_answer": mean([float(r.retrieved_holds_answer) for r in results]),
        "answer_coverage": mean([r.context_coverage for r in results]),
        "reference_chunk_cosine": mean([r.reference_chunk_cosine for r in results]),
        "generated": len(answered),
        "generation_errors": sum(r.generation_error is not None for r in results),
        "no_answer_replies": sum(r.generated == NO_ANSWER for r in answered),
        "grounded": mean([float(r.grounded) for r in answered]),
        "contains_reference": mean([float(r.contains_reference) for r in answered]),
        "answer_similarity": mean([r.answer_similarity for r in answered]),
        "answer_token_f1": mean([r.answer_token_f1 for r in answered]),
    }


def result_rows(results: Sequence[QuestionResult]) -> list[dict]:
    """The per-question results as plain dicts (for JSON)."""
    return [asdict(result) for result in results]
