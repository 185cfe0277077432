"""Answer evaluation on question/reference-answer sets, with the retriever and the generator
that serve.

For each {"question", "answer"} (JSONL, like ARAGOG's qa-dev.jsonl) the question is searched
(top k), the prompt context is built exactly as the answer service builds it, and:

- **answer coverage**: the share of the reference answer's content words (see
  `content_words`) that occur in the retrieved text. The context *holds the answer* when
  the coverage is at least `threshold` (0.5 by default): for a short factual answer
  ("150 minutes") that means every word, for a sentence-long one half of its content words.
  It is measured twice: over the prompt context (the sources that fit
  `answer_context_chars`, what the generator actually sees) and over all top-k chunks.
- **reference-chunk cosine**: the best cosine between the reference answer and one of the
  top-k chunks (embedding model of the index); a softer signal that does not need the
  same words.
- **answer similarity** (only with a generator): the cosine between the embeddings of the
  generated and the reference answer, plus SQuAD-style token F1 between them.

No Dagster here: the evaluation assets and `qpbot eval qa` both call `evaluate_qa`.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from qpbot_serving.generation import GeneratorUnavailable, generate
from qpbot_serving.prompting import NO_ANSWER, build_messages, number_sources

DEFAULT_THRESHOLD = 0.5

# Function words that say nothing about whether a text holds an answer.
STOPWORDS = frozenset(
    """a about above after again all also am an and any are as at be because been before being
    below between both but by can could did do does doing down during each few for from further
    had has have having he her here hers him his how i if in into is it its itself just me more
    most my no nor not of off on once only or other our ours out over own same she should so
    some such than that the their theirs them then there these they this those through to too
    under until up use used uses using very was we were what when where which while who whom
    why will with would you your yours""".split()
)


def content_words(text: str) -> set[str]:
    """Lowercased word tokens of `text` without stopwords; a plural "s" is dropped from
    words longer than three letters, so "filters" matches "filter"."""
    words = set()
    for token in re.findall(r"\w+", text.lower()):
        if token in STOPWORDS:
            continue
        if len(token) > 3 and token.endswith("s") and not token.endswith("ss"):
            token = token[:-1]
        words.add(token)
    return words


def answer_coverage(reference: str, context: str) -> float:
    """Share of the reference's content words found in `context` (1.0 for a reference
    without content words: there is nothing to miss)."""
    wanted = content_words(reference)
    if not wanted:
        return 1.0
    return len(wanted & content_words(context)) / len(wanted)


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD-style F1 over lowercased word tokens (with repeats), stopwords kept."""
    predicted = re.findall(r"\w+", prediction.lower())
    expected = re.findall(r"\w+", reference.lower())
    if not predicted or not expected:
        return float(predicted == expected)
    common = sum((Counter(predicted) & Counter(expected)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(expected)
    return 2 * precision * recall / (precision + recall)


def read_qa_set(path: Path) -> list[dict]:
    """{"question", "answer"} per JSONL line (other fields are kept); blank lines skipped."""
    items = []
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            item = json.loads(line)
            if not str(item.get("question", "")).strip() or not str(item.get("answer", "")).strip():
                raise ValueError(f"{path}:{number}: needs a non-empty question and answer")
            items.append(item)
    return items


@dataclass(frozen=True)
class QuestionResult:
    question: str
    reference: str
    context_coverage: float  # over the prompt context
    retrieved_coverage: float  # over all top-k chunks
    context_holds_answer: bool
    retrieved_holds_answer: bool
    reference_chunk_cosine: float
    top_document_ids: list[str]
    generated: str | None = None
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
    max_new_tokens: int = 160,
    context_chars: int = 2500,
    threshold: float = DEFAULT_THRESHOLD,
) -> tuple[dict, list[QuestionResult]]:
    """Scores `items` ({"question", "answer"}) against `retriever` (a serving Retriever);
    with a `generator` (anything with `stream(messages, max_new_tokens)`) also the generated
    answers. Returns (summary, one result per question); see `summarize` for the summary."""
    embedder = retriever.embedder
    results = []
    for item in items:
        question, reference = item["question"], item["answer"]
        hits = retriever.search(question, k=k, mode=mode)
        sources = number_sources(hits, context_chars)
        context = "\n".join(source.text for source in sources)
        retrieved = "\n".join(hit.text for hit in hits)
        vectors = embedder.encode([reference, *[hit.text for hit in hits]])
        best_cosine = float(np.max(vectors[1:] @ vectors[0])) if hits else 0.0
        context_coverage = answer_coverage(reference, context)
        retrieved_coverage = answer_coverage(reference, retrieved)
        generated = similarity = f1 = error = seconds = None
        if generator is not None:
            started = time.perf_counter()
            try:
                # As the service does: no sources, the fixed reply and no model call.
                generated = (
                    generate(generator, build_messages(question, sources), max_new_tokens)
                    if sources
                    else NO_ANSWER
                )
            except GeneratorUnavailable as problem:
                error = str(problem)
            seconds = round(time.perf_counter() - started, 2)
            if generated is not None:
                pair = embedder.encode([generated or " ", reference])
                similarity = float(pair[0] @ pair[1])
                f1 = token_f1(generated, reference)
        results.append(
            QuestionResult(
                question=question,
                reference=reference,
                context_coverage=round(context_coverage, 4),
                retrieved_coverage=round(retrieved_coverage, 4),
                context_holds_answer=context_coverage >= threshold,
                retrieved_holds_answer=retrieved_coverage >= threshold,
                reference_chunk_cosine=round(best_cosine, 4),
                top_document_ids=list(dict.fromkeys(hit.document_id for hit in hits)),
                generated=generated,
                answer_similarity=None if similarity is None else round(similarity, 4),
                answer_token_f1=None if f1 is None else round(f1, 4),
                generation_error=error,
                generation_seconds=seconds,
            )
        )
    return summarize(results, k=k, mode=mode, threshold=threshold), results


def summarize(results: Sequence[QuestionResult], k: int, mode: str, threshold: float) -> dict:
    """Means over the questions: {"questions", "k", "mode", "threshold",
    "context_holds_answer", "retrieved_holds_answer", "answer_coverage",
    "reference_chunk_cosine", "generated", "generation_errors", "no_answer_replies",
    "answer_similarity", "answer_token_f1"}; the generation figures are None when nothing
    was generated."""

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
        "answer_similarity": mean([r.answer_similarity for r in answered]),
        "answer_token_f1": mean([r.answer_token_f1 for r in answered]),
    }


def result_rows(results: Sequence[QuestionResult]) -> list[dict]:
    """The per-question results as plain dicts (for JSON)."""
    return [asdict(result) for result in results]
