"""One answer, from retrieved chunks to checked text, the same for the HTTP service, the
evaluation assets and the benchmark:

retrieved chunks -> evidence units scored for the question -> (below the calibrated score:
the documents do not answer) -> prompt within a token budget -> guarded generation under one
deadline -> citation check -> the checked answer, or the quoted evidence when the answer
fails the check, the generator is away or the deadline passes (QPBOT_ANSWER_MODE=auto).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from qpbot_serving.evidence import EvidenceSelection, EvidenceUnit, select_evidence
from qpbot_serving.generation import (
    AnswerGuard,
    DeadlinePassed,
    Generator,
    GeneratorUnavailable,
    Messages,
    guarded,
)
from qpbot_serving.grounding import check_answer, extractive_answer, highlights
from qpbot_serving.prompting import NO_ANSWER, build_messages
from qpbot_serving.settings import QpbotSettings
from qpbot_serving.text import content_words

ANSWER_MODES = ("auto", "extractive", "generative")
# Why auto mode did not keep the generated answer (the `reason` label of the fallback metric).
FALLBACK_KINDS = ("deadline", "generator_unavailable", "declined", "ungrounded", "weak_evidence")


@dataclass(frozen=True)
class AnswerPolicy:
    """How answers are made (QpbotSettings' answer_* fields)."""

    mode: str = "extractive"
    evidence_chunks: int = 20
    context_tokens: int = 300
    min_evidence_score: float = 0.35
    min_quote_score: float = 0.45
    max_new_tokens: int = 64
    deadline_s: float = 8.0
    stop_strings: tuple[str, ...] = ()

    @classmethod
    def from_settings(cls, settings: QpbotSettings) -> AnswerPolicy:
        return cls(
            mode=settings.answer_mode,
            evidence_chunks=settings.answer_evidence_chunks,
            context_tokens=settings.answer_context_tokens,
            min_evidence_score=settings.answer_min_evidence_score,
            min_quote_score=settings.answer_min_quote_score,
            max_new_tokens=settings.answer_max_new_tokens,
            deadline_s=settings.answer_deadline_s,
            stop_strings=tuple(settings.answer_stop_strings),
        )


@dataclass
class PreparedAnswer:
    """What is known before generating: the evidence, the prompt, and whether to decline."""

    question: str
    selection: EvidenceSelection
    messages: Messages
    declined: bool  # no evidence scores above the threshold: no model call
    started: float  # time.monotonic() when the answer began (for the deadline)
    deadline: float

    @property
    def evidence(self) -> list[EvidenceUnit]:
        return self.selection.units


@dataclass
class FinishedAnswer:
    text: str
    mode: str  # what made the text: "generative" | "extractive" | "declined"
    grounded: bool  # every sentence rests on quoted evidence
    evidence: list[EvidenceUnit]  # the prompt's units
    cited: list[int]  # indexes into `evidence` of the units the answer rests on
    generated: str | None = None  # the generator's own text, before the check
    fallback: str | None = None  # why the generated text was not used
    fallback_kind: str | None = None  # the same as a metric label (FALLBACK_KINDS)
    error: str | None = None  # the generator's failure, if any
    stop_reason: str | None = None  # why generation ended early (repetition, stop string)
    dropped: list[str] = field(default_factory=list)  # unsupported sentences removed
    question_words: frozenset[str] = frozenset()  # not highlighted: the user wrote them

    def evidence_rows(self) -> list[dict]:
        """The evidence for clients and the answer log: each unit with its citation number,
        offsets, quote, whether the answer rests on it, and the answer's words in it."""
        rows = []
        for i, unit in enumerate(self.evidence):
            quote = unit.prompt_text
            cited = i in self.cited
            rows.append(
                {
                    "number": unit.number,
                    "chunk_id": unit.chunk_id,
                    "document_id": unit.document_id,
                    "title": unit.title,
                    "format": unit.format,
                    "section": unit.section,
                    "page": unit.page,
                    "kind": unit.kind,
                    "start": unit.start,
                    "end": unit.end,
                    "text": unit.text,
                    "header": unit.header,
                    "position": unit.position,
                    "quote": quote,
                    "score": unit.score,
                    "cited": cited,
                    "highlights": highlights(quote, self.text, self.question_words)
                    if cited
                    else [],
                }
            )
        return rows


class Answerer:
    """Makes answers with one generator and policy; `embed` (texts -> unit vectors) and
    `embed_query` are the index's embedder, so units are scored in the index's own terms."""

    def __init__(
        self,
        generator: Generator | None,
        policy: AnswerPolicy,
        embed: Callable[[list[str]], np.ndarray] | None = None,
        embed_query: Callable[[str], np.ndarray] | None = None,
    ):
        if policy.mode not in ANSWER_MODES:
            raise ValueError(f"answer mode must be one of {', '.join(ANSWER_MODES)}")
        self.generator = generator
        self.policy = policy
        self.embed = embed
        self.embed_query = embed_query

    @classmethod
    def for_retriever(cls, retriever, generator: Generator | None, policy: AnswerPolicy):
        return cls(generator, policy, retriever.embedder.encode, retriever.query_encoder)

    @property
    def generates(self) -> bool:
        return self.policy.mode != "extractive" and self.generator is not None

    def count_tokens(self, text: str) -> int:
        if self.generates:
            return self.generator.count_tokens(text)
        return max(1, len(text) // 4)  # extractive: no prompt, any counter will do

    def prepare(self, question: str, hits: Sequence, started: float | None = None):
        """Selects the evidence from the top `evidence_chunks` hits and builds the prompt."""
        started = time.monotonic() if started is None else started
        query_vector = self.embed_query(question) if self.embed_query else None
        selection = select_evidence(
            question,
            list(hits)[: self.policy.evidence_chunks],
            self.count_tokens,
            self.policy.context_tokens,
            embed=self.embed,
            query_vector=query_vector,
        )
        declined = (
            not selection.units
            or selection.best_score < self.policy.min_evidence_score
            or not selection.answer_type_found
        )
        return PreparedAnswer(
            question=question,
            selection=selection,
            messages=build_messages(question, selection.units),
            declined=declined,
            started=started,
            deadline=started + self.policy.deadline_s,
        )

    def needs_generation(self, prepared: PreparedAnswer) -> bool:
        return self.generates and not prepared.declined

    def stream(self, prepared: PreparedAnswer) -> tuple[Iterator[str], AnswerGuard]:
        """The generated pieces (guarded: stop strings, loops, the deadline) and the guard,
        whose `text` is the answer so far. Closing the iterator stops generation."""
        guard = AnswerGuard(self.policy.stop_strings)
        pieces = self.generator.stream(
            prepared.messages, self.policy.max_new_tokens, deadline=prepared.deadline
        )
        return guarded(pieces, guard), guard

    def finish(
        self,
        prepared: PreparedAnswer,
        generated: str | None = None,
        error: Exception | None = None,
        stop_reason: str | None = None,
    ) -> FinishedAnswer:
        """The answer from what the generator gave (or failed with): checked, or replaced by
        the quoted evidence as the mode says."""
        evidence = prepared.evidence
        asked = frozenset(content_words(prepared.question))
        if prepared.declined:
            return FinishedAnswer(NO_ANSWER, "declined", False, evidence, [], question_words=asked)
        if not self.generates:
            return self._extractive(prepared, asked)
        error_text = kind = None
        if isinstance(error, DeadlinePassed):
            error_text, kind = f"the answer's deadline passed: {error}", "deadline"
        elif error is not None:
            error_text = f"the answer generator is unavailable: {error}"
            kind = "generator_unavailable"
        checked = check_answer(generated or "", prepared.question, evidence)
        if self.policy.mode == "auto" and (error is not None or not checked.grounded):
            if kind is None:
                kind = "declined" if checked.declined else "ungrounded"
            reason = (
                error_text
                or {
                    "declined": "the generator declined",
                    "ungrounded": "no generated sentence rests on the evidence",
                }[kind]
            )
            if prepared.selection.best_score < self.policy.min_quote_score:
                # No generated answer stands on evidence that is only moderately relevant:
                # most likely the documents do not hold one, so quoting it would mislead.
                answer = FinishedAnswer(NO_ANSWER, "declined", False, evidence, [])
                reason = f"{reason}, and the evidence is too weak to quote"
                kind = "weak_evidence"
            else:
                answer = self._extractive(prepared, asked)
            answer.generated, answer.fallback, answer.fallback_kind = generated, reason, kind
            answer.error, answer.stop_reason, answer.dropped = (
                error_text,
                stop_reason,
                checked.dropped,
            )
            answer.question_words = asked
            return answer
        # generative: what stands of the draft, or the no-answer reply when nothing does.
        text = checked.text if checked.grounded else NO_ANSWER
        return FinishedAnswer(
            text=text,
            mode="generative",
            grounded=checked.grounded,
            evidence=evidence,
            cited=checked.evidence,
            generated=generated,
            error=error_text,
            stop_reason=stop_reason,
            dropped=checked.dropped,
            question_words=asked,
        )

    def answer(self, question: str, hits: Sequence, started: float | None = None):
        """prepare, generate and finish in one call (the evaluation and the benchmark)."""
        prepared = self.prepare(question, hits, started)
        return self.complete(prepared)

    def complete(self, prepared: PreparedAnswer) -> FinishedAnswer:
        if not self.needs_generation(prepared):
            return self.finish(prepared)
        pieces, guard = self.stream(prepared)
        try:
            for _ in pieces:
                pass
        except GeneratorUnavailable as problem:
            return self.finish(prepared, guard.text.strip(), problem, guard.stop_reason)
        return self.finish(prepared, guard.text.strip(), None, guard.stop_reason)

    def _extractive(self, prepared: PreparedAnswer, asked: frozenset[str]) -> FinishedAnswer:
        text, quoted = extractive_answer(prepared.evidence, prepared.question)
        cited = [i for i, unit in enumerate(prepared.evidence) if unit in quoted]
        return FinishedAnswer(
            text, "extractive", bool(quoted), prepared.evidence, cited, question_words=asked
        )
